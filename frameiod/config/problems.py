"""What is wrong with a config file, said the operator's way: one
``<file>: <key.path>: <what was expected>, got <value>`` line per mistake, all at once,
in TOML's words, never showing a secret."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from frameiod.config.models import Config
from frameiod.config.secret_refs import type_name

__all__ = ["ConfigError", "validation_problems"]


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _key_path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]":
            text += f".{part}" if text else str(part)
    return text


def _known_keys(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Keys allowed in the table that holds ``loc``, for a did-you-mean hint."""
    node: Any = root
    for part in loc[:-1]:
        if get_origin(node) is dict:
            node = get_args(node)[1]  # ``part`` is a name the user chose, e.g. a source
        elif isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            node = node.model_fields[part].annotation
        else:
            return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


_TOML_WORDS = {
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "dict_type": "expected a table",
    "list_type": "expected an array",
}


def _describe(root: type[BaseModel], error: Mapping[str, Any]) -> str:
    kind = error["type"]
    loc = tuple(error["loc"])
    if root is Config and len(loc) == 2 and loc[0] == "plugins" and kind == "dict_type":
        # Any [plugins] key but `disable` must be a plugin's table: most likely a typo.
        hint = difflib.get_close_matches(str(loc[-1]), _known_keys(root, loc), n=1)
        return (
            "unknown key"
            + (f' (did you mean "{hint[0]}"?)' if hint else "")
            + f"; a plugin's settings go in a [plugins.{loc[1]}] table"
        )
    if kind == "extra_forbidden":
        hint = difflib.get_close_matches(str(loc[-1]), _known_keys(root, loc), n=1)
        return "unknown key" + (f' (did you mean "{hint[0]}"?)' if hint else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "too_short" and loc == ("sources",):
        return "at least one [sources.NAME] table is required"
    if kind == "too_short" and loc[-1:] == ("secrets",):
        return "at least one secret is required"
    if kind in ("duration", "secret", "source_name", "choice"):
        return error["msg"]
    # pydantic's words are Python's ("dictionary or instance of SourceConfig"); use TOML's.
    message = _TOML_WORDS.get(kind) or error["msg"][0].lower() + error["msg"][1:]
    value = error.get("input")
    if isinstance(value, str | int | float | bool):
        # `secrets = "hunter2"` instead of a list, or `[sources] a = "hunter2"`: say what
        # it is, never what it says.
        secret = loc[:1] == ("sources",) and (len(loc) < 3 or loc[2] == "secrets")
        message += f", got {type_name(value) if secret else json.dumps(value)}"
    return message


def validation_problems(
    path: Path, model: type[BaseModel], error: ValidationError, prefix: tuple[str, ...] = ()
) -> list[str]:
    """One ``<file>: <key.path>: <message>`` line per error; ``prefix`` is where ``model``'s
    table sits in the file (e.g. ``("plugins", "event_log")`` for a plugin's own model)."""
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        key = _key_path(prefix + loc) or "(top level)"
        problems.append(f"{path}: {key}: {_describe(model, item)}")
    return problems
