"""Refused custom-action requests are counted apart from webhooks."""

from __future__ import annotations

from frameiod import ActionEvent, App, Message
from frameiod.testing import run_daemon

RECEIVED = "frameiod_deliveries_received_total"
REJECTED = "frameiod_actions_rejected_total"


def _app() -> App:
    app = App()

    @app.on_action("rec.act")
    async def act(event: ActionEvent) -> Message:
        return Message("Done", "it worked")

    return app


async def test_action_rejections_leave_the_webhook_series_alone():
    async with run_daemon({"rec": _app()}) as daemon:
        before = await daemon.metrics()
        assert before[(REJECTED, (("outcome", "bad_signature"), ("source", "default")))] == 0
        status, _ = await daemon.act("rec.act", secret="not-the-secret")
        assert status == 401
        status, _ = await daemon.post(b"{}", secret="not-the-secret")
        assert status == 401
        after = await daemon.metrics()

    def delta(name: str, outcome: str) -> float:
        key = (name, (("outcome", outcome), ("source", "default")))
        return after[key] - before[key]

    assert delta(REJECTED, "bad_signature") == 1  # the action
    assert delta(RECEIVED, "bad_signature") == 1  # the webhook only
    acks = ("frameiod_ack_seconds_count", ())
    assert after[acks] - before[acks] == 1  # the webhook's answer; an action's is not timed


async def test_a_refused_action_on_an_unknown_source_is_counted_as_unknown():
    async with run_daemon({"rec": _app()}) as daemon:
        status, _ = await daemon.act("rec.act", source="nowhere", secret="anything")
        assert status == 404
        after = await daemon.metrics()
    assert after[(REJECTED, (("outcome", "unknown_source"), ("source", "unknown")))] == 1
    assert after[(RECEIVED, (("outcome", "unknown_source"), ("source", "unknown")))] == 0
