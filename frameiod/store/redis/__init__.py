"""The spool on Redis Streams: several receivers share one queue, and any of them may die.

Accepting an event is one Lua script: the duplicate checks, then ``XADD`` to the source's
stream and the event's hash with one pending delivery per handler. The 202 goes out only
after Redis answered (with ``appendfsync always``, after it reached the disk).

Every receiver reads the streams as a consumer of one group and moves what it reads into
the per-handler sorted sets of due deliveries (``P:due:<handler>``), then acknowledges the
entry. Deliveries are claimed from those sets by whichever receiver has a free worker: the
claim raises the attempt count, marks the delivery running and moves its score to the end
of a lease (the handler's timeout plus `LEASE_GRACE`). A receiver that dies mid-call
leaves the lease to expire, and the delivery becomes due again for the others. An entry
read but not yet moved by a receiver that died is taken over with ``XAUTOCLAIM`` once it
has been idle longer than the longest lease. A failed call goes back into the sorted set at
its retry time, a dead one also into the ``P:dead`` stream; each handler's state is its
own, so one that succeeded never runs again because a sibling failed.

Stream entries are deleted only with their event, when all its deliveries are done and
``[spool] keep_done`` has passed: an entry still pending is never trimmed.
See `frameiod.store.redis_keys` for every key.

The modules: `spool` (the `RedisSpool` API), `scripts` (its Lua), `streams` (a receiver's
reading of the streams), `connection` (opening the client, for the daemon or an operator),
`actions` (the operator's queries and their Lua).
"""

from __future__ import annotations

from frameiod.store.redis.spool import (
    DEFAULT_COALESCE_SECONDS,
    DEFAULT_HANDLER_TIMEOUT,
    LEASE_GRACE,
    RedisSpool,
)

__all__ = ["DEFAULT_COALESCE_SECONDS", "DEFAULT_HANDLER_TIMEOUT", "LEASE_GRACE", "RedisSpool"]
