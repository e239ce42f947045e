"""Running a custom-action handler and turning what it did into Frame.io's answer.

Custom actions are synchronous: the handler's `Message` or `Form` is the HTTP answer, and
Frame.io waits at most 5 seconds. A handler still running at the deadline keeps running
in the background while the user is told the work goes on; one that fails is answered
with a `Message` that carries an id the operator can find in the logs, never a bare 500.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from frameiod.events import ActionEvent
from frameiod.logs import get_logger
from frameiod.plugins.around import Around
from frameiod.plugins.handlers import ActionHandler
from frameiod.plugins.runner import call_handler
from frameiod.responses import Form, Message

__all__ = ["ActionAnswer", "ActionRunner"]

log = get_logger("frameiod.actions")


@dataclass(frozen=True)
class ActionAnswer:
    """What to send back: ``body`` is the JSON text (None for an empty 200); ``outcome`` is
    the metric's word."""

    body: str | None
    outcome: str


def _wire(answer: Message | Form) -> str:
    """``answer`` as Frame.io's JSON; `TypeError` or `ValueError` for a field value JSON
    cannot hold (a UUID, a date): encoded here, where a failure is still the handler's."""
    return json.dumps(answer.to_wire())


def _log_fields(handler: ActionHandler, event: ActionEvent, request_id: str) -> dict[str, Any]:
    """What every log line about one action request carries."""
    return {
        "request_id": request_id,
        "action": handler.action,
        "plugin": handler.plugin,
        "interaction_id": event.interaction_id,
    }


async def _repeat(
    earlier: asyncio.Future[ActionAnswer | None],
    fields: dict[str, Any],
    *,
    deadline: float,
    late_message: str,
    failed: ActionAnswer,
) -> ActionAnswer:
    try:
        answer = await asyncio.wait_for(asyncio.shield(earlier), deadline)
    except TimeoutError:
        log.info("action request repeated; the first is still being answered", **fields)
        return ActionAnswer(_wire(Message("Working on it", late_message)), "duplicate")
    if answer is None:
        log.warning("action request repeated; the first was cut off before its answer", **fields)
        return ActionAnswer(failed.body, "duplicate")
    log.info("action request repeated; answered as the first", **fields)
    return ActionAnswer(answer.body, "duplicate")


def _failed(handler: ActionHandler, request_id: str) -> ActionAnswer:
    message = Message(
        "Something went wrong", f"{handler.name} failed. Reference for the operator: {request_id}"
    )
    return ActionAnswer(_wire(message), "error")


class ActionRunner:
    """Calls action handlers under a deadline and keeps the late ones alive."""

    def __init__(self, around: Around | None = None) -> None:
        self._late: set[asyncio.Task[Any]] = set()
        self._around = around
        """Set when a plugin wraps ``frameiod_call_action``: calls then go through it."""

    async def run(
        self,
        handler: ActionHandler,
        event: ActionEvent,
        *,
        request_id: str,
        deadline: float,
        late_message: str,
        earlier: asyncio.Future[ActionAnswer | None] | None = None,
    ) -> ActionAnswer:
        """Call ``handler`` with ``event``; answer within ``deadline`` seconds, whatever it
        does. A repeat of a request answered (or being answered) ``earlier`` gets that
        answer, or the late message if it is not made within ``deadline``, and runs
        nothing (`frameiod.http.action_repeats`)."""
        fields = _log_fields(handler, event, request_id)
        if earlier is not None:
            return await _repeat(
                earlier,
                fields,
                deadline=deadline,
                late_message=late_message,
                failed=_failed(handler, request_id),
            )
        supported = handler.resource_types
        # A form submission may come without the resource (Frame.io's own example has only
        # type, ids and data): only a resource that is there can be refused.
        kind = event.resource.type if event.resource else None
        if supported and event.resource is not None and kind not in supported:
            log.info("action refused for this resource", **fields, resource_type=kind)
            return ActionAnswer(
                _wire(
                    Message(
                        "Not available here", f"{handler.name} works on: {', '.join(supported)}."
                    )
                ),
                "unsupported_resource",
            )
        started = time.perf_counter()
        if self._around is None:
            task = asyncio.ensure_future(call_handler(handler.func, event))
        else:
            task = asyncio.ensure_future(self._around.call_action(event, handler))
        try:
            # shield: at the deadline the handler keeps running; only our wait ends.
            result = await asyncio.wait_for(asyncio.shield(task), deadline)
        except TimeoutError:
            self._late.add(task)
            task.add_done_callback(lambda done: self._finish_late(done, fields, started))
            log.warning("action answered late; the handler goes on", **fields, deadline_s=deadline)
            return ActionAnswer(_wire(Message("Working on it", late_message)), "late")
        except Exception as exc:
            log.error(
                "action handler failed",
                **fields,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
            return _failed(handler, request_id)
        return self._answer(result, fields, handler, request_id)

    def _answer(
        self, result: object, fields: dict[str, Any], handler: ActionHandler, request_id: str
    ) -> ActionAnswer:
        if result is None:
            log.info("action handled", **fields, answer="none")
            return ActionAnswer(None, "ok")
        if isinstance(result, Message | Form):
            try:
                body = _wire(result)
            except (TypeError, ValueError) as exc:
                log.error(
                    "action handler returned an answer that is not JSON",
                    **fields,
                    error=f"{type(exc).__name__}: {exc}",
                )
                return _failed(handler, request_id)
            log.info("action handled", **fields, answer=type(result).__name__.lower())
            return ActionAnswer(body, "ok")
        log.error(
            "action handler returned neither a Message, a Form nor None",
            **fields,
            returned=type(result).__name__,
        )
        return _failed(handler, request_id)

    def _finish_late(self, task: asyncio.Task[Any], fields: dict[str, Any], started: float) -> None:
        self._late.discard(task)
        seconds = round(time.perf_counter() - started, 3)
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error(
                "late action handler failed",
                **fields,
                seconds=seconds,
                error=repr(task.exception()),
            )
        else:
            log.info("late action handler finished", **fields, seconds=seconds)

    async def drain(self) -> None:
        """Wait for handlers still running after their answer (bound it with a timeout)."""
        if self._late:
            await asyncio.wait(set(self._late))
