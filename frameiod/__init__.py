"""frameiod: receive, verify and dispatch Frame.io webhooks and custom actions.

What a plugin author imports::

    from frameiod import App, WebhookEvent
"""

# Set before the imports below: modules they load read it.
__version__ = "0.2.0"

from frameiod.events import ActionEvent, WebhookEvent
from frameiod.plugins.app import App, NoClientError
from frameiod.plugins.handlers import (
    ActionHandler,
    HandlerAborted,
    HandlerTimeout,
    Outcome,
    PluginContext,
    Reception,
    WebhookHandler,
)
from frameiod.plugins.hookspecs import hookimpl
from frameiod.plugins.middleware import Middleware
from frameiod.responses import (
    CheckboxField,
    Form,
    LinkField,
    Message,
    SelectField,
    SelectOption,
    TextareaField,
    TextField,
)

__all__ = [
    "ActionEvent",
    "ActionHandler",
    "App",
    "CheckboxField",
    "Form",
    "HandlerAborted",
    "HandlerTimeout",
    "LinkField",
    "Message",
    "Middleware",
    "NoClientError",
    "Outcome",
    "PluginContext",
    "Reception",
    "SelectField",
    "SelectOption",
    "TextField",
    "TextareaField",
    "WebhookEvent",
    "WebhookHandler",
    "__version__",
    "hookimpl",
]
