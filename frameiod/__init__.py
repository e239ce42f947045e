"""frameiod: receive, verify and dispatch Frame.io webhooks and custom actions."""

from frameiod.events import ActionEvent, WebhookEvent

__version__ = "0.1.0"

__all__ = ["ActionEvent", "WebhookEvent", "__version__"]
