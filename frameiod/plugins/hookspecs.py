"""Every hook a frameiod plugin can implement, grouped by when it runs.

A plugin implements hooks with ``@frameiod.hookimpl``, as ``def`` or ``async def``; the
host awaits whatever is awaitable. Every hook is called through pluggy, so
``@hookimpl(tryfirst=True)``, ``trylast=True`` and ``wrapper=True`` mean what pluggy
documents. Each plugin's implementation is called through its own subset of the hook
(pluggy's ``subset_hook_caller``: that plugin's implementation inside every wrapper), so
one plugin's failure is logged against that plugin only. A wrapper therefore wraps each
plugin's call on its own, and around an ``async def`` implementation it sees the
coroutine the call returned (the host awaits it afterwards).

The three hooks "around" a call (``frameiod_call_handler``, ``frameiod_call_action``,
``frameiod_receive``) are the exception: they are called once for all plugins, wrappers
nested as pluggy nests them (the last registered outermost, ``tryfirst`` outside), and
what they return is an awaitable: a wrapper's ``call = yield`` gets the awaitable of
everything inside it, not yet started, and returns an awaitable in its place, usually its
own coroutine awaiting ``call``. That coroutine sees the result, or the exception::

    @hookimpl(wrapper=True)
    def frameiod_call_handler(event, handler, attempt):
        call = yield

        async def timed():
            started = time.perf_counter()
            try:
                return await call
            finally:
                print(handler.name, attempt, time.perf_counter() - started)

        return timed()

When no plugin wraps them, frameiod calls the handler (or route) directly: they cost
nothing unless used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from aiohttp import web
    from pydantic import BaseModel

    from frameiod.events import ActionEvent, WebhookEvent
    from frameiod.plugins.handlers import (
        ActionHandler,
        Outcome,
        PluginContext,
        Reception,
        WebhookHandler,
    )

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "frameiod"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- Start-up: what the plugin offers ------------------------------------------------


@hookspec
def frameiod_plugin_config_model() -> type[BaseModel] | None:
    """Return the pydantic model that validates this plugin's ``[plugins.<name>]`` table.

    Called once at start-up (and by ``frameiod check``), before ``frameiod_startup``.
    Return ``None`` (or do not implement the hook) when the plugin takes no config; a
    ``[plugins.<name>]`` table for such a plugin is then a config error. Validation errors
    are reported like core config errors, with the key path (``plugins.<name>.<key>``).
    """


@hookspec
def frameiod_webhook_handlers() -> Sequence[WebhookHandler]:
    """Return the webhook handlers this plugin offers.

    Called once at start-up. Each `WebhookHandler` names its event types (exact names,
    ``"file.*"`` groups or ``"*"``), its source, optional secrets, and options such as
    ``timeout``. An `frameiod.App` implements this hook from its ``@app.on_webhook``
    registrations. Return an empty sequence to offer none.
    """


@hookspec
def frameiod_action_handlers() -> Sequence[ActionHandler]:
    """Return the custom-action handlers this plugin offers.

    Called once at start-up. Each `ActionHandler` names the action's event key (the
    ``type`` Frame.io sends, e.g. ``"acme.transcode"``), its source, and the resource
    types it accepts. One handler per event key and source across all plugins: a second
    one stops start-up with an error naming both plugins. An `frameiod.App` implements this
    hook from its ``@app.on_action`` registrations. Return an empty sequence to offer none.
    """


# --- Lifecycle -------------------------------------------------------------------------


@hookspec
def frameiod_startup(context: PluginContext) -> None:
    """Prepare the plugin before the daemon accepts requests; may be ``async``.

    ``context`` carries the whole config, this plugin's validated config (or ``None``),
    a structlog logger bound with ``plugin=<name>``, and the Frame.io API client when one
    is configured. Called in registration order. If it raises, the plugin is reported as
    failed, its handlers are dropped, and the daemon starts with the other plugins.
    The return value is ignored.
    """


@hookspec
def frameiod_shutdown(context: PluginContext) -> None:
    """Release what ``frameiod_startup`` acquired; may be ``async``.

    Called once while the daemon stops, after the last handler call has finished, in
    reverse registration order, and only for plugins whose start-up succeeded. An
    exception is logged and does not stop the other plugins' shutdown. The return value
    is ignored.
    """


# --- Observers -------------------------------------------------------------------------


@hookspec
def frameiod_event_accepted(event: WebhookEvent, source: str) -> None:
    """Observe a newly accepted event; may be ``async``.

    ``event`` is the validated `WebhookEvent` (``event.event_id`` is frameiod's id) and
    ``source`` the configured source it arrived on. Called once per event, right after it
    was committed to the spool (not for duplicates), even when no handler wants it; it
    runs beside the request and the handlers, so it neither delays the 202 nor orders
    itself before them. Best effort: an event accepted just before a crash may never be
    observed. Exceptions are logged, never passed on. The return value is ignored.
    """


@hookspec
def frameiod_delivery_finished(
    event: WebhookEvent, handler: WebhookHandler, outcome: Outcome
) -> None:
    """Observe how one handler call for one event ended; may be ``async``.

    ``outcome.status`` is ``"ok"``, ``"error"`` or ``"timeout"`` (a retry follows), or
    ``"dead"`` when that was the last attempt (alert on it); ``outcome.error`` holds the
    exception text and ``outcome.seconds`` the duration. Called once per handler call,
    after its outcome was recorded in the spool. For alerting and audit; exceptions are
    logged, never passed on. The return value is ignored.
    """


# --- Around each call: wrappers (tracing, middleware) ---------------------------------


@hookspec(firstresult=True)
def frameiod_call_handler(
    event: WebhookEvent, handler: WebhookHandler, attempt: int, trace_context: str | None
) -> Awaitable[object]:
    """Call one webhook handler for one event: return an awaitable of its result.

    Called by the dispatcher for each delivery once its attempt is on record: ``event``
    is the parsed `WebhookEvent`, ``handler`` the `WebhookHandler` (``handler.name``,
    ``handler.plugin``), ``attempt`` counts from 1 (a retry is 2, 3, ...), and
    ``trace_context`` is the W3C ``traceparent`` stored with the event when it was
    received under a tracing plugin (else None). frameiod's own implementation runs last
    (``trylast``): it returns the handler's call, ``async def`` handlers on the loop and
    plain ones in a thread, not started until awaited. A plain implementation that returns
    an awaitable replaces it; wrap it instead, with ``@hookimpl(wrapper=True)`` (see the
    module's docstring): the wrapper's coroutine gets the handler's result, or its
    exception; a handler past its timeout raises `HandlerTimeout` there. The timeout counts
    from the start of the outermost wrapper's coroutine and cuts it off too. An exception
    raised by a wrapper itself fails the delivery like the handler's own (it is retried);
    the log line ``handler wrapper failed`` names that plugin.
    """


@hookspec(firstresult=True)
def frameiod_call_action(event: ActionEvent, handler: ActionHandler) -> Awaitable[object]:
    """Call one custom-action handler: return an awaitable of its `Message`, `Form` or None.

    Called by ``POST /actions/{source}`` once the request is verified and the action's
    handler found: ``event`` is the `ActionEvent`, ``handler`` the `ActionHandler`. As for
    ``frameiod_call_handler``, frameiod's implementation runs last and wrappers wrap it;
    what the outermost awaitable gives is the answer. The action's deadline applies to the
    whole: past it, Frame.io is answered that the work goes on while the call (wrappers
    included) finishes in the background. An exception raised by a wrapper is answered
    like a failed handler (a `Message` with a reference), and the log names its plugin.
    """


@hookspec(firstresult=True)
def frameiod_receive(reception: Reception) -> Awaitable[web.StreamResponse]:
    """Answer one ``POST /webhooks/{source}`` or ``POST /actions/{source}``: return an
    awaitable of the response.

    Called for every such request, before anything is read, only when some plugin wraps
    it. ``reception.request`` is the aiohttp request (read its headers, never its body),
    ``reception.kind`` ``"webhook"`` or ``"action"``, ``reception.source`` the source's
    name from the path. frameiod's implementation runs the route; by the time its
    awaitable is done, ``reception.payload`` holds the verified body as plain data (None
    if refused before), ``reception.event_id`` a webhook's id in the spool and
    ``reception.duplicate`` whether it was a duplicate. A wrapper may set
    ``reception.trace_context`` (a W3C ``traceparent``) before awaiting the route: a
    webhook's is stored with the event and handed to ``frameiod_call_handler``. The
    awaitable gives the response (its ``status`` is the answer's). A wrapper must not
    delay the answer: Frame.io waits 5 seconds. An exception in a wrapper is answered 500
    by aiohttp and logged with its plugin's name.
    """


def all_hook_names() -> list[str]:
    """Names of every hookspec above, for tests that check each is documented and used."""
    return [
        name
        for name, value in globals().items()
        if name.startswith("frameiod_") and callable(value)
    ]
