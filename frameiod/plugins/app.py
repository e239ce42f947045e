"""`App`: the decorator API plugin authors know from frameio-kit, as a frameiod plugin::

    app = App()

    @app.on_webhook("file.ready")
    async def on_ready(event: WebhookEvent) -> None: ...

An `App` instance is what a plugin's entry point names; frameiod collects its handlers
through the ``frameiod_webhook_handlers`` hook like any other plugin's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from frameiod.client import FrameioClient
from frameiod.plugins.handlers import (
    DEFAULT_SOURCE,
    ActionHandler,
    HandlerFunc,
    PluginContext,
    WebhookHandler,
)
from frameiod.plugins.hookspecs import hookimpl
from frameiod.plugins.middleware import MiddlewareChain
from frameiod.plugins.runner import maybe_await

__all__ = ["App", "NoClientError"]

F = TypeVar("F", bound=HandlerFunc)
LifecycleFunc = Callable[[PluginContext], Any]
L = TypeVar("L", bound=LifecycleFunc)
A = TypeVar("A", bound=Callable[..., Any])


class NoClientError(RuntimeError):
    """``app.client`` was used but no Frame.io API client is configured."""


def _as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


class App:
    """A set of handlers registered with decorators; register it as a frameiod plugin.

    ``config_model`` is a pydantic model for the plugin's ``[plugins.<name>]`` table;
    the validated table is ``app.config``. ``token`` gives this App its own Frame.io API
    client; without it ``app.client`` is the daemon's shared one (``[frameio]``).
    ``middleware`` wraps every call of this App's handlers (see `frameiod.Middleware`),
    the first one outermost.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        config_model: type[BaseModel] | None = None,
        middleware: Sequence[Any] = (),
    ) -> None:
        self._handlers: list[WebhookHandler] = []
        self._actions: list[ActionHandler] = []
        self._token = token
        self._own_client: FrameioClient | None = None
        self._config_model = config_model
        self._on_startup: list[LifecycleFunc] = []
        self._on_shutdown: list[LifecycleFunc] = []
        self._context: PluginContext | None = None
        if middleware:
            # Hook wrappers only for an App that has middleware: without them, handler
            # calls skip the hooks around each call altogether.
            chain = MiddlewareChain(middleware, self._handler_funcs)
            self.frameiod_call_handler = chain.frameiod_call_handler
            self.frameiod_call_action = chain.frameiod_call_action

    def _handler_funcs(self) -> set[int]:
        return {id(h.func) for h in self._handlers} | {id(a.func) for a in self._actions}

    def on_webhook(
        self,
        event_type: str | Sequence[str] | None = None,
        *,
        secret: str | Sequence[str] | None = None,
        source: str = DEFAULT_SOURCE,
        timeout: float | None = None,
        max_attempts: int | None = None,
        concurrency: int | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function for ``event_type``: a name, ``"group.*"``, ``"*"``,
        or a list of those.

        ``secret`` restricts the handler to deliveries signed with that secret (or any of a
        list), which its ``source`` then accepts too. ``timeout`` (seconds),
        ``max_attempts`` and ``concurrency`` override the daemon's defaults for this handler.
        Several handlers may subscribe to the same type; every one runs.
        """
        types = _as_tuple(event_type)
        if not types:
            raise TypeError("on_webhook() needs an event type, e.g. @app.on_webhook('file.ready')")
        secrets = _as_tuple(secret)
        if any(not s for s in secrets):
            raise ValueError("on_webhook(secret=...) got an empty secret")

        def register(func: F) -> F:
            self._handlers.append(
                WebhookHandler(
                    func=func,
                    event_types=types,
                    name=name or "",
                    source=source,
                    secrets=secrets,
                    timeout=timeout,
                    max_attempts=max_attempts,
                    concurrency=concurrency,
                )
            )
            return func

        return register

    def on_action(
        self,
        action: str,
        *,
        name: str = "",
        description: str = "",
        resource_types: Sequence[str] = (),
        secret: str | Sequence[str] | None = None,
        source: str = DEFAULT_SOURCE,
    ) -> Callable[[A], A]:
        """Register the decorated function as the handler of custom action ``action`` (the
        event key configured in Frame.io, e.g. ``"acme.transcode"``).

        The function gets an `ActionEvent` (``data`` is None on the first click and holds
        the form's values on a submission) and returns a `Message`, a `Form`, or None.
        ``resource_types`` (e.g. ``["file"]``) limits what it runs on; ``secret`` is the
        action's signing secret, which its ``source`` then accepts.
        """
        secrets = _as_tuple(secret)
        if any(not s for s in secrets):
            raise ValueError("on_action(secret=...) got an empty secret")

        def register(func: A) -> A:
            self._actions.append(
                ActionHandler(
                    func=func,
                    action=action,
                    name=name,
                    description=description,
                    resource_types=tuple(resource_types),
                    source=source,
                    secrets=secrets,
                )
            )
            return func

        return register

    def on_startup(self, func: L) -> L:
        """Run ``func(context)`` (sync or async) when the daemon starts, before any event."""
        self._on_startup.append(func)
        return func

    def on_shutdown(self, func: L) -> L:
        """Run ``func(context)`` (sync or async) when the daemon stops, after the last event."""
        self._on_shutdown.append(func)
        return func

    @property
    def config(self) -> Any:
        """This plugin's ``[plugins.<name>]`` table, validated by ``config_model``."""
        if self._context is None:
            raise RuntimeError("app.config is available once the daemon has started the plugin")
        return self._context.plugin_config

    @property
    def log(self) -> Any:
        """A structlog logger bound with this plugin's name (once started)."""
        if self._context is None:
            raise RuntimeError("app.log is available once the daemon has started the plugin")
        return self._context.log

    @property
    def handlers(self) -> tuple[WebhookHandler, ...]:
        """The webhook handlers registered so far."""
        return tuple(self._handlers)

    @property
    def client(self) -> Any:
        """The Frame.io API client (the ``frameio`` SDK's ``AsyncFrameio``): this App's own
        when it was given ``token=``, else the daemon's shared one."""
        if self._own_client is not None:
            return self._own_client.api
        client = self._context.client if self._context else None
        if client is None:
            raise NoClientError(
                "no Frame.io API client is configured: set [frameio] token in config.toml "
                "(or [frameio.oauth]), or give App(token=...)"
            )
        return client

    @hookimpl
    def frameiod_webhook_handlers(self) -> list[WebhookHandler]:
        """Offer every handler registered with `on_webhook`."""
        return list(self._handlers)

    @hookimpl
    def frameiod_action_handlers(self) -> list[ActionHandler]:
        """Offer every handler registered with `on_action`."""
        return list(self._actions)

    @hookimpl
    def frameiod_plugin_config_model(self) -> type[BaseModel] | None:
        """The model given as ``App(config_model=...)``."""
        return self._config_model

    @hookimpl
    async def frameiod_startup(self, context: PluginContext) -> None:
        """Keep the start-up context (for `client` and `config`), then run `on_startup`s."""
        self._context = context
        if self._token is not None:
            self._own_client = FrameioClient(context.config.frameio, token=self._token)
        for func in self._on_startup:
            await maybe_await(func(context))

    @hookimpl
    async def frameiod_shutdown(self, context: PluginContext) -> None:
        """Run the `on_shutdown` functions, last registered first; close an own client."""
        try:
            for func in reversed(self._on_shutdown):
                await maybe_await(func(context))
        finally:
            if self._own_client is not None:
                await self._own_client.close()
                self._own_client = None
