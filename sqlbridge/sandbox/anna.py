"""AnnA Corporate User V3 as the seed describes it: a token from GetToken, Bearer on every
other endpoint, ``{"success": false, "message": …}`` for refusals, HTTP 401 for bad tokens."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from .state import State

TOKEN_PATH = "REST/Credentials/GetToken"


class Unauthorized(Exception):
    pass


def _fail(message: str) -> dict[str, Any]:
    return {"success": False, "message": message}


def _date(value: str) -> datetime | None:
    if not isinstance(value, str) or not re.fullmatch(r"\d{2}/\d{2}/\d{4}", value):
        raise ValueError(value)
    return datetime.strptime(value, "%d/%m/%Y")


def get_token(state: State, body: dict[str, Any], creds: tuple[str, str, str], ttl: float,
              expires_in_format: str) -> dict[str, Any]:
    if (body.get("hash"), body.get("user"), body.get("pass")) != creds:
        return _fail("Credenciais inválidas")
    data: dict[str, Any] = {"Token": state.issue_token(ttl)}
    if expires_in_format == "seconds":
        data["ExpiresIn"] = str(int(ttl))
    elif expires_in_format == "datetime":
        data["ExpiresIn"] = (datetime.now(UTC) + timedelta(seconds=ttl)).strftime(
            "%Y-%m-%dT%H:%M:%S")
    return {"success": True, "message": "Token gerado com sucesso", "data": data}


def _access_data(base_url: str, company: str, user_id: str) -> dict[str, Any]:
    # Opaque and new on every call, as a real access hash is: nothing may rely on its value.
    user_hash = secrets.token_hex(12).upper()
    return {"Hash": user_hash, "ChatURL": f"{base_url}chat/?h={user_hash}",
            "EmbeddedURL": f"{base_url}chat/embedded/?h={user_hash}",
            "Expires": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y%m%d%H%M%S")}


def handle(state: State, endpoint: str, body: dict[str, Any], company: str,
           base_url: str) -> dict[str, Any]:
    """One authorised call to ``REST/AnnACorporate/<endpoint>``."""
    if body.get("hash") != company:
        return _fail("Empresa não encontrada")
    uid = str(body.get("userId") or "")
    if endpoint in ("User/UserHash", "User/UserHashForced", "User/Inactivate"):
        if not uid:
            return _fail("Informe userId.")
        if endpoint == "User/UserHashForced":
            if not body.get("userName"):
                return _fail("Informe userName.")
            state.force_anna_user(uid, str(body["userName"]))
        user = state.find_user(uid, None, None)
        if user is None:
            return _fail(f"Usuário {company}@{uid} não encontrado.")
        if endpoint == "User/Inactivate":
            with state.lock:
                user.active = False
            return {"success": True, "message": f"Usuário {company}@{uid} inativado com sucesso"}
        if not user.active:
            return _fail(f"Usuário {company}@{uid} está inativo.")
        return {"success": True, "message": "User Hash gerado com sucesso",
                "accessData": _access_data(base_url, company, uid)}
    if endpoint == "Messenger/Structure":
        with state.lock:
            departments = [dict(d) for d in state.departments.values()]
        return {"success": True, "message": "Estrutura obtida com sucesso",
                "structure": {"CompaniesHash": company, "CompaniesName": state.company_name,
                              "Departments": departments}}
    if endpoint not in ("Messenger/AlertCounter", "Messenger/Requests", "Messenger/Link"):
        return _fail(f"Endpoint {endpoint} não encontrado.")

    doc_type, doc_value = body.get("userDocType") or None, body.get("userDocValue") or None
    if not uid and not (doc_type and doc_value):
        return _fail("Informe userId ou userDocType e userDocValue.")
    user = state.find_user(uid or None, doc_type, doc_value)
    if user is None:
        return _fail("Usuário não encontrado.")
    if endpoint == "Messenger/Link":
        return {"success": True, "message": "Link gerado com sucesso",
                "messengerLink": f"{base_url}messenger/?u={user.user_id}"}

    filters = body.get("messengerFilters") or {}
    if not isinstance(filters, dict):
        return _fail("messengerFilters deve ser um objeto.")
    try:
        start = _date(filters["dataIni"]) if filters.get("dataIni") else None
    except ValueError:
        return _fail("dataIni inválida: use dd/MM/yyyy.")
    try:
        end = _date(filters["dataFim"]) if filters.get("dataFim") else None
    except ValueError:
        return _fail("dataFim inválida: use dd/MM/yyyy.")
    for key, allowed in (("status", ("A", "E")), ("pendentes", ("S", "N"))):
        if filters.get(key) and filters[key] not in allowed:
            return _fail(f"{key} inválido: use {' ou '.join(allowed)}.")
    with state.lock:
        chosen = [r for r in state.requests if r.user_id == user.user_id
                  and (not filters.get("departmentAlias")
                       or r.department == filters["departmentAlias"])
                  and (not filters.get("channelAlias") or r.channel == filters["channelAlias"])
                  and (start is None or r.opened >= start)
                  and (end is None or r.opened < end + timedelta(days=1))
                  and (not filters.get("status") or r.status == filters["status"])
                  and (not filters.get("pendentes") or r.pending == filters["pendentes"])]
        departments = dict(state.departments)
    if endpoint == "Messenger/AlertCounter":
        return {"success": True, "message": "Contador obtido com sucesso",
                "alertCounter": sum(1 for r in chosen if r.status == "A" and r.pending == "S")}

    def channel_name(dep: str, alias: str) -> str:
        for ch in departments.get(dep, {}).get("Channels", []):
            if ch["Alias"] == alias:
                return str(ch["Name"])
        return alias

    return {"success": True, "message": "Solicitações obtidas com sucesso", "userRequests": [
        {"Department": departments.get(r.department, {}).get("Name", r.department),
         "Channel": channel_name(r.department, r.channel), "Description": r.description,
         "OpenDate": r.opened.strftime("%d/%m/%Y %H:%M"), "Protocol": r.protocol,
         "Status": r.status, "Pending": r.pending,
         "Link": f"{base_url}messenger/?p={r.protocol}"}
        for r in chosen]}
