"""Due deliveries to handler calls to recorded outcomes."""
