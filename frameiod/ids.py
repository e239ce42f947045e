"""Event ids: UUIDv7 strings, so ids sort by the time frameiod accepted the event."""

from __future__ import annotations

import random
import threading
import time

__all__ = ["new_event_id"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_event_id() -> str:
    """Return a new UUIDv7 (RFC 9562) string; ids made later in this process sort higher.

    Within one millisecond the 12-bit ``rand_a`` field is a counter (RFC 9562 method 1),
    so ids stay ordered even when many events arrive in the same millisecond.
    """
    global _last_ms, _counter  # noqa: PLW0603 - process-wide monotonic state by design
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
            now_ms = _last_ms
        else:
            _last_ms, _counter = now_ms, 0
        counter = _counter
    # Not os.urandom: its syscall drops the GIL, and under load getting it back from the
    # spool's writer thread cost more than everything else here. Ids need no secrecy.
    rand_b = random.getrandbits(62)
    value = (now_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    # The canonical 8-4-4-4-12 form, as str(uuid.UUID(int=value)) gives it, without
    # building and validating a UUID object (twice the cost, on every request).
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
