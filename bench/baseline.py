"""The physical limit for this stack: aiohttp that only verifies the HMAC, parses the JSON
and answers 202. Nothing durable, no logs. Usage: baseline.py PORT SECRET"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys

from aiohttp import web


def main() -> None:
    """Serve POST /webhooks/{source} on 127.0.0.1:PORT until killed."""
    port, secret = int(sys.argv[1]), sys.argv[2].encode()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers["X-Frameio-Request-Timestamp"]
        message = b"v0:" + timestamp.encode() + b":" + body
        expected = "v0=" + hmac.new(secret, message, hashlib.sha256).hexdigest()
        given = request.headers["X-Frameio-Signature"]
        if not hmac.compare_digest(expected.encode(), given.encode()):
            return web.json_response({"error": "unauthorized"}, status=401)
        json.loads(body)
        return web.json_response({"status": "accepted"}, status=202)

    app = web.Application()
    app.router.add_post("/webhooks/{source}", receive)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
