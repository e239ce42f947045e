"""What a custom-action handler answers: a `Message` that ends the run, or a `Form`.

Serialised exactly to the wire shapes of Frame.io's custom-actions guide. Every field has
``type``, ``label``, ``name`` (its key in the submitted ``data``) and an optional
``value`` (the pre-filled default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CheckboxField",
    "Field",
    "Form",
    "LinkField",
    "Message",
    "SelectField",
    "SelectOption",
    "TextField",
    "TextareaField",
]


@dataclass(frozen=True)
class Message:
    """A message shown to the user; it ends the interaction."""

    title: str
    description: str = ""

    def to_wire(self) -> dict[str, Any]:
        """The JSON body Frame.io expects."""
        return {"title": self.title, "description": self.description}


@dataclass(frozen=True)
class _Field:
    label: str
    name: str
    value: str | None = None

    type = ""

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.type, "label": self.label, "name": self.name}
        if self.value is not None:
            wire["value"] = self.value
        return wire


@dataclass(frozen=True)
class TextField(_Field):
    """A one-line text input."""

    type = "text"


@dataclass(frozen=True)
class TextareaField(_Field):
    """A multi-line text input."""

    type = "textarea"


@dataclass(frozen=True)
class LinkField(_Field):
    """A URL shown with one-click copy (``value`` is the URL)."""

    type = "link"


@dataclass(frozen=True)
class SelectOption:
    """One choice of a `SelectField`: ``name`` is shown, ``value`` is sent back."""

    name: str
    value: str


@dataclass(frozen=True)
class SelectField(_Field):
    """A drop-down list of `SelectOption` choices."""

    options: Sequence[SelectOption] = ()

    type = "select"

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError(f"SelectField {self.name!r} needs at least one option")

    def to_wire(self) -> dict[str, Any]:
        """The field, with its options."""
        return {
            **super().to_wire(),
            "options": [{"name": o.name, "value": o.value} for o in self.options],
        }


@dataclass(frozen=True)
class CheckboxField:
    """A checkbox.

    The sources disagree on its wire shape: Frame.io's guide shows ``"type": "boolean"``
    with the *string* ``"true"``/``"false"`` as value; frameio-kit sends ``"checkbox"`` with
    a JSON boolean. We follow Frame.io's own documentation.
    """

    label: str
    name: str
    value: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The field, as Frame.io documents it."""
        return {
            "type": "boolean",
            "label": self.label,
            "name": self.name,
            "value": "true" if self.value else "false",
        }


Field = TextField | TextareaField | SelectField | CheckboxField | LinkField


@dataclass(frozen=True)
class Form:
    """A form; its submission comes back as a new request with ``data``."""

    title: str
    description: str = ""
    fields: Sequence[Field] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError("a Form needs at least one field; answer with a Message instead")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"a Form's field names must be unique, got {names}")

    def to_wire(self) -> dict[str, Any]:
        """The JSON body Frame.io expects."""
        return {
            "title": self.title,
            "description": self.description,
            "fields": [f.to_wire() for f in self.fields],
        }
