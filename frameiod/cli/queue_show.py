"""How ``frameiod queue`` prints for a person: times in ISO 8601 UTC, one event or one
delivery as aligned fields with the payload pretty-printed, and the table of deliveries.

Everything that came from outside (an event's type and payload, a handler's name and
error) goes through `frameiod.terminal.printable` before it is cut or padded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from frameiod.terminal import cut, plural, printable, say

__all__ = ["print_list", "print_show", "when"]

_LABEL = 14  # the widest label ("last attempt") and the space after it


def when(moment: float | None) -> str:
    """``moment`` (seconds since the epoch) in ISO 8601 UTC, to the second; "-" for None."""
    if moment is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def print_list(rows: list[dict[str, Any]]) -> None:
    """The deliveries of a page, one a line under a header, each column cut with "…"."""
    if not rows:
        print("no deliveries")
        return
    ids = [printable(str(row["id"])) for row in rows]
    # Some delivery ids (Redis's "<event id> <handler>") are wider than a number.
    width = max(8, *(len(delivery) for delivery in ids))
    print(
        f"{'DELIVERY':>{width}}  {'EVENT':36}  {'TYPE':22}  {'HANDLER':28}  {'STATE':7}  TRIES  "
        "NEXT / LAST ERROR"
    )
    for delivery, row in zip(ids, rows, strict=True):
        if row["state"] in ("dead", "done"):
            tail = printable(row["last_error"] or "")
        else:
            tail = when(row["next_attempt_at"])
        event, kind, handler = (printable(row[key]) for key in ("event_id", "type", "handler"))
        print(
            f"{delivery:>{width}}  {cut(event, 36):36}  {cut(kind, 22):22}  "
            f"{cut(handler, 28):28}  {row['state']:7}  {row['attempts']:>5}  {cut(tail, 60)}"
        )


def _field(label: str, value: object) -> None:
    say(f"{label:<{_LABEL}}{value}")


def _payload(payload: Any) -> None:
    say("payload")
    # Each line escaped on its own: JSON escapes control characters, not a bidi override.
    for line in json.dumps(payload, indent=2, ensure_ascii=False).splitlines():
        say(f"  {line}")


def _deliveries(title: str, rows: Iterable[Mapping[str, Any]]) -> None:
    rows = list(rows)
    if not rows:
        return
    say(title)
    ids = [printable(str(row["id"])) for row in rows]
    handlers = [printable(row["handler"]) for row in rows]
    id_width, handler_width = max(map(len, ids)), max(map(len, handlers))
    for delivery, handler, row in zip(ids, handlers, rows, strict=True):
        if row["state"] in ("dead", "done"):
            tail = f"last {row['last_outcome'] or '-'} at {when(row['updated_at'])}"
            if row["last_error"]:
                tail += f": {printable(row['last_error'])}"
        else:
            tail = f"next at {when(row['next_attempt_at'])}"
        say(
            f"  {delivery:>{id_width}}  {handler:<{handler_width}}  {row['state']:7}  "
            f"{plural(row['attempts'], 'attempt'):>11}  {tail}"
        )


def _event(event: Mapping[str, Any]) -> None:
    _field("event", printable(event["id"]))
    _field("type", printable(event["type"]))
    _field("source", printable(event["source"]))
    _field("signed at", when(event["timestamp"]))
    _field("received at", when(event["received_at"]))


def print_show(data: dict[str, Any]) -> None:
    """One event (`SpoolBackend.show`) or one delivery (`frameiod.store.operator.delivery`)
    as aligned fields, then its deliveries, then the payload pretty-printed."""
    if "event" not in data:
        _event(data)
        _deliveries("deliveries", data["deliveries"])
        _payload(data["payload"])
        return
    _field("delivery", printable(str(data["id"])))
    _field("handler", printable(data["handler"]))
    _field("state", data["state"])
    # Here "attempts" is the list of attempts the store keeps (the last one), which
    # carries the count.
    attempts = data["attempts"]
    _field("attempts", attempts[-1]["attempt"] if attempts else 0)
    if data["state"] in ("pending", "running"):
        _field("next attempt", when(data["next_attempt_at"]))
    for attempt in attempts:
        seconds = attempt["seconds"]
        took = "" if seconds is None else f" after {seconds:.2f}s"
        _field("last attempt", f"{attempt['outcome']}{took} at {when(attempt['at'])}")
        if attempt["error"]:
            _field("last error", printable(attempt["error"]))
    _event(data["event"])
    _deliveries("other deliveries", data["siblings"])
    _payload(data["event"]["payload"])
