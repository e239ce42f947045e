"""What ``frameiod webhooks`` and ``frameiod actions`` print besides their one-line
results: the ``[sources.NAME]`` table that accepts a new secret, how to apply it, how to
retire a deleted one's, and listings as JSON."""

from __future__ import annotations

import json
from typing import Any

from frameiod.cli.frameio_calls import Context, Kind
from frameiod.cli.new_secrets import secret_of
from frameiod.config import DEV_SECRET

__all__ = ["print_apply", "print_json", "print_retire", "print_table"]


def _secret_lines(ctx: Context, source: str, notes: dict[str, str]) -> list[str]:
    """Each configured secret of ``source`` as an array line (literals cannot be shown)."""
    configured = ctx.config.sources.get(source)
    lines = []
    for secret in configured.secrets if configured else []:
        if secret.reference == "<literal>":
            if secret.reveal() == DEV_SECRET:
                lines.append("    # (the development secret goes: Frame.io never signs with it)")
            else:
                lines.append("    # the secret written literally in the config now: keep it here")
            continue
        note = notes.get(secret.reference, "")
        lines.append(f"    {json.dumps(secret.reference)},{note and f'  # {note}'}")
    return lines


def print_table(
    ctx: Context, source: str, new: str, new_note: str = "", notes: dict[str, str] | None = None
) -> None:
    """The ``[sources.<source>]`` table with its secrets and ``new`` added; ``notes``
    comment configured references."""
    path = ctx.config.path
    if source in ctx.config.sources:
        print(f"\nIn {path}, set the secrets of [sources.{source}] (its other keys stay):\n")
    else:
        print(f"\nAdd this table to {path}:\n")
    print(f"[sources.{source}]")
    print("secrets = [")
    for line in _secret_lines(ctx, source, notes or {}):
        print(line)
    # The default file name already says whose secret it is.
    note = new_note if new_note.rpartition(" ")[2] not in new else ""
    print(f"    {json.dumps(new)},{note and f'  # {note}'}")
    print("]\n")


def print_retire(ctx: Context, kind: Kind, identifier: str) -> None:
    """How to drop the secret of a deleted webhook or action from the config."""
    found = secret_of(ctx, kind, identifier)
    if found is None:
        print(
            f"If its secret is in a [sources.NAME] table of {ctx.config.path}, remove it there, "
            "then: systemctl reload frameiod"
        )
        return
    source, reference = found
    file = ctx.config.resolve_path(reference.partition(":")[2])
    print(
        f"Remove {json.dumps(reference)} from the secrets of [sources.{source}] in "
        f"{ctx.config.path}, then: systemctl reload frameiod; then delete {file}"
    )


def print_apply() -> None:
    """How to make the daemon read the changed config."""
    print(
        "Then apply it: systemctl reload frameiod (without systemd: send the daemon SIGHUP, "
        "or restart it)."
    )


def print_json(items: list[Any]) -> None:
    """SDK models as a JSON array (``list --json``)."""
    print(json.dumps([item.model_dump(mode="json") for item in items], indent=2))
