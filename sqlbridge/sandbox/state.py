"""What the fake APIs remember: channels, chats, messages, AnnA users, requests and tokens.

One lock guards everything: the sandbox serves tests and demos, not production traffic, and a
single lock makes every method trivially consistent across the server's threads.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Message:
    messageid: str
    platform: str
    platformid: str
    destination: str
    message: str
    sent: int  # 1 outgoing, 0 incoming
    status: str
    datetime: str
    unread: bool = False

    def as_item(self, direction_key: str = "sent") -> dict[str, Any]:
        return {"platformid": self.platformid, "platform": self.platform,
                "message": self.message, "destination": self.destination,
                "messageid": self.messageid, direction_key: self.sent, "status": self.status,
                "datetime": self.datetime}


@dataclass
class AnnaUser:
    user_id: str
    name: str
    active: bool = True
    doc_type: str | None = None
    doc_value: str | None = None


@dataclass
class AnnaRequest:
    protocol: str
    user_id: str
    department: str
    channel: str
    description: str
    opened: datetime
    status: str = "A"
    pending: str = "S"


@dataclass
class State:
    company_name: str = "Sandbox Company"
    lock: threading.RLock = field(default_factory=threading.RLock)
    channels: dict[tuple[str, str], str] = field(default_factory=dict)
    # (platform, platformid, destination) -> messages in order
    chats: dict[tuple[str, str, str], list[Message]] = field(default_factory=dict)
    departments: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, AnnaUser] = field(default_factory=dict)
    requests: list[AnnaRequest] = field(default_factory=list)
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    _next_id: int = 1

    # -- Afilnet -----------------------------------------------------------------------------

    def _message_id(self) -> str:
        self._next_id += 1
        return f"m{self._next_id:08d}"

    def add_channel(self, platform: str, platformid: str, name: str) -> None:
        with self.lock:
            self.channels[(platform, str(platformid))] = name

    def add_chat(self, platform: str, platformid: str, destination: str) -> None:
        with self.lock:
            self.chats.setdefault((platform, str(platformid), str(destination)), [])

    def add_message(self, platform: str, platformid: str, destination: str, text: str, *,
                    sent: int, status: str, unread: bool = False) -> str:
        with self.lock:
            msg = Message(self._message_id(), platform, str(platformid), str(destination),
                          text, sent, status, _now_text(), unread)
            self.chats.setdefault((platform, str(platformid), str(destination)), []).append(msg)
            return msg.messageid

    def add_incoming_message(self, platform: str, platformid: str, destination: str,
                             text: str) -> str:
        return self.add_message(platform, platformid, destination, text, sent=0,
                                status="received", unread=True)

    def messages(self, platform: str, platformid: str, destination: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m.as_item() | {"unread": m.unread} for m in
                    self.chats.get((platform, str(platformid), str(destination)), [])]

    def unread(self, platform: str, platformid: str, destination: str) -> list[dict[str, Any]]:
        return [m for m in self.messages(platform, platformid, destination) if m["unread"]]

    def mark_read(self, platform: str, platformid: str, destination: str) -> None:
        with self.lock:
            for m in self.chats.get((platform, str(platformid), str(destination)), []):
                if m.unread:
                    m.unread = False
                    m.status = "read"

    def populate(self, channels: int = 3, chats_per_channel: int = 50,
                 messages_per_chat: int = 200, unread_ratio: float = 0.1,
                 seed: int = 1) -> int:
        """Replace the chat state with a large one; returns the number of messages."""
        rng = random.Random(seed)
        platforms = ("whatsapp", "telegram", "webchat", "operator")
        stamp = _now_text()
        with self.lock:
            self.channels.clear()
            self.chats.clear()
            total = 0
            for c in range(channels):
                platform, platformid = platforms[c % len(platforms)], str(100 * (c + 1))
                self.channels[(platform, platformid)] = f"Channel {c + 1}"
                for k in range(chats_per_channel):
                    dest = f"3460{c:02d}{k:05d}"
                    msgs = []
                    for n in range(messages_per_chat):
                        incoming = n % 2 == 0
                        self._next_id += 1
                        msgs.append(Message(
                            f"m{self._next_id:08d}", platform, platformid, dest,
                            f"message {n} in chat {dest}", 0 if incoming else 1,
                            "received" if incoming else "delivered", stamp,
                            incoming and rng.random() < unread_ratio))
                    self.chats[(platform, platformid, dest)] = msgs
                    total += len(msgs)
            return total

    # -- AnnA ------------------------------------------------------------------------------

    def add_anna_user(self, user_id: str, name: str, doc_type: str | None = None,
                      doc_value: str | None = None, active: bool = True) -> None:
        with self.lock:
            self.users[str(user_id)] = AnnaUser(str(user_id), name, active, doc_type, doc_value)

    def force_anna_user(self, user_id: str, name: str) -> None:
        """UserHashForced: create the user, or rename and re-activate it, keeping its document."""
        with self.lock:
            user = self.users.get(str(user_id))
            if user is None:
                self.add_anna_user(user_id, name)
            else:
                user.name, user.active = name, True

    def anna_user(self, user_id: str) -> dict[str, Any] | None:
        with self.lock:
            u = self.users.get(str(user_id))
            return None if u is None else dict(u.__dict__)

    def find_user(self, user_id: str | None, doc_type: str | None,
                  doc_value: str | None) -> AnnaUser | None:
        with self.lock:
            if user_id:
                return self.users.get(str(user_id))
            for u in self.users.values():
                if u.doc_type == doc_type and u.doc_value == doc_value:
                    return u
            return None

    def add_anna_request(self, user_id: str, department_alias: str, channel_alias: str,
                         description: str, status: str = "A", pending: str = "S",
                         opened: datetime | None = None) -> str:
        with self.lock:
            protocol = f"P{len(self.requests) + 1:06d}"
            self.requests.append(AnnaRequest(protocol, str(user_id), department_alias,
                                             channel_alias, description,
                                             opened or datetime(2024, 6, 1, 9, 30), status,
                                             pending))
            return protocol

    def issue_token(self, ttl: float) -> str:
        with self.lock:
            token = "eyJhbGciOiJub25lIn0." + secrets.token_urlsafe(24)
            self.tokens[token] = time.monotonic() + ttl
            return token

    def token_valid(self, token: str) -> bool:
        with self.lock:
            expiry = self.tokens.get(token)
            return expiry is not None and expiry > time.monotonic()

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()


def seeded(seed: int | None = None) -> State:
    """The state every sandbox starts with: small, fixed, enough for every documented case.

    It is the same for every ``seed`` (tests name its chats and users directly); the seed is
    accepted so that a future randomised part stays reproducible.
    """
    s = State()
    s.add_channel("whatsapp", "100", "Sandbox WhatsApp")
    s.add_channel("telegram", "200", "Sandbox Telegram")
    s.add_channel("webchat", "300", "Sandbox Webchat")
    for platform, platformid in (("whatsapp", "100"), ("telegram", "200"), ("webchat", "300")):
        for k in range(2):
            dest = f"3460000{platformid}{k}"
            s.add_message(platform, platformid, dest, "Olá, tudo bem?", sent=1,
                          status="delivered")
            s.add_incoming_message(platform, platformid, dest, f"Resposta {k} ✓")
    s.departments = {
        "SUP": {"Alias": "SUP", "Name": "Suporte", "Channels": [
            {"Alias": "TEC", "Name": "Técnico"}, {"Alias": "FIN", "Name": "Financeiro"}]},
        "VEN": {"Alias": "VEN", "Name": "Vendas", "Channels": [
            {"Alias": "NOV", "Name": "Novos clientes"}, {"Alias": "REN", "Name": "Renovações"}]},
    }
    s.add_anna_user("1001", "Ana Souza", "CPF", "12345678900")
    s.add_anna_user("1002", "Bruno Lima")
    s.add_anna_user("1003", "Carla Dias", active=False)
    s.add_anna_request("1001", "SUP", "TEC", "Não consigo acessar", "A", "S",
                       datetime(2024, 3, 10, 14, 5))
    s.add_anna_request("1001", "SUP", "FIN", "Segunda via do boleto", "A", "N",
                       datetime(2024, 5, 2, 9, 0))
    s.add_anna_request("1001", "VEN", "NOV", "Proposta comercial", "E", "N",
                       datetime(2024, 8, 20, 16, 45))
    s.add_anna_request("1001", "SUP", "TEC", "Erro na fatura", "A", "S",
                       datetime(2024, 11, 30, 11, 15))
    s.add_anna_request("1002", "VEN", "REN", "Renovação de contrato", "A", "S",
                       datetime(2024, 7, 7, 8, 0))
    return s
