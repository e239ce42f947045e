"""Routing: which handlers a delivery reaches, given the source it arrived on, its type,
and the secret that verified it; which handler answers a custom action."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from frameiod.plugins.handlers import ActionHandler, WebhookHandler

__all__ = ["Routes"]


class Routes:
    """Which handlers get which delivery: the one place the routing rules live."""

    def __init__(
        self, handlers: Iterable[WebhookHandler], actions: Iterable[ActionHandler] = ()
    ) -> None:
        self.handlers = tuple(handlers)
        self.actions = {(action.source, action.action): action for action in actions}

    def _all(self) -> list[WebhookHandler | ActionHandler]:
        return [*self.handlers, *self.actions.values()]

    def sources(self) -> set[str]:
        """Every source some handler listens on."""
        return {handler.source for handler in self._all()}

    def handler_secrets(self, source: str) -> list[str]:
        """Secrets declared on handlers of ``source``, which that source must accept too."""
        secrets: list[str] = []
        for handler in self._all():
            if handler.source == source:
                secrets.extend(s for s in handler.secrets if s not in secrets)
        return secrets

    def action(self, source: str, action: str) -> ActionHandler | None:
        """The handler of custom action ``action`` on ``source``, if one is loaded."""
        return self.actions.get((source, action))

    def merged_secrets(self, configured: Mapping[str, list[str]]) -> dict[str, list[str]]:
        """Per source: configured secrets first, then handler-declared ones (deduplicated).

        A source that only handlers declare (with secrets) becomes a source too.
        """
        merged = {name: list(secrets) for name, secrets in configured.items()}
        for source in sorted(self.sources()):
            extra = self.handler_secrets(source)
            if extra:
                have = merged.setdefault(source, [])
                have.extend(s for s in extra if s not in have)
        return merged

    def for_delivery(self, source: str, event_type: str, verified_by: str) -> list[WebhookHandler]:
        """Handlers that get an event of ``event_type`` on ``source`` verified by the secret
        whose `secret_id` is ``verified_by``."""
        return [
            handler
            for handler in self.handlers
            if handler.source == source
            and handler.wants(event_type)
            and (not handler.secrets or verified_by in handler.secret_ids)
        ]
