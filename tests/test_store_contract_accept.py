"""The store's contract: accepting events, and telling duplicates (see `store_contract`)."""

from __future__ import annotations

import json

import pytest
from store_contract import (
    Backend,
    claim_confirmed,
    counts,
    finish_ok,
    keys,
    states,
)
from support import incoming

from frameiod.store.base import Accepted, SpoolBackend

# Its fixtures: `backend`, `store`, `filled` and `shared`.
pytest_plugins = ["store_contract"]


class TestAccept:
    async def test_an_event_gets_one_pending_delivery_per_handler(
        self, store: SpoolBackend, backend: Backend
    ):
        event = incoming()
        accepted = await store.accept(event, ["log:write", "notify:post"])
        assert accepted == Accepted(event.id, duplicate=False, deliveries=2)
        assert backend.event_ids() == {event.id}
        rows = await store.deliveries_of(event.id)
        assert [
            {k: row[k] for k in ("handler", "state", "attempts", "last_outcome", "last_error")}
            for row in rows
        ] == [
            {"handler": h, "state": "pending", "attempts": 0, "last_outcome": None,
             "last_error": None}
            for h in ("log:write", "notify:post")
        ]  # fmt: skip
        assert await store.gauges(now=event.received_at) == (counts(pending=2), 0.0)

    async def test_an_event_no_handler_wants_is_kept_without_deliveries(
        self, store: SpoolBackend, backend: Backend
    ):
        event = incoming()
        assert await store.accept(event, []) == Accepted(event.id, duplicate=False, deliveries=0)
        assert backend.event_ids() == {event.id}
        assert await store.deliveries_of(event.id) == []
        assert (await store.gauges())[0] == counts()
        # Kept all the same: the same request again is recognised.
        again = incoming(event.body, signature=event.signature, timestamp=event.timestamp)
        assert await store.accept(again, []) == Accepted(event.id, True, 0)

    async def test_everything_accepted_is_still_there_after_reopening(self, backend: Backend):
        events = [incoming(), incoming()]
        store = await backend.open()
        await store.accept(events[0], ["a", "b"])
        await store.accept(events[1], [])
        await store.close()

        store = await backend.open()
        assert store.recovered == 0
        assert await states(store, events[0].id) == {"a": ("pending", 0), "b": ("pending", 0)}
        assert backend.event_ids() == {events[0].id, events[1].id}
        assert keys(await claim_confirmed(store, 10, {"a": 5, "b": 5})) == [
            (events[0].id, "a", 1),
            (events[0].id, "b", 1),
        ]

    async def test_text_and_bytes_come_back_exactly_as_accepted(self, store: SpoolBackend):
        # What a store might mangle on its way: quotes, backslashes, control characters,
        # non-ASCII text, and a body not in JSON's own spelling (spaces around it, an
        # escape left as sent beside raw UTF-8).
        kind = 'file.r\u00e9ady "x" \\ \t \u2713'
        body = (
            ' {"type": ' + json.dumps(kind, ensure_ascii=False) + ","
            ' "resource": {"id": "\\u00fc \u00fc", "type": "file"}} '
        ).encode()
        trace = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
        event = incoming(body, event_type=kind, trace_context=trace)
        await store.accept(event, ["a"])
        (item,) = await claim_confirmed(store, 1, {"a": 1})
        assert (item.body, item.trace_context) == (body, trace)
        error = 'KeyError: "\u00fc\\n" \t\u2713'
        await store.finish(item.delivery_id, outcome="error", seconds=0.5, error=error, dead=True)
        (row,) = await store.deliveries_of(event.id)
        assert (row["state"], row["last_error"]) == ("dead", error)
        detail = await store.show(event.id)
        assert detail is not None
        assert (detail["type"], detail["payload"]["type"]) == (kind, kind)

    async def test_listeners_hear_of_new_deliveries_only(self, store: SpoolBackend):
        heard: list[str] = []
        store.on_new_work(lambda: heard.append("work"))
        first = incoming()
        await store.accept(first, ["a"])
        resent = incoming(first.body, signature=first.signature, timestamp=first.timestamp)
        await store.accept(resent, ["a"])  # a duplicate: nothing new to do
        await store.accept(incoming(), [])
        assert heard == ["work"]


class TestDuplicates:
    async def test_the_same_signed_request_again_is_the_original_event(
        self, store: SpoolBackend, backend: Backend
    ):
        original = incoming()
        await store.accept(original, ["a"])
        await claim_confirmed(store, 1, {"a": 1})  # even once it has started
        # Another body: only the (source, timestamp, signature) check can match.
        again = incoming(signature=original.signature, timestamp=original.timestamp)
        assert await store.accept(again, ["a"]) == Accepted(original.id, True, 0)
        assert backend.event_ids() == {original.id}
        assert await states(store, original.id) == {"a": ("running", 1)}
        assert (await store.gauges())[0] == counts(running=1)

    async def test_the_same_signature_from_another_source_is_a_new_event(self, store: SpoolBackend):
        original = incoming()
        await store.accept(original, ["a"])
        other = incoming(source="elsewhere", timestamp=original.timestamp,
                         signature=original.signature)  # fmt: skip
        assert await store.accept(other, ["a"]) == Accepted(other.id, False, 1)

    async def test_a_retried_request_is_its_own_event_even_when_a_newer_copy_waits(
        self, store: SpoolBackend
    ):
        original = incoming()
        await store.accept(original, ["a"])
        await claim_confirmed(store, 1, {"a": 1})
        copy = incoming(original.body)  # started original: the copy is an event of its own
        assert await store.accept(copy, ["a"]) == Accepted(copy.id, False, 1)
        retry = incoming(original.body, signature=original.signature, timestamp=original.timestamp)
        assert await store.accept(retry, ["a"]) == Accepted(original.id, True, 0)

    async def test_an_identical_body_waiting_for_all_handlers_is_coalesced(
        self, store: SpoolBackend, backend: Backend
    ):
        original = incoming()
        await store.accept(original, ["a", "b"])
        again = incoming(original.body, timestamp=original.timestamp + 5)
        assert await store.accept(again, ["a", "b"]) == Accepted(original.id, True, 0)
        assert backend.event_ids() == {original.id}
        assert (await store.gauges())[0] == counts(pending=2)

    async def test_a_coalesced_request_again_is_a_duplicate_once_its_event_has_run(
        self, store: SpoolBackend, backend: Backend
    ):
        original = incoming()
        await store.accept(original, ["a"])
        twin = incoming(original.body, timestamp=original.timestamp + 5)
        assert await store.accept(twin, ["a"]) == Accepted(original.id, True, 0)
        [claimed] = await claim_confirmed(store, 1, {"a": 1})
        await finish_ok(store, claimed)

        replay = incoming(original.body, timestamp=twin.timestamp, signature=twin.signature)
        assert await store.accept(replay, ["a"]) == Accepted(original.id, True, 0)
        assert backend.event_ids() == {original.id}
        assert await states(store, original.id) == {"a": ("done", 1)}

    @pytest.mark.parametrize("progress", ["running", "done", "retry"])
    async def test_an_identical_body_is_a_new_event_once_a_delivery_has_started(
        self, store: SpoolBackend, backend: Backend, progress: str
    ):
        original = incoming()
        await store.accept(original, ["a", "b"])
        [claimed] = await claim_confirmed(store, 1, {"a": 1})
        if progress == "done":
            await finish_ok(store, claimed)
        if progress == "retry":  # failed once, pending again: its run has begun all the same
            await store.finish(
                claimed.delivery_id, outcome="error", seconds=0.1, error="boom", next_attempt_at=0
            )
        expected = "pending" if progress == "retry" else progress
        assert await states(store, original.id) == {"a": (expected, 1), "b": ("pending", 0)}

        again = incoming(original.body)
        assert await store.accept(again, ["a", "b"]) == Accepted(again.id, False, 2)
        assert backend.event_ids() == {original.id, again.id}

    @pytest.mark.parametrize(
        "purge", [("--dead", "--older-than", "0s"), ("EVENT",)], ids=["all-dead", "by-id"]
    )
    async def test_an_identical_body_is_a_new_event_once_a_dead_letter_of_it_is_purged(
        self, backend: Backend, purge: tuple[str, ...]
    ):
        # Handler a ran and died; b still waits. Purging a's dead letter must not make the
        # event look unstarted again, not even to a store opened afresh: a body joined to it
        # would never reach a.
        store = await backend.open()
        original = incoming()
        await store.accept(original, ["a", "b"])
        [claimed] = await claim_confirmed(store, 1, {"a": 1})
        await store.finish(
            claimed.delivery_id, outcome="error", seconds=0.1, error="boom", dead=True
        )
        await store.close()
        purged = backend.queue("purge", *(original.id if p == "EVENT" else p for p in purge))
        assert purged.returncode == 0, purged.stderr
        store = await backend.open()
        assert await states(store, original.id) == {"b": ("pending", 0)}

        again = incoming(original.body)
        assert await store.accept(again, ["a", "b"]) == Accepted(again.id, False, 2)
        assert await states(store, again.id) == {"a": ("pending", 0), "b": ("pending", 0)}

    @pytest.mark.parametrize(
        "change", [{"secret_id": "1"}, {"source": "other"}], ids=["secret", "source"]
    )
    async def test_an_identical_body_signed_elsewhere_is_a_new_event(
        self, store: SpoolBackend, backend: Backend, change: dict[str, str]
    ):
        original = incoming()
        await store.accept(original, ["a"])
        again = incoming(original.body, **change)
        assert await store.accept(again, ["a"]) == Accepted(again.id, False, 1)
        assert backend.event_ids() == {original.id, again.id}

    async def test_an_identical_body_of_an_event_without_deliveries_is_a_new_event(
        self, store: SpoolBackend, backend: Backend
    ):
        original = incoming()
        await store.accept(original, [])
        again = incoming(original.body)
        assert await store.accept(again, ["a"]) == Accepted(again.id, False, 1)
        assert backend.event_ids() == {original.id, again.id}
