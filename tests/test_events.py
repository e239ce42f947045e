"""Tests for frameiod.events: webhook and custom-action payloads (frameio-platform.md §2-3)."""

from __future__ import annotations

import json

import pytest

from frameiod.events import (
    EVENT_TYPES,
    ActionEvent,
    PayloadError,
    WebhookEvent,
    check_webhook,
    closest_event_type,
    parse_action,
    parse_webhook,
)

# The sample V4 webhook payload from frameio-platform.md §2, byte for byte.
SAMPLE_WEBHOOK = b"""{
  "type": "file.ready",
  "account":   {"id": "aaaaaaaa-0000-0000-0000-000000000001"},
  "workspace": {"id": "bbbbbbbb-0000-0000-0000-000000000002"},
  "project":   {"id": "cccccccc-0000-0000-0000-000000000003"},
  "resource":  {"id": "dddddddd-0000-0000-0000-000000000004", "type": "file"},
  "user":      {"id": "eeeeeeee-0000-0000-0000-000000000005"}
}"""

# The first-click custom-action payload from frameio-platform.md §3.
SAMPLE_ACTION = b"""{
  "account_id": "aaaaaaaa-0000-0000-0000-000000000001",
  "action_id": "ffffffff-0000-0000-0000-000000000006",
  "interaction_id": "99999999-0000-0000-0000-000000000007",
  "type": "acme.transcode",
  "project":   {"id": "cccccccc-0000-0000-0000-000000000003"},
  "resource":  {"id": "dddddddd-0000-0000-0000-000000000004", "type": "file"},
  "user":      {"id": "eeeeeeee-0000-0000-0000-000000000005"},
  "workspace": {"id": "bbbbbbbb-0000-0000-0000-000000000002"}
}"""


def payload_error(body: bytes) -> PayloadError:
    """The error `parse_webhook` raises for ``body``; the server's cheaper `check_webhook`
    must raise the very same."""
    with pytest.raises(PayloadError) as info:
        parse_webhook(body)
    with pytest.raises(PayloadError) as checked:
        check_webhook(body)
    error = info.value
    assert (checked.value.status, checked.value.reason, checked.value.detail) == (
        error.status,
        error.reason,
        error.detail,
    )
    return error


class TestCheckWebhookAgreesWithTheModel:
    @pytest.mark.parametrize(
        "body",
        [
            SAMPLE_WEBHOOK,
            b'{"type":"comment.created","resource":{"id":"c1"}}',
            b'{"type":"x","resource":{"id":"r","type":null},"user":null,"account":null}',
            b'{"type":"x","resource":{"id":"r","extra":[1]},"new_field":{"a":1},"user":{"id":"u"}}',
        ],
        ids=["sample", "type-and-resource", "nulls", "unknown-fields"],
    )
    def test_what_the_model_accepts_passes_the_check_with_its_type(self, body: bytes) -> None:
        assert check_webhook(body) == parse_webhook(body).type

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            (b'{"type":"x","resource":{"id":"r"},"user":{}}', "user.id"),
            (b'{"type":"x","resource":{"id":"r"},"account":"a1"}', "account"),
            (b'{"type":"x","resource":{"id":"r"},"project":{"id":""}}', "project.id"),
            (b'{"type":"x","resource":{"id":"r"},"workspace":{"id":3}}', "workspace.id"),
            (b'{"type":"x","resource":{"id":"r","type":5}}', "resource.type"),
        ],
        ids=["ref-without-id", "ref-not-object", "ref-empty-id", "ref-id-number", "type-number"],
    )
    def test_what_the_model_refuses_the_check_refuses_alike(self, body: bytes, field: str) -> None:
        error = payload_error(body)
        assert (error.status, error.detail.partition(": ")[0]) == (422, field)


class TestWebhookSample:
    def test_sample_payload_type_and_ids(self) -> None:
        event = parse_webhook(SAMPLE_WEBHOOK)
        assert isinstance(event, WebhookEvent)
        assert event.type == "file.ready"
        assert event.resource_id == "dddddddd-0000-0000-0000-000000000004"
        assert event.resource.type == "file"
        assert event.account_id == "aaaaaaaa-0000-0000-0000-000000000001"
        assert event.workspace_id == "bbbbbbbb-0000-0000-0000-000000000002"
        assert event.project_id == "cccccccc-0000-0000-0000-000000000003"
        assert event.user_id == "eeeeeeee-0000-0000-0000-000000000005"

    def test_timestamp_passed_in_is_exposed(self) -> None:
        assert parse_webhook(SAMPLE_WEBHOOK, timestamp=1_700_000_123).timestamp == 1_700_000_123

    def test_timestamp_defaults_to_none(self) -> None:
        assert parse_webhook(SAMPLE_WEBHOOK).timestamp is None

    def test_event_id_passed_in_is_exposed_and_kept_by_a_copy(self) -> None:
        event = parse_webhook(SAMPLE_WEBHOOK, timestamp=5, event_id="0190-e")
        assert (event.event_id, event.timestamp) == ("0190-e", 5)
        assert (event.model_copy().event_id, event.model_copy().timestamp) == ("0190-e", 5)

    def test_an_event_built_in_code_has_no_id_or_timestamp(self) -> None:
        built = WebhookEvent(type="file.ready", resource={"id": "f-1"})
        assert (built.event_id, built.timestamp) == (None, None)
        assert WebhookEvent.model_construct(type="file.ready").event_id is None

    def test_unknown_fields_are_kept_top_level_and_in_resource(self) -> None:
        payload = json.loads(SAMPLE_WEBHOOK)
        payload["delivery_hint"] = {"attempt": 2}
        payload["resource"]["name"] = "clip.mov"
        event = parse_webhook(json.dumps(payload).encode())
        assert event.model_extra == {"delivery_hint": {"attempt": 2}}
        assert event.resource.model_extra == {"name": "clip.mov"}
        assert event.resource_id == "dddddddd-0000-0000-0000-000000000004"


class TestTolerantShapes:
    def test_non_asset_event_with_only_type_and_resource(self) -> None:
        event = parse_webhook(b'{"type":"project.created","resource":{"id":"p1"}}')
        assert event.type == "project.created"
        assert event.resource_id == "p1"
        assert event.resource.type is None
        assert event.account_id is None
        assert event.workspace_id is None
        assert event.project_id is None
        assert event.user_id is None

    @pytest.mark.parametrize("resource_type", ["comment", "version_stack", "share", ""])
    def test_resource_type_is_free_text(self, resource_type: str) -> None:
        body = json.dumps(
            {"type": "comment.created", "resource": {"id": "c1", "type": resource_type}}
        ).encode()
        assert parse_webhook(body).resource.type == resource_type

    def test_unknown_event_type_is_accepted(self) -> None:
        """The model does not police the catalogue; that is the dispatcher's job."""
        event = parse_webhook(b'{"type":"asset.created","resource":{"id":"a1"}}')
        assert event.type == "asset.created"


class TestNotAJsonObject:
    @pytest.mark.parametrize(
        "body",
        [
            b"not json",
            b"",
            b'{"type": "file.ready",',
            b"\xff\xfe",
            b'{"type":"file.ready","resource":{"id":"\xff"}}',
            b"[" * 100_000,
            b'{"type":"x","resource":{"id":"1"},"deep":' + b"[" * 100_000,
        ],
        ids=[
            "text",
            "empty",
            "truncated",
            "invalid-utf8",
            "invalid-utf8-in-string",
            "deeply-nested-array",
            "deeply-nested-field",
        ],
    )
    def test_unparseable_body_is_400_not_json(self, body: bytes) -> None:
        error = payload_error(body)
        assert error.status == 400
        assert error.reason == "not_json"

    @pytest.mark.parametrize(
        "body",
        [b"[]", b'[{"type":"file.ready","resource":{"id":"1"}}]', b"null", b'"x"', b"42"],
        ids=["empty-array", "array-of-event", "null", "string", "number"],
    )
    def test_json_that_is_not_an_object_is_400_not_object(self, body: bytes) -> None:
        error = payload_error(body)
        assert error.status == 400
        assert error.reason == "not_object"


class TestInvalidEvent:
    @pytest.mark.parametrize(
        ("body", "field", "message"),
        [
            (b'{"resource":{"id":"r1","type":"file"}}', "type", "required"),
            (b'{"type":"","resource":{"id":"r1"}}', "type", "at least 1 character"),
            (b'{"type":"file.ready"}', "resource", "required"),
            (b'{"type":"file.ready","resource":{"type":"file"}}', "resource.id", "required"),
            (b'{"type":"file.ready","resource":{"id":""}}', "resource.id", "at least 1 character"),
            (b'{"type":"file.ready","resource":"r1"}', "resource", "object"),
            (b'{"type":7,"resource":{"id":"r1"}}', "type", "valid string"),
        ],
        ids=[
            "missing-type",
            "empty-type",
            "missing-resource",
            "resource-without-id",
            "resource-empty-id",
            "resource-not-object",
            "type-not-string",
        ],
    )
    def test_wrong_shape_is_422_naming_the_field(
        self, body: bytes, field: str, message: str
    ) -> None:
        error = payload_error(body)
        assert error.status == 422
        assert error.reason == "invalid_event"
        location, _, text = error.detail.partition(": ")
        assert location == field
        assert message in text
        assert str(error) == error.detail

    def test_several_problems_are_all_named(self) -> None:
        error = payload_error(b"{}")
        assert error.status == 422
        assert "type: " in error.detail
        assert "resource: " in error.detail


class TestActionEvent:
    def test_first_click_payload(self) -> None:
        event = parse_action(SAMPLE_ACTION, timestamp=1_700_000_000)
        assert isinstance(event, ActionEvent)
        assert event.type == "acme.transcode"
        assert event.account_id == "aaaaaaaa-0000-0000-0000-000000000001"
        assert event.action_id == "ffffffff-0000-0000-0000-000000000006"
        assert event.interaction_id == "99999999-0000-0000-0000-000000000007"
        assert event.resource_id == "dddddddd-0000-0000-0000-000000000004"
        assert event.resource is not None
        assert event.resource.type == "file"
        assert event.project is not None
        assert event.project.id == "cccccccc-0000-0000-0000-000000000003"
        assert event.user is not None
        assert event.user.id == "eeeeeeee-0000-0000-0000-000000000005"
        assert event.workspace is not None
        assert event.workspace.id == "bbbbbbbb-0000-0000-0000-000000000002"
        assert event.data is None
        assert event.timestamp == 1_700_000_000

    def test_form_submission_with_only_ids_and_data(self) -> None:
        body = (
            b'{"type":"acme.transcode",'
            b'"interaction_id":"99999999-0000-0000-0000-000000000007",'
            b'"action_id":"ffffffff-0000-0000-0000-000000000006",'
            b'"data":{"codec":"prores","notify":true}}'
        )
        event = parse_action(body)
        assert event.type == "acme.transcode"
        assert event.interaction_id == "99999999-0000-0000-0000-000000000007"
        assert event.action_id == "ffffffff-0000-0000-0000-000000000006"
        assert event.data == {"codec": "prores", "notify": True}
        assert event.account_id is None
        assert event.resource is None
        assert event.resource_id is None

    @pytest.mark.parametrize("missing", ["type", "action_id", "interaction_id"])
    def test_action_without_identifying_field_is_422(self, missing: str) -> None:
        payload = json.loads(SAMPLE_ACTION)
        del payload[missing]
        with pytest.raises(PayloadError) as info:
            parse_action(json.dumps(payload).encode())
        assert info.value.status == 422
        assert info.value.detail.startswith(f"{missing}: ")

    def test_action_body_that_is_an_array_is_400(self) -> None:
        with pytest.raises(PayloadError) as info:
            parse_action(b"[]")
        assert (info.value.status, info.value.reason) == (400, "not_object")


class TestEventCatalogue:
    def test_closest_event_type_fixes_a_typo(self) -> None:
        assert closest_event_type("file.redy") == "file.ready"

    def test_closest_event_type_gives_none_for_nothing_close(self) -> None:
        assert closest_event_type("zzzzzzzzzzzzzz") is None

    def test_thirty_unique_event_types(self) -> None:
        assert len(EVENT_TYPES) == 30
        assert len(set(EVENT_TYPES)) == 30

    def test_catalogue_matches_the_platform_reference(self) -> None:
        """frameio-platform.md §2, table "Subscribable V4 events"."""
        documented = {
            *("file.created", "file.ready", "file.updated", "file.deleted"),
            *("file.upload.completed", "file.versioned", "file.copied"),
            *("folder.created", "folder.updated", "folder.deleted", "folder.copied"),
            *("comment.created", "comment.updated", "comment.deleted"),
            *("comment.completed", "comment.uncompleted"),
            *("project.created", "project.updated", "project.deleted"),
            "metadata.value.updated",
            *("customfield.created", "customfield.updated", "customfield.deleted"),
            *("collection.created", "collection.updated", "collection.deleted"),
            *("share.created", "share.updated", "share.deleted", "share.viewed"),
        }
        assert set(EVENT_TYPES) == documented
