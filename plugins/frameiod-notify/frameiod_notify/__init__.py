"""frameiod-notify: tell a team about Frame.io comments through a Slack-compatible webhook.

    [plugins.notify]
    webhook_url = "env:SLACK_WEBHOOK_URL"
    template = "{event_type} on {resource_type} {resource_id} by user {user_id}"

Each ``comment.created`` or ``comment.updated`` event becomes one POST of
``{"text": <rendered template>}`` to ``webhook_url``. A post that is not answered with a
2xx raises `NotifyError`, so frameiod records the handler call as an error. The URL is a
secret: no error, log line or ``repr`` this plugin produces contains it.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import string
import time
from collections.abc import Callable, Iterator
from typing import Annotated
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

from frameiod import App, PluginContext, WebhookEvent
from frameiod.config import Duration, Secret, SecretRef, format_duration

__all__ = [
    "DEFAULT_TEMPLATE",
    "EVENT_TYPES",
    "MISSING",
    "PLACEHOLDERS",
    "NotifyConfig",
    "NotifyError",
    "app",
    "render",
    "template_problem",
]

EVENT_TYPES = ("comment.created", "comment.updated")
DEFAULT_TEMPLATE = (
    "{event_type} on {resource_type} {resource_id} by user {user_id} in project {project_id}"
)
MISSING = "unknown"
"""What a placeholder reads when the event does not carry that id."""

# The one list of placeholders: validation and rendering both read it.
_VALUES: dict[str, Callable[[WebhookEvent], str | None]] = {
    "event_type": lambda event: event.type,
    "event_id": lambda event: event.event_id,
    "resource_id": lambda event: event.resource_id,
    "resource_type": lambda event: event.resource.type,
    "account_id": lambda event: event.account_id,
    "workspace_id": lambda event: event.workspace_id,
    "project_id": lambda event: event.project_id,
    "user_id": lambda event: event.user_id,
}
PLACEHOLDERS = tuple(_VALUES)

# Enough of an error body to show Slack's reason ("invalid_payload", "no_service").
_BODY_CHARS = 200


class NotifyError(RuntimeError):
    """The webhook did not take the message: a non-2xx answer, no answer, or no connection."""


# --- Configuration ---------------------------------------------------------------------


def _fields(template: str) -> Iterator[str]:
    for _text, name, spec, _conversion in string.Formatter().parse(template):
        if name is not None:
            yield name
            if spec:  # "{user_id:{width}}" nests a placeholder in the format spec
                yield from _fields(spec)


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot render every event, or None if it can."""
    if not template.strip():
        return "the template is empty"
    try:
        names = list(_fields(template))
    except ValueError as exc:
        return f"not a valid template ({exc}); write {{{{ or }}}} for a literal brace"
    for name in names:
        if name not in _VALUES:
            hint = difflib.get_close_matches(name, PLACEHOLDERS, n=1)
            if hint:
                return f"unknown placeholder {{{name}}} (did you mean {{{hint[0]}}}?)"
            known = ", ".join(f"{{{known}}}" for known in PLACEHOLDERS)
            return f"unknown placeholder {{{name}}}; the placeholders are {known}"
    try:  # the names are right; a format spec such as {user_id:d} can still fail
        template.format_map(dict.fromkeys(PLACEHOLDERS, MISSING))
    except (ValueError, TypeError) as exc:
        return f"not a valid template ({exc})"
    return None


def _valid_template(template: str) -> str:
    problem = template_problem(template)
    if problem:
        raise PydanticCustomError("template", "{problem}", {"problem": problem})
    return template


def _http_url(url: Secret) -> Secret:
    try:
        parts = urlsplit(url.reveal())
        # `.port` raises ValueError for a port out of range.
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        valid = False
    if not valid:
        # Error type "secret": frameiod then reports the message alone, never the value.
        raise PydanticCustomError(
            "secret",
            "expected an http:// or https:// URL{origin}; the value is a secret and not shown",
            {"origin": "" if url.reference == "<literal>" else f" in {json.dumps(url.reference)}"},
        )
    return url


class NotifyConfig(BaseModel):
    """``[plugins.notify]``: where to post, what to say, and how long to wait."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        arbitrary_types_allowed=True,
        # pydantic would otherwise print a literal webhook_url in str(ValidationError).
        hide_input_in_errors=True,
    )

    webhook_url: Annotated[SecretRef, AfterValidator(_http_url)]
    template: Annotated[str, AfterValidator(_valid_template)] = DEFAULT_TEMPLATE
    timeout: Duration = 10.0


# --- The plugin --------------------------------------------------------------------------


def render(template: str, event: WebhookEvent) -> str:
    """The message for ``event``: ``template`` with its placeholders filled in; an id the
    event does not carry reads `MISSING`."""
    return template.format_map({name: get(event) or MISSING for name, get in _VALUES.items()})


app = App(config_model=NotifyConfig)


class _State:
    client: httpx.AsyncClient | None = None


_state = _State()


@app.on_startup
async def open_client(context: PluginContext) -> None:
    """Open the one HTTP connection pool that every notification shares."""
    config: NotifyConfig = app.config
    # httpx applies `timeout` to each phase (connect, write, read); `_post` also bounds
    # the whole post by it.
    _state.client = httpx.AsyncClient(timeout=config.timeout)


@app.on_shutdown
async def close_client(context: PluginContext) -> None:
    """Close the connection pool once the last event has been handled."""
    client, _state.client = _state.client, None
    if client is not None:
        await client.aclose()


@app.on_webhook(list(EVENT_TYPES))
async def notify_team(event: WebhookEvent) -> None:
    """Post the rendered template for a comment event; raise `NotifyError` if it is refused."""
    config: NotifyConfig = app.config
    if _state.client is None:
        raise NotifyError("the notify plugin is not started")
    started = time.perf_counter()
    status = await _post(_state.client, config, render(config.template, event))
    app.log.info(
        "notification sent",
        event_id=event.event_id,
        event_type=event.type,
        resource_id=event.resource_id,
        status=status,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
    )


def _redact(text: str, url: Secret) -> str:
    value = url.reveal()
    parts = urlsplit(value)
    for secret in (value, parts.path, parts.query):
        if len(secret) > 1:
            text = text.replace(secret, "<webhook_url>")
    return text


async def _post(client: httpx.AsyncClient, config: NotifyConfig, text: str) -> int:
    # The URL is revealed inline and never bound to a name, so a traceback renderer that
    # shows local variables cannot print it; `from None` drops httpx's own exceptions,
    # whose messages and frames may carry it.
    url = config.webhook_url
    try:
        async with asyncio.timeout(config.timeout):
            response = await client.post(url.reveal(), json={"text": text})
    except (TimeoutError, httpx.TimeoutException):
        raise NotifyError(
            f"the webhook did not answer within {format_duration(config.timeout)}"
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        detail = _redact(str(exc), url) or "no detail"
        raise NotifyError(
            f"the webhook could not be reached: {type(exc).__name__}: {detail}"
        ) from None
    if not response.is_success:
        # Redacted before it is cut short, so no partial URL survives the cut.
        body = _redact(" ".join(response.text.split()), url)[:_BODY_CHARS]
        raise NotifyError(
            f"the webhook answered {response.status_code} {response.reason_phrase}"
            + (f": {body}" if body else "")
        )
    return response.status_code
