"""A stable, non-reversible tag for a signing secret.

The spool records which secret verified a delivery, and routing compares it with the
secrets a handler declared, by this tag: neither ever carries the secret itself.
"""

from __future__ import annotations

import hashlib

__all__ = ["secret_id"]


def secret_id(secret: str) -> str:
    """A stable, non-reversible tag for ``secret``, so routing never carries the secret itself."""
    return hashlib.sha256(b"frameiod-secret:" + secret.encode("utf-8")).hexdigest()[:16]
