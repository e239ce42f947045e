"""The store's contract through ``frameiod queue``, the operator's operations as a user
runs them (see `store_contract`)."""

from __future__ import annotations

import json
import re
import time

import pytest
from store_contract import (
    DAY,
    DELIVERY_KEYS,
    LIST_KEYS,
    LOG,
    NOTIFY,
    SHOW_KEYS,
    Backend,
    Filled,
    Shared,
    counts,
    parsed,
)
from support import assert_hostile_text_escaped

from frameiod.store.base import SpoolBackend

# Its fixtures: `backend`, `store`, `filled` and `shared`.
pytest_plugins = ["store_contract"]


class TestHostileText:
    async def test_a_type_and_an_error_from_outside_are_shown_escaped(
        self, backend: Backend, store: SpoolBackend
    ):
        await assert_hostile_text_escaped(store, backend.config)


class TestQueueStats:
    def test_json_counts_per_state_and_handler_and_the_oldest_due_pending(self, shared: Shared):
        data = parsed(shared.ran["stats --json"])
        age = data.pop("oldest_pending_seconds")
        assert data == {
            "events": 5,
            "deliveries": {"pending": 3, "running": 0, "done": 1, "dead": 3},
            "handlers": {
                LOG: {"pending": 3, "running": 0, "done": 1, "dead": 0},
                NOTIFY: {"pending": 0, "running": 0, "done": 0, "dead": 3},
            },
            "sources": {"default": {"pending": 3, "running": 0, "done": 1, "dead": 3}},
        }
        # "waiting" has been due for 2 minutes, though never claimed; "mixed" and "later"
        # are not due, so they do not count.
        assert 120 <= age < 150

    def test_text_shows_the_same_numbers(self, shared: Shared):
        result = shared.ran["stats"]
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:2] == ["events      5", "deliveries  pending 3, running 0, done 1, dead 3"]
        assert re.fullmatch(r"oldest due pending  1[2-4]\d\.\ds", lines[2]), lines[2]
        assert lines[3:] == [f"  {LOG}: pending 3, done 1", f"  {NOTIFY}: dead 3"]


class TestQueueList:
    def test_every_delivery_newest_first_with_the_same_columns(self, shared: Shared):
        rows = parsed(shared.ran["list --json"])
        filled = shared.filled
        assert all(set(row) == LIST_KEYS for row in rows)
        assert [(r["event_id"], r["handler"], r["state"]) for r in rows] == [
            (filled.later.id, LOG, "pending"),
            (filled.dead.id, NOTIFY, "dead"),
            (filled.mixed.id, NOTIFY, "dead"),
            (filled.mixed.id, LOG, "pending"),
            (filled.waiting.id, LOG, "pending"),
            (filled.old.id, NOTIFY, "dead"),
            (filled.old.id, LOG, "done"),
        ]
        assert len({r["id"] for r in rows}) == len(rows)
        later = rows[0]
        assert (later["type"], later["source"], later["attempts"], later["last_error"]) == (
            "file.ready",
            "default",
            1,
            "OSError: disk busy",
        )
        assert later["received_at"] == pytest.approx(filled.later.received_at, abs=1e-6)
        assert later["next_attempt_at"] == pytest.approx(time.time() + 3600, abs=60)

    def test_dead_letters_with_their_last_error(self, shared: Shared):
        rows = parsed(shared.ran["list dead --json"])
        filled = shared.filled
        assert [
            (r["event_id"], r["type"], r["handler"], r["attempts"], r["last_error"]) for r in rows
        ] == [
            (filled.dead.id, "file.upload.completed", NOTIFY, 1, "TimeoutError: no answer in 10s"),
            (filled.mixed.id, "comment.updated", NOTIFY, 1, "TimeoutError: no answer in 10s"),
            (filled.old.id, "file.ready", NOTIFY, 1, "HTTPStatusError: 500 from chat"),
        ]

    def test_one_handler_newest_first(self, shared: Shared):
        rows = parsed(shared.ran["list handler --json"])
        filled = shared.filled
        assert [(r["event_id"], r["state"]) for r in rows] == [
            (filled.later.id, "pending"),
            (filled.mixed.id, "pending"),
            (filled.waiting.id, "pending"),
            (filled.old.id, "done"),
        ]

    def test_limit_keeps_the_newest(self, shared: Shared):
        rows = parsed(shared.ran["list limit --json"])
        filled = shared.filled
        assert [(r["event_id"], r["handler"]) for r in rows] == [
            (filled.later.id, LOG),
            (filled.dead.id, NOTIFY),
        ]

    def test_text_shows_the_delivery_id_handler_state_and_error(self, shared: Shared):
        result = shared.ran["list dead"]
        assert result.returncode == 0, result.stderr
        filled = shared.filled
        ids = {
            (r["event_id"], r["handler"]): str(r["id"])
            for r in parsed(shared.ran["list dead --json"])
        }
        header, *lines = result.stdout.splitlines()
        assert header.split()[:6] == ["DELIVERY", "EVENT", "TYPE", "HANDLER", "STATE", "TRIES"]
        expected = [
            (filled.dead, "file.upload.completed", "TimeoutError: no answer in 10s"),
            (filled.mixed, "comment.updated", "TimeoutError: no answer in 10s"),
            (filled.old, "file.ready", "HTTPStatusError: 500 from chat"),
        ]
        assert len(lines) == len(expected)
        for line, (event, kind, error) in zip(lines, expected, strict=True):
            delivery = ids[event.id, NOTIFY]
            assert line.lstrip().startswith(delivery + " ")
            end = line.index(delivery) + len(delivery)
            assert line[end:].split(maxsplit=5) == [
                event.id, kind, NOTIFY, "dead", "1", error,
            ]  # fmt: skip
            # The event column lines up under its header however wide the delivery ids are.
            assert line.index(event.id, end) == header.index("EVENT")

    def test_nothing_to_list_is_said_so(self, shared: Shared):
        result = shared.ran["list running"]
        assert (result.returncode, result.stdout) == (0, "no deliveries\n")


class TestQueueShow:
    def test_an_event_with_its_payload_and_deliveries(self, shared: Shared):
        data = parsed(shared.ran["show --json"])
        old = shared.filled.old
        assert set(data) == SHOW_KEYS
        assert (data["id"], data["source"], data["type"], data["timestamp"]) == (
            old.id,
            "default",
            "file.ready",
            old.timestamp,
        )
        assert data["received_at"] == pytest.approx(old.received_at, abs=1e-6)
        assert data["payload"] == json.loads(old.body)
        assert all(set(d) == DELIVERY_KEYS for d in data["deliveries"])
        assert [
            (d["handler"], d["state"], d["attempts"], d["last_outcome"], d["last_error"])
            for d in data["deliveries"]
        ] == [
            (LOG, "done", 1, "ok", None),
            (NOTIFY, "dead", 1, "error", "HTTPStatusError: 500 from chat"),
        ]
        notify = data["deliveries"][1]
        assert notify["last_seconds"] == 1.0
        assert notify["updated_at"] == pytest.approx(time.time() - 8 * DAY, abs=60)

    def test_an_unknown_event_is_an_error_naming_the_store(self, shared: Shared):
        result = shared.ran["show unknown"]
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"no event no-such-event in {shared.filled.describe}\n"


class TestQueueReplay:
    async def test_an_event_id_replays_its_dead_deliveries_only(self, filled: Filled):
        assert await filled.claim(NOTIFY) == [], "nothing of NOTIFY is due before the replay"
        result = filled.backend.queue("replay", filled.mixed.id)
        assert (result.returncode, result.stdout) == (0, "replayed 1 delivery\n")
        assert await filled.deliveries(filled.mixed) == {
            LOG: ("pending", 1),
            NOTIFY: ("pending", 0),
        }
        assert await filled.deliveries(filled.dead) == {NOTIFY: ("dead", 1)}
        assert await filled.deliveries(filled.old) == {LOG: ("done", 1), NOTIFY: ("dead", 1)}
        assert filled.backend.dead_letters() == sorted(
            [(filled.old.id, NOTIFY), (filled.dead.id, NOTIFY)]
        )
        show = filled.backend.json("show", filled.mixed.id)
        assert show["deliveries"][1]["next_attempt_at"] == pytest.approx(time.time(), abs=30)
        # Due now, for any receiver, and its attempts start over.
        assert await filled.claim(NOTIFY) == [(filled.mixed.id, NOTIFY, 1)]
        assert filled.backend.json("stats")["deliveries"] == counts(
            pending=3, running=1, done=1, dead=2
        )

    async def test_a_delivery_id_replays_that_delivery(self, filled: Filled):
        [delivery] = [
            row["id"]
            for row in filled.backend.json("list", "--state", "dead")
            if row["event_id"] == filled.dead.id
        ]
        assert filled.backend.json("replay", str(delivery)) == {"replayed": 1}
        assert await filled.deliveries(filled.dead) == {NOTIFY: ("pending", 0)}
        assert await filled.deliveries(filled.old) == {LOG: ("done", 1), NOTIFY: ("dead", 1)}
        assert await filled.claim(NOTIFY) == [(filled.dead.id, NOTIFY, 1)]

    async def test_all_dead_replays_every_dead_letter_once(self, filled: Filled):
        result = filled.backend.queue("replay", "--all-dead")
        assert (result.returncode, result.stdout) == (0, "replayed 3 deliveries\n")
        assert filled.backend.dead_letters() == []
        assert filled.backend.json("stats")["deliveries"] == counts(pending=6, done=1)
        # Nothing is dead any more: a second replay changes nothing, counters included.
        assert filled.backend.json("replay", "--all-dead") == {"replayed": 0}
        assert filled.backend.json("stats")["deliveries"] == counts(pending=6, done=1)
        assert [await filled.deliveries(e) for e in (filled.old, filled.mixed, filled.dead)] == [
            {LOG: ("done", 1), NOTIFY: ("pending", 0)},
            {LOG: ("pending", 1), NOTIFY: ("pending", 0)},
            {NOTIFY: ("pending", 0)},
        ]
        assert await filled.claim(NOTIFY) == sorted(
            [(filled.old.id, NOTIFY, 1), (filled.mixed.id, NOTIFY, 1), (filled.dead.id, NOTIFY, 1)]
        )

    async def test_ids_that_are_not_dead_replay_nothing(self, filled: Filled):
        not_dead = [
            str(row["id"])
            for row in filled.backend.json("list")
            if row["state"] != "dead"
        ]  # fmt: skip
        result = filled.backend.queue(
            "replay", filled.later.id, *not_dead, "no-such-event", "x y", "123456", "--json"
        )
        # Nothing replayed, and each id said: not dead (its state), or naming nothing; the
        # command failed, naming each on stderr.
        assert result.returncode == 1
        data = json.loads(result.stdout)
        for unknown in ("no-such-event", "x y", "123456"):
            assert f"{unknown}: no such delivery or event\n" in result.stderr
        assert f"{filled.later.id}: pending: it is already waiting" in result.stderr
        assert data["replayed"] == 0
        assert {item["id"]: item["state"] for item in data["refused"]} == {
            filled.later.id: "pending",
            **{delivery: row["state"] for delivery, row in zip(not_dead, [
                row for row in filled.backend.json("list") if row["state"] != "dead"
            ], strict=True)},
        }  # fmt: skip
        assert data["unknown"] == ["no-such-event", "x y", "123456"]
        assert await filled.deliveries(filled.old) == {LOG: ("done", 1), NOTIFY: ("dead", 1)}
        assert await filled.deliveries(filled.later) == {LOG: ("pending", 1)}
        assert len(filled.backend.dead_letters()) == 3

    def test_nothing_named_is_a_usage_error(self, shared: Shared):
        result = shared.ran["replay"]
        assert result.returncode == 2
        assert result.stderr == "name event or delivery ids to replay, or --all-dead\n"
        assert len(shared.filled.backend.dead_letters()) == 3


class TestQueuePurge:
    async def test_older_than_keeps_young_dead_letters(self, filled: Filled):
        queue, json_of = filled.backend.queue, filled.backend.json
        result = queue("purge", "--dead", "--older-than", "7d")
        assert (result.returncode, result.stdout) == (0, "purged 1 dead delivery\n")
        assert filled.backend.dead_letters() == sorted(
            [(filled.mixed.id, NOTIFY), (filled.dead.id, NOTIFY)]
        )
        # Gone from every view: counts, listings, the event itself.
        stats = json_of("stats")
        assert stats["deliveries"] == counts(pending=3, done=1, dead=2)
        assert stats["handlers"][NOTIFY] == counts(dead=2)
        assert [r["event_id"] for r in json_of("list", "--handler", NOTIFY)] == [
            filled.dead.id,
            filled.mixed.id,
        ]
        assert [d["handler"] for d in json_of("show", filled.old.id)["deliveries"]] == [LOG]
        # A purged dead letter cannot be replayed.
        refused = queue("replay", filled.old.id)
        assert (refused.returncode, refused.stdout) == (1, "replayed 0 deliveries\n")
        assert refused.stderr.startswith(f"{filled.old.id}: done: its handler succeeded")
        # The old event still has its done delivery: the daemons' purge of done events takes it.
        assert await filled.purge_done() == 1
        assert queue("show", filled.old.id).returncode == 1
        assert json_of("stats")["events"] == 4

    async def test_zero_purges_every_dead_letter_and_the_events_left_with_nothing_to_run(
        self, filled: Filled
    ):
        queue, json_of = filled.backend.queue, filled.backend.json
        assert json_of("purge", "--dead", "--older-than", "0s") == {"purged": 3}
        assert filled.backend.dead_letters() == []
        stats = json_of("stats")
        assert stats["deliveries"] == counts(pending=3, done=1)
        assert stats["handlers"] == {LOG: counts(pending=3, done=1)}
        assert json_of("list", "--handler", NOTIFY) == []
        assert json_of("list", "--state", "dead") == []
        # "dead" had nothing else: it went with its dead letter.
        assert queue("show", filled.dead.id).returncode == 1
        assert stats["events"] == 4
        assert filled.backend.event_ids() == {
            e.id for e in (filled.old, filled.waiting, filled.mixed, filled.later)
        }
        # "old" has its done delivery: settled, the daemons' purge takes it. "mixed" still
        # has a pending delivery: it stays.
        assert await filled.purge_done() == 1
        assert queue("show", filled.old.id).returncode == 1
        assert [(r["event_id"], r["handler"]) for r in json_of("list")] == [
            (filled.later.id, LOG),
            (filled.mixed.id, LOG),
            (filled.waiting.id, LOG),
        ]
        assert json_of("stats")["deliveries"] == counts(pending=3)
        assert json_of("purge", "--dead") == {"purged": 0}

    async def test_a_purged_dead_letter_is_no_delivery_of_its_event_any_more(self, filled: Filled):
        assert filled.backend.json("purge", "--dead", "--older-than", "7d") == {"purged": 1}
        assert await filled.deliveries(filled.old) == {LOG: ("done", 1)}

    def test_a_bad_duration_is_a_usage_error(self, shared: Shared):
        result = shared.ran["purge bogus"]
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1].endswith(
            'argument --older-than: expected a duration like "12h" or "7d", got \'bogus\''
        )
        assert len(shared.filled.backend.dead_letters()) == 3
