"""What listens: the webhook and action routes, socket limits, rate limits."""
