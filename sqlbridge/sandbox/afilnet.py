"""The Afilnet chat API as the seed document describes it: checks in the vendor's order,
every documented error code reachable by a documented input, HTTP 200 for errors too.

One documented code has no input that can reach it: the seed lists CHAT_NOT_FOUND for
``getchats``, which takes no destination; a channel without chats answers an empty list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..registry import FILE_TYPES, PLATFORMS
from .state import State

# Mandatory parameters per method, from the seed's parameter tables.
REQUIRED: dict[str, tuple[str, ...]] = {
    "chat.getchatchannels": (),
    "chat.sendmessage": ("platform", "platformid", "destination", "message"),
    "chat.sendfile": ("platform", "platformid", "destination", "type", "fileurl"),
    "chat.getchats": ("platform", "platformid"),
    "chat.getmessages": ("platform", "platformid", "destination"),
    "chat.getunreadmessages": ("platform", "platformid", "destination"),
    "user.getbalance": (),
}
CLASSES = {name.split(".")[0] for name in REQUIRED}


class AfilnetError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _is_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in value


def handle(state: State, form: Mapping[str, str], user: str | None, password: str | None,
           expected: tuple[str, str]) -> Any:
    """Run one call; returns the ``result`` value or raises AfilnetError(code)."""
    if not user:
        raise AfilnetError("MISSING_USER")
    if not password:
        raise AfilnetError("MISSING_PASSWORD")
    if (user, password) != expected:
        raise AfilnetError("INCORRECT_USER_PASSWORD")
    cls, method = form.get("class", ""), form.get("method", "")
    if not cls:
        raise AfilnetError("MISSING_CLASS")
    if not method:
        raise AfilnetError("MISSING_METHOD")
    if cls not in CLASSES:
        raise AfilnetError("INCORRECT_CLASS")
    name = f"{cls}.{method}"
    if name not in REQUIRED:
        raise AfilnetError("INCORRECT_METHOD")
    for param in REQUIRED[name]:
        if not form.get(param, "").strip():
            raise AfilnetError("MISSING_COMPULSORY_PARAM")
    if name == "user.getbalance":
        return {"balance": "100.00", "currency": "EUR"}
    if name == "chat.getchatchannels":
        with state.lock:
            return [{"platformid": pid, "platform": p, "name": n}
                    for (p, pid), n in state.channels.items()]

    platform, platformid = form["platform"], form["platformid"]
    with state.lock:
        if platform not in PLATFORMS or (platform, platformid) not in state.channels:
            raise AfilnetError("CHANNEL_NOT_FOUND")
        if name == "chat.getchats":
            return [msgs[-1].as_item() for (p, pid, _), msgs in state.chats.items()
                    if (p, pid) == (platform, platformid) and msgs]
        key = (platform, platformid, form["destination"])
        if name == "chat.sendmessage":
            state.add_message(*key, form["message"], sent=1, status="sent")
            return None
        if key not in state.chats:
            raise AfilnetError("CHAT_NOT_FOUND")
        if name == "chat.sendfile":
            if form["type"] not in FILE_TYPES:
                raise AfilnetError("INCORRECT_FILETYPE")
            if not _is_url(form["fileurl"]):
                raise AfilnetError("INCORRECT_FILEURL")
            if form.get("thumburl") and not _is_url(form["thumburl"]):
                raise AfilnetError("INCORRECT_THUMBURL")
            state.add_message(*key, form.get("message") or form["fileurl"], sent=1,
                              status="sent")
            return None
        messages = state.chats[key]
        if name == "chat.getmessages":
            items = [m.as_item() for m in messages]
            state.mark_read(*key)  # reading the chat reads its messages
            return items
        # chat.getunreadmessages: the seed names the direction field "issent" here.
        return [m.as_item("issent") for m in messages if m.unread]
