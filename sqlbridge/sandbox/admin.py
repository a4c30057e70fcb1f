"""``/_sandbox/<action>``: the state and fault methods over HTTP, for a sandbox that runs in
another process (``sqlbridge sandbox``, the benchmarks) where ``sb.state`` is out of reach.

Every action is a JSON POST whose keys are the keyword arguments of the Python method it
mirrors; a missing or unknown key is answered 400 with the reason, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any

from .faults import Faults

if TYPE_CHECKING:
    from .server import Sandbox

_FAULT_FIELDS = {f.name for f in fields(Faults)}


def _faults(sb: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    unknown = set(body) - _FAULT_FIELDS
    if unknown:
        raise ValueError(f"unknown fault fields {sorted(unknown)}; allowed: "
                         f"{sorted(_FAULT_FIELDS)}")
    for key, value in body.items():
        setattr(sb.faults, key, value)
    return asdict(sb.faults)


def _reset(sb: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    sb.reset()
    return {"ok": True}


def _chat(sb: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    sb.state.add_chat(body["platform"], body["platformid"], body["destination"])
    return {"ok": True}


def _channel(sb: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    sb.state.add_channel(body["platform"], body["platformid"], body["name"])
    return {"ok": True}


def _messages(sb: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return {"messages": sb.state.messages(body["platform"], body["platformid"],
                                          body["destination"])}


def _mark_read(sb: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    sb.state.mark_read(body["platform"], body["platformid"], body["destination"])
    return {"ok": True}


def _anna_user(sb: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    if "name" in body:  # with a name: create; without: read
        sb.state.add_anna_user(body["user_id"], body["name"], body.get("doc_type"),
                               body.get("doc_value"), body.get("active", True))
    return {"user": sb.state.anna_user(body["user_id"])}


def _revoke(sb: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    sb.state.revoke_tokens()
    return {"ok": True}


def _seen(sb: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    return {"requests": list(sb.requests_seen),
            "operations": [list(pair) for pair in sb.operations_seen],
            "in_flight": sb.in_flight, "max_in_flight": sb.max_in_flight}


ACTIONS: dict[str, Callable[[Sandbox, dict[str, Any]], dict[str, Any]]] = {
    "incoming": lambda sb, b: {"messageid": sb.state.add_incoming_message(
        b["platform"], b["platformid"], b["destination"], b["text"])},
    "channel": _channel,
    "chat": _chat,
    "messages": _messages,
    "mark_read": _mark_read,
    "populate": lambda sb, b: {"messages": sb.state.populate(**b)},
    "anna_user": _anna_user,
    "anna_request": lambda sb, b: {"protocol": sb.state.add_anna_request(**b)},
    "revoke_tokens": _revoke,
    "faults": _faults,
    "fail_next": lambda sb, b: sb.fail_next(**b) or {"ok": True},
    "reset": _reset,
    "seen": _seen,
}


def run(sb: Sandbox, action: str, body: Any) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON answer of one admin call."""
    if action not in ACTIONS:
        return 404, {"error": f"unknown admin action '{action}'; known: {sorted(ACTIONS)}"}
    if not isinstance(body, dict):
        return 400, {"error": "the body must be a JSON object"}
    try:
        return 200, ACTIONS[action](sb, body)
    except KeyError as exc:
        return 400, {"error": f"missing field {exc}"}
    except (TypeError, ValueError) as exc:
        return 400, {"error": str(exc)}

