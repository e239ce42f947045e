"""frameiod-comment-on-ready: comment on a Frame.io file once it is ready for review.

    [plugins.comment_on_ready]
    text = "Ready for review: transcoding finished."

Each ``file.ready`` event becomes one comment with ``text`` on that file, posted through
frameiod's Frame.io client (``app.client``). A file deleted meanwhile (404) is logged and
skipped; any other API error propagates, so frameiod retries the handler. The custom
action ``comment_on_ready.comment`` asks for a text in a form and posts it on the file.

The SDK types are imported with this module, not lazily: the plugin exists to call the
API, and a disabled plugin is never imported.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Annotated

from frameio import CreateCommentParamsData
from frameio.errors import NotFoundError
from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

from frameiod import (
    ActionEvent,
    App,
    Form,
    Message,
    NoClientError,
    PluginContext,
    TextareaField,
    WebhookEvent,
)

__all__ = [
    "ACTION",
    "DEFAULT_TEXT",
    "CommentOnReadyConfig",
    "app",
    "comment_form",
]

ACTION = "comment_on_ready.comment"
"""The custom action's event key, as configured in Frame.io."""
DEFAULT_TEXT = "Ready for review: transcoding finished."

# Submissions remembered for de-duplication (see `_post_once`); older ones are forgotten.
_REMEMBERED = 1024


def _not_blank(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("blank", "the comment text must not be empty")
    return text


class CommentOnReadyConfig(BaseModel):
    """``[plugins.comment_on_ready]``: what the ``file.ready`` comment says."""

    # strict, like frameiod's own tables: `text = 5` is a mistake, not "5".
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    text: Annotated[str, AfterValidator(_not_blank)] = DEFAULT_TEXT


app = App(config_model=CommentOnReadyConfig)


class _State:
    # interaction id → the post made for that submission (in flight or succeeded).
    posts: OrderedDict[str, asyncio.Task[str | None]]

    def __init__(self) -> None:
        self.posts = OrderedDict()


_state = _State()


@app.on_startup
def require_client(context: PluginContext) -> None:
    """Fail the plugin at start-up, not on every event, when no API client is configured."""
    if context.client is None:
        raise NoClientError(
            "the comment_on_ready plugin posts through the Frame.io API: "
            "set [frameio] token (or [frameio.oauth]) in config.toml"
        )


@app.on_shutdown
def forget_posts(context: PluginContext) -> None:
    """Drop the de-duplication memory; a restarted daemon starts afresh."""
    _state.posts.clear()


async def _create(account_id: str, file_id: str, text: str) -> str | None:
    """POST one comment; return its id. Nothing after the POST may raise: a raise would
    make frameiod retry the handler and post the comment twice."""
    response = await app.client.comments.create(
        account_id=account_id, file_id=file_id, data=CreateCommentParamsData(text=text)
    )
    return getattr(getattr(response, "data", None), "id", None)


# --- file.ready ------------------------------------------------------------------------


@app.on_webhook("file.ready")
async def comment_when_ready(event: WebhookEvent) -> None:
    """Post the configured text on the file that became ready. A 404 (the file is gone)
    is logged and not retried; other API errors raise, so frameiod retries."""
    config: CommentOnReadyConfig = app.config
    fields = {"event_id": event.event_id, "file_id": event.resource_id}
    if event.account_id is None:
        # Retrying cannot help: the comment's path needs the account.
        app.log.error("file.ready without an account id; no comment posted", **fields)
        return
    try:
        comment_id = await _create(event.account_id, event.resource_id, config.text)
    except NotFoundError:
        app.log.warning(
            "file not found, deleted before it could be commented on; no comment posted",
            **fields,
            account_id=event.account_id,
        )
        return
    app.log.info("comment posted", **fields, comment_id=comment_id)


# --- the Comment custom action ---------------------------------------------------------


def comment_form(problem: str = "") -> Form:
    """The form the action shows: one text area; ``problem`` replaces the description."""
    return Form(
        title="Comment",
        description=problem or "Post a comment on this file.",
        fields=[TextareaField(label="Comment", name="text")],
    )


async def _post_once(event: ActionEvent, account_id: str, file_id: str, text: str) -> None:
    """Post the submission's comment once per interaction: Frame.io may re-send a request
    it got no timely answer to, and a re-sent submission joins the first one's post."""
    task = _state.posts.get(event.interaction_id)
    if task is None:
        task = asyncio.ensure_future(_create(account_id, file_id, text))
        _state.posts[event.interaction_id] = task
        task.add_done_callback(lambda done: _forget_failed(event.interaction_id, done))
        while len(_state.posts) > _REMEMBERED:
            _state.posts.popitem(last=False)
    # shield: one waiting request being cancelled must not cancel the post for the others.
    await asyncio.shield(task)


def _forget_failed(interaction_id: str, task: asyncio.Task[str | None]) -> None:
    # A failed post may be tried again by a new submission; a successful one may not.
    if (task.cancelled() or task.exception() is not None) and _state.posts.get(
        interaction_id
    ) is task:
        del _state.posts[interaction_id]


@app.on_action(
    ACTION, name="Comment", description="Post a comment on this file", resource_types=["file"]
)
async def comment_action(event: ActionEvent) -> Form | Message:
    """First click: the form. Submission: post its text on the file, or show the form
    again if the text is empty."""
    if event.data is None:
        return comment_form()
    text = event.data.get("text")
    if not isinstance(text, str) or not text.strip():
        return comment_form("The comment was empty. Write something to post.")
    if event.account_id is None or event.resource_id is None:
        return Message("Comment not posted", "Frame.io did not say which account and file.")
    try:
        await _post_once(event, event.account_id, event.resource_id, text)
    except NotFoundError:
        return Message("File not found", "The file no longer exists; no comment was posted.")
    return Message("Comment posted", "Your comment is on the file.")
