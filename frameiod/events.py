"""The payloads Frame.io sends: webhook events and custom-action requests.

Models are tolerant where Frame.io is undocumented (``resource.type`` is a free string,
sub-objects of non-asset events may be missing, unknown fields are kept) and strict only
about what identifies a request: a webhook needs ``type`` and ``resource.id``.
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any, NotRequired, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError
from typing_extensions import TypedDict

__all__ = [
    "EVENT_TYPES",
    "ActionEvent",
    "PayloadError",
    "Ref",
    "Resource",
    "WebhookEvent",
    "check_webhook",
    "closest_event_type",
    "example_action",
    "example_payload",
    "parse_action",
    "parse_webhook",
    "webhook_payload",
]

# The 30 V4 event types a webhook can subscribe to (frameio SDK, webhooks.create docstring).
EVENT_TYPES: tuple[str, ...] = (
    "file.created", "file.ready", "file.updated", "file.deleted",
    "file.upload.completed", "file.versioned", "file.copied",
    "folder.created", "folder.updated", "folder.deleted", "folder.copied",
    "comment.created", "comment.updated", "comment.deleted",
    "comment.completed", "comment.uncompleted",
    "project.created", "project.updated", "project.deleted",
    "metadata.value.updated",
    "customfield.created", "customfield.updated", "customfield.deleted",
    "collection.created", "collection.updated", "collection.deleted",
    "share.created", "share.updated", "share.deleted", "share.viewed",
)  # fmt: skip


# Frame.io does not document resource.type for non-asset events; these are best guesses
# that keep example payloads realistic for handlers keyed on the type.
_RESOURCE_TYPES = {"metadata": "file"}


def example_payload(event_type: str, resource_id: str | None = None) -> dict[str, Any]:
    """A webhook body shaped like Frame.io's V4 deliveries, with fresh random ids."""
    group = event_type.split(".", 1)[0]
    return {
        "type": event_type,
        "account": {"id": str(uuid.uuid4())},
        "workspace": {"id": str(uuid.uuid4())},
        "project": {"id": str(uuid.uuid4())},
        "resource": {
            "id": resource_id or str(uuid.uuid4()),
            "type": _RESOURCE_TYPES.get(group, group),
        },
        "user": {"id": str(uuid.uuid4())},
    }


def example_action(
    action: str, resource_id: str | None = None, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A custom-action request body as Frame.io sends it (``data`` for a form submission)."""
    payload: dict[str, Any] = {
        "account_id": str(uuid.uuid4()),
        "action_id": str(uuid.uuid4()),
        "interaction_id": str(uuid.uuid4()),
        "type": action,
        "project": {"id": str(uuid.uuid4())},
        "resource": {"id": resource_id or str(uuid.uuid4()), "type": "file"},
        "user": {"id": str(uuid.uuid4())},
        "workspace": {"id": str(uuid.uuid4())},
    }
    if data is not None:
        payload["data"] = data
    return payload


def closest_event_type(name: str) -> str | None:
    """The catalogue entry nearest to a misspelt event type, or None if nothing is close."""
    matches = difflib.get_close_matches(name, EVENT_TYPES, n=1, cutoff=0.6)
    return matches[0] if matches else None


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Ref(_Payload):
    """A reference to a Frame.io object: ``{"id": ...}`` plus anything Frame.io adds."""

    id: str = Field(min_length=1)


class Resource(Ref):
    """The object an event is about; ``type`` is free text (``file``, ``folder``, ...)."""

    type: str | None = None


class WebhookEvent(_Payload):
    """A Frame.io webhook delivery, as handlers receive it."""

    type: str = Field(min_length=1)
    resource: Resource
    account: Ref | None = None
    workspace: Ref | None = None
    project: Ref | None = None
    user: Ref | None = None

    _timestamp: int | None = PrivateAttr(default=None)
    _event_id: str | None = PrivateAttr(default=None)

    # Read from `__pydantic_private__` (BaseModel's documented store of private values):
    # ``self._event_id`` goes through pydantic's __getattr__, which raises and catches an
    # AttributeError on every read, and handlers and tracing read these on every call.
    @property
    def timestamp(self) -> int | None:
        """The ``X-Frameio-Request-Timestamp`` the delivery was signed with (Unix seconds)."""
        return self.__pydantic_private__["_timestamp"]  # type: ignore[index]

    @property
    def event_id(self) -> str | None:
        """frameiod's id for this delivery (the one in the 202 answer and every log line)."""
        return self.__pydantic_private__["_event_id"]  # type: ignore[index]

    @property
    def resource_id(self) -> str:
        """ID of the object the event is about."""
        return self.resource.id

    @property
    def account_id(self) -> str | None:
        """ID of the account, or None if the payload has no ``account``."""
        return self.account.id if self.account else None

    @property
    def workspace_id(self) -> str | None:
        """ID of the workspace, or None if the payload has no ``workspace``."""
        return self.workspace.id if self.workspace else None

    @property
    def project_id(self) -> str | None:
        """ID of the project, or None if the payload has no ``project``."""
        return self.project.id if self.project else None

    @property
    def user_id(self) -> str | None:
        """ID of the user who triggered the event, or None if absent."""
        return self.user.id if self.user else None


class ActionEvent(_Payload):
    """A custom-action request: the first click (no ``data``) or a form submission."""

    type: str = Field(min_length=1)
    action_id: str = Field(min_length=1)
    interaction_id: str = Field(min_length=1)
    account_id: str | None = None
    resource: Resource | None = None
    workspace: Ref | None = None
    project: Ref | None = None
    user: Ref | None = None
    data: dict[str, Any] | None = None

    _timestamp: int | None = PrivateAttr(default=None)

    @property
    def timestamp(self) -> int | None:
        """The ``X-Frameio-Request-Timestamp`` the request was signed with (Unix seconds)."""
        return self.__pydantic_private__["_timestamp"]  # type: ignore[index]  # see WebhookEvent

    @property
    def resource_id(self) -> str | None:
        """ID of the file, folder or version stack the action was run on."""
        return self.resource.id if self.resource else None


class PayloadError(Exception):
    """A body that is not a usable event: ``status`` 400 (not a JSON object) or 422 (not an
    event of the expected shape); ``detail`` says why."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


ModelT = TypeVar("ModelT", bound="_Payload")


def _summarise(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg'].lower()}")
    return "; ".join(parts)


T = TypeVar("T")


def _validated(validate: Callable[[bytes], T], body: bytes) -> T:
    try:
        # One pass through pydantic-core's JSON parser, which also bounds nesting depth.
        return validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise PayloadError(400, "not_json", f"body is not valid JSON: {first['msg']}") from None
        if first["type"] in ("model_type", "dict_type") and not first["loc"]:
            raise PayloadError(400, "not_object", "body is JSON but not an object") from None
        raise PayloadError(422, "invalid_event", _summarise(exc)) from None


def _parse(model: type[ModelT], body: bytes, timestamp: int | None) -> ModelT:
    event = _validated(model.model_validate_json, body)
    event._timestamp = timestamp
    return event


# What `WebhookEvent` demands of a body, as plain dicts. The server checks every webhook
# with this before its 202: building the six models costs twice as much, and only the
# handlers (and observers) need them. tests/test_events.py holds the two to the same
# answers; change both together.
class _RefShape(TypedDict):
    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    id: Annotated[str, Field(min_length=1)]


class _ResourceShape(_RefShape):
    type: NotRequired[str | None]


class _WebhookShape(TypedDict):
    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    type: Annotated[str, Field(min_length=1)]
    resource: _ResourceShape
    account: NotRequired[_RefShape | None]
    workspace: NotRequired[_RefShape | None]
    project: NotRequired[_RefShape | None]
    user: NotRequired[_RefShape | None]


_WEBHOOK_SHAPE = TypeAdapter(_WebhookShape)


def check_webhook(body: bytes) -> str:
    """Validate a raw webhook body exactly as `parse_webhook` would, without building the
    event; return its type, or raise `PayloadError` (400 or 422)."""
    return _validated(_WEBHOOK_SHAPE.validate_json, body)["type"]


def webhook_payload(body: bytes) -> Mapping[str, Any]:
    """Validate a raw webhook body as `check_webhook` does; return it as plain data
    (``type``, ``resource``, ``account``, ... as sent), or raise `PayloadError` (400 or 422)."""
    return _validated(_WEBHOOK_SHAPE.validate_json, body)


def parse_webhook(
    body: bytes, timestamp: int | None = None, event_id: str | None = None
) -> WebhookEvent:
    """Parse a raw webhook body, or raise `PayloadError` (400 or 422)."""
    event = _parse(WebhookEvent, body, timestamp)
    event._event_id = event_id
    return event


def parse_action(body: bytes, timestamp: int | None = None) -> ActionEvent:
    """Parse a raw custom-action body, or raise `PayloadError` (400 or 422)."""
    return _parse(ActionEvent, body, timestamp)
