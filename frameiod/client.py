"""The Frame.io API client handlers use: the official ``frameio`` SDK's ``AsyncFrameio``.

frameiod owns the ``httpx.AsyncClient`` underneath (the SDK has no ``close()``) and closes
it on shutdown. The SDK's own retries are off by default (``max_retries = 0``): it would
retry a POST after a 5xx and could create a comment twice, while frameiod already retries
the whole handler. The SDK is imported only when a client is built: it is slow to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from frameiod.config import FrameioConfig

if TYPE_CHECKING:
    from frameio import AsyncFrameio

__all__ = ["FrameioClient"]


class FrameioClient:
    """One ``AsyncFrameio`` and the HTTP connections it uses; `close` when done."""

    def __init__(self, config: FrameioConfig, token: str | None = None) -> None:
        """Build a client from ``[frameio]``; ``token`` (from ``App(token=...)``) overrides
        the configured credentials."""
        from frameio import AsyncFrameio

        self._http = httpx.AsyncClient(timeout=config.timeout)
        async_token = None
        if token is None and config.oauth is not None:
            from frameio.auth import AsyncServerToServerAuth

            auth = AsyncServerToServerAuth(
                client_id=config.oauth.client_id,
                client_secret=config.oauth.client_secret.reveal(),
                ims_base_url=config.oauth.ims_base_url,
                scopes=config.oauth.scopes,
                http_client=self._http,
            )
            # async_token, not token: as token= the coroutine function's result (a
            # coroutine object) would be sent as the bearer.
            async_token = auth.get_token
        elif token is None and config.token is not None:
            token = config.token.reveal()
        if token is None and async_token is None:
            raise ValueError("no Frame.io credentials: set [frameio] token or [frameio.oauth]")
        self.api: AsyncFrameio = AsyncFrameio(
            base_url=config.base_url.rstrip("/"),
            token=token or "unused: async_token is used instead",
            async_token=async_token,
            httpx_client=self._http,
            timeout=config.timeout,
        )
        # The SDK takes max_retries only per call (request_options); its HTTP layer reads
        # this default for every call that does not say otherwise.
        self.api._client_wrapper.httpx_client.base_max_retries = config.max_retries

    async def close(self) -> None:
        """Close the HTTP connections (the SDK cannot)."""
        await self._http.aclose()
