"""``frameiod queue``: look into the spool and act on it, while the daemon runs or not.

Works on the spool file directly with its own SQLite connection: WAL lets it read while
the daemon writes, and its few writes (replay, purge) wait for the daemon's batches
through SQLite's busy timeout. The daemon notices replayed deliveries within seconds.
With ``[spool] backend = "redis"`` the same actions run against Redis instead
(`frameiod.store.redis_queue`); `open_queue` is the one place that chooses.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Protocol

from frameiod.config import Config, parse_duration
from frameiod.terminal import printable, say

__all__ = [
    "QueueError",
    "QueueStore",
    "add_queue_commands",
    "list_deliveries",
    "open_queue",
    "open_spool",
    "purge_dead",
    "replay",
    "run_queue",
    "show",
    "stats",
]

STATES = ("pending", "running", "done", "dead")


def open_spool(path: Path) -> sqlite3.Connection:
    """Open an existing spool for administration; raise FileNotFoundError if there is none."""
    if not path.exists():
        raise FileNotFoundError(f"no spool at {path} (frameiod creates it on its first run)")
    # as_uri() percent-encodes the path: a "#" or "?" in it must not end the file name.
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def stats(conn: sqlite3.Connection, now: float | None = None) -> dict[str, Any]:
    """Deliveries per state and per handler, and the age of the oldest due pending one."""
    moment = time.time() if now is None else now
    states = dict.fromkeys(STATES, 0)
    handlers: dict[str, dict[str, int]] = {}
    for row in conn.execute(
        "SELECT handler, state, COUNT(*) AS n FROM deliveries"
        " GROUP BY handler, state ORDER BY handler"
    ):
        states[row["state"]] += row["n"]
        handlers.setdefault(row["handler"], dict.fromkeys(STATES, 0))[row["state"]] = row["n"]
    oldest = conn.execute(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'"
        " AND next_attempt_at <= ?",
        (moment,),
    ).fetchone()[0]
    events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    return {
        "events": events,
        "deliveries": states,
        "handlers": handlers,
        "oldest_pending_seconds": round(moment - oldest, 3) if oldest is not None else None,
    }


def list_deliveries(
    conn: sqlite3.Connection, state: str | None, handler: str | None, limit: int
) -> list[dict[str, Any]]:
    """Deliveries, newest first, optionally of one state and one handler."""
    clauses, args = [], []
    if state:
        clauses.append("d.state = ?")
        args.append(state)
    if handler:
        clauses.append("d.handler = ?")
        args.append(handler)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        "SELECT d.id, d.event_id, e.type, e.source, d.handler, d.state, d.attempts,"  # noqa: S608
        " d.next_attempt_at, d.last_outcome, d.last_error, e.received_at"
        f" FROM deliveries d JOIN events e ON e.id = d.event_id {where}"
        " ORDER BY e.received_at DESC, d.id DESC LIMIT ?",
        (*args, limit),
    )
    return [dict(row) for row in rows]


def show(conn: sqlite3.Connection, event_id: str) -> dict[str, Any] | None:
    """One event, its payload, and all its deliveries; None if there is no such event."""
    event = conn.execute(
        "SELECT id, source, type, timestamp, received_at, body FROM events WHERE id = ?",
        (event_id,),
    ).fetchone()
    if event is None:
        return None
    result = dict(event)
    result["payload"] = json.loads(result.pop("body"))
    result["deliveries"] = [
        dict(row)
        for row in conn.execute(
            "SELECT id, handler, state, attempts, next_attempt_at, last_outcome, last_error,"
            " last_seconds, updated_at FROM deliveries WHERE event_id = ? ORDER BY id",
            (event_id,),
        )
    ]
    return result


def replay(conn: sqlite3.Connection, ids: Sequence[str], all_dead: bool) -> int:
    """Make dead deliveries pending again, due now, with their attempts reset.

    ``ids`` are event ids (every dead delivery of the event) or delivery ids (numbers).
    Returns how many deliveries were replayed.
    """
    now = time.time()
    update = (
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
        " updated_at = ? WHERE state = 'dead'"
    )
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        if all_dead:
            return conn.execute(update, (now, now)).rowcount
        count = 0
        for item in ids:
            column = "id" if item.isdigit() else "event_id"
            count += conn.execute(f"{update} AND {column} = ?", (now, now, item)).rowcount
        return count


def purge_dead(conn: sqlite3.Connection, older_than: float) -> int:
    """Delete dead deliveries last touched more than ``older_than`` seconds ago (and events
    left with no deliveries); returns how many deliveries went."""
    cutoff = time.time() - older_than
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        count = conn.execute(
            "DELETE FROM deliveries WHERE state = 'dead' AND updated_at < ?", (cutoff,)
        ).rowcount
        conn.execute(
            "DELETE FROM events WHERE received_at < ? AND NOT EXISTS"
            " (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)",
            (cutoff,),
        )
        return count


# --- either backend ----------------------------------------------------------------------


class QueueError(Exception):
    """The spool cannot be opened or used; the message is what the user reads."""


class QueueStore(Protocol):
    """The five actions on one backend's spool, with its errors as `QueueError`."""

    where: str
    """The spool, for messages: a file, or a Redis URL (without password) and key prefix."""

    def stats(self) -> dict[str, Any]:
        """See `stats`."""
        ...

    def list_deliveries(
        self, state: str | None, handler: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """See `list_deliveries`."""
        ...

    def show(self, event_id: str) -> dict[str, Any] | None:
        """See `show`."""
        ...

    def replay(self, ids: Sequence[str], all_dead: bool) -> int:
        """See `replay`."""
        ...

    def purge_dead(self, older_than: float) -> int:
        """See `purge_dead`."""
        ...

    def close(self) -> None:
        """Let go of the spool."""
        ...


class _SqliteQueue:
    """`QueueStore` on the SQLite spool file: the functions above."""

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        try:
            self._conn = open_spool(path)
        except FileNotFoundError as exc:
            raise QueueError(str(exc)) from None
        except sqlite3.Error as exc:
            raise QueueError(f"{path}: cannot open the spool: {exc}") from None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:  # not a spool, or locked beyond the busy timeout
            raise QueueError(f"{self.where}: cannot use the spool: {exc}") from None

    def stats(self) -> dict[str, Any]:
        """See `stats`."""
        with self._errors():
            return stats(self._conn)

    def list_deliveries(
        self, state: str | None, handler: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """See `list_deliveries`."""
        with self._errors():
            return list_deliveries(self._conn, state, handler, limit)

    def show(self, event_id: str) -> dict[str, Any] | None:
        """See `show`."""
        with self._errors():
            return show(self._conn, event_id)

    def replay(self, ids: Sequence[str], all_dead: bool) -> int:
        """See `replay`."""
        with self._errors():
            return replay(self._conn, ids, all_dead)

    def purge_dead(self, older_than: float) -> int:
        """See `purge_dead`."""
        with self._errors():
            return purge_dead(self._conn, older_than)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def open_queue(config: Config) -> QueueStore:
    """The configured spool (``[spool] backend``) for ``frameiod queue``; raise
    `QueueError` if it cannot be opened."""
    if config.spool.backend == "redis":
        # Imported only here: redis is an optional dependency (frameiod[redis]).
        from frameiod.store.redis_queue import RedisQueue  # noqa: PLC0415

        return RedisQueue(config.spool.redis_url.reveal(), config.spool.stream_prefix)
    return _SqliteQueue(config.resolve_path(config.spool.path))


# --- the command line -------------------------------------------------------------------


def _when(moment: float | None) -> str:
    if moment is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def _print_stats(data: dict[str, Any]) -> None:
    states = data["deliveries"]
    print(f"events      {data['events']}")
    print("deliveries  " + ", ".join(f"{state} {states[state]}" for state in STATES))
    age = data["oldest_pending_seconds"]
    print(f"oldest due pending  {'-' if age is None else f'{age:.1f}s'}")
    for handler, counts in data["handlers"].items():
        say(f"  {handler}: " + ", ".join(f"{s} {counts[s]}" for s in STATES if counts[s]))


def _print_list(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no deliveries")
        return
    # Escaped before they are cut and padded: an event's type and a handler's error are
    # written by whoever sent the event or raised the error.
    ids = [printable(row["id"]) for row in rows]
    # Redis's delivery ids ("<event id> <handler>") are wider than SQLite's numbers.
    width = max(8, *(len(delivery) for delivery in ids))
    print(
        f"{'DELIVERY':>{width}}  {'EVENT':36}  {'TYPE':22}  {'HANDLER':28}  {'STATE':7}  TRIES  "
        "NEXT / LAST ERROR"
    )
    for delivery, row in zip(ids, rows, strict=True):
        if row["state"] in ("dead", "done"):
            tail = printable(row["last_error"] or "")
        else:
            tail = _when(row["next_attempt_at"])
        event, kind, handler = (printable(row[key]) for key in ("event_id", "type", "handler"))
        print(
            f"{delivery:>{width}}  {event:36}  {kind[:22]:22}  "
            f"{handler[:28]:28}  {row['state']:7}  {row['attempts']:>5}  {tail[:60]}"
        )


def run_queue(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``frameiod queue ACTION`` against the configured spool; the exit status."""
    try:
        store = open_queue(config)
    except QueueError as exc:
        say(str(exc), file=sys.stderr)
        return 1
    try:
        with closing(store):
            if args.queue_command == "stats":
                data: Any = store.stats()
                printer: Any = _print_stats
            elif args.queue_command == "list":
                data = store.list_deliveries(args.state, args.handler, args.limit)
                printer = _print_list
            elif args.queue_command == "show":
                data = store.show(args.id)
                if data is None:
                    say(f"no event {args.id} in {store.where}", file=sys.stderr)
                    return 1
                printer = lambda d: print(json.dumps(d, indent=2))  # noqa: E731
            elif args.queue_command == "replay":
                if not args.ids and not args.all_dead:
                    print("name event or delivery ids to replay, or --all-dead", file=sys.stderr)
                    return 2
                data = {"replayed": store.replay(args.ids, args.all_dead)}
                printer = lambda d: print(f"replayed {d['replayed']} deliveries")  # noqa: E731
            else:
                data = {"purged": store.purge_dead(args.older_than)}
                printer = lambda d: print(f"purged {d['purged']} dead deliveries")  # noqa: E731
    except QueueError as exc:
        say(str(exc), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        printer(data)
    return 0


def _duration(text: str) -> float:
    # Days too, on the command line: dead letters are kept for days, not hours.
    if text.endswith("d") and text[:-1].isdigit():
        return int(text[:-1]) * 86400.0
    try:
        return parse_duration(text)
    except Exception:
        raise argparse.ArgumentTypeError(
            f'expected a duration like "12h" or "7d", got {text!r}'
        ) from None


def add_queue_commands(commands: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``frameiod queue ...`` to the CLI's subcommands; `run_queue` carries them out."""
    # --config on the actions only: argparse lets a subparser's default overwrite a value
    # its parent parsed, so `queue --config X stats` would lose X.
    queue = commands.add_parser("queue", help="inspect and act on the spool")
    verbs = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON")

    verbs.add_parser(
        "stats", parents=[common, output], help="counts per state and handler, oldest pending age"
    )
    listing = verbs.add_parser("list", parents=[common, output], help="list deliveries")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--handler", help="plugin:handler, as frameiod queue stats shows")
    listing.add_argument("--limit", type=int, default=50)
    one = verbs.add_parser("show", parents=[common, output], help="an event and its deliveries")
    one.add_argument("id", metavar="EVENT_ID")
    again = verbs.add_parser(
        "replay", parents=[common, output], help="make dead deliveries pending again"
    )
    again.add_argument(
        "ids",
        nargs="*",
        metavar="ID",
        help='event ids or delivery ids (on Redis "<event id> <handler>", one quoted argument)',
    )
    again.add_argument("--all-dead", action="store_true", help="every dead delivery")
    purge = verbs.add_parser("purge", parents=[common, output], help="delete dead deliveries")
    purge.add_argument(
        "--dead",
        action="store_true",
        required=True,
        help="what to purge (dead letters; done ones are purged automatically)",
    )
    purge.add_argument(
        "--older-than",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="only those last tried longer ago than this, e.g. 7d or 12h",
    )
    return queue
