"""Who may use the dashboard and how a change is asked for: the bind rule, the login, the CSRF
token and the response headers. One rule in one place; ``app`` wires them in."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque

from flask import Flask, Response, abort, g, request, session

# Every POST but the login carries this form field; it must equal the session's token.
CSRF_FIELD = "csrf"
LOGIN_FAILURES = 10  # this many wrong passwords within LOCKOUT_SECONDS lock the login
LOCKOUT_SECONDS = 60.0


def csrf_token() -> str:
    """The session's token, made on first use; rendered into every form."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def check_csrf() -> None:
    """Refuse (403) a POST whose form token is missing or is not this session's."""
    expected = session.get(CSRF_FIELD)
    given = request.form.get(CSRF_FIELD, "")
    if not isinstance(expected, str) or not hmac.compare_digest(given.encode(),
                                                                expected.encode()):
        abort(403, description="the form's CSRF token is missing or out of date; reload the "
                               "page and try again")


class LoginGuard:
    """Checks the password in constant time and locks the login for a minute after too many
    wrong ones (per process: enough to make guessing over the network hopeless)."""

    def __init__(self, password: str | None) -> None:
        self.password = password
        self.failures: deque[float] = deque()

    @property
    def required(self) -> bool:
        return self.password is not None

    def locked(self) -> bool:
        now = time.monotonic()
        while self.failures and now - self.failures[0] > LOCKOUT_SECONDS:
            self.failures.popleft()
        return len(self.failures) >= LOGIN_FAILURES

    def check(self, given: str) -> bool:
        assert self.password is not None
        if hmac.compare_digest(given.encode("utf-8", "replace"),
                               self.password.encode("utf-8", "replace")):
            self.failures.clear()
            return True
        self.failures.append(time.monotonic())
        return False


def log_in() -> None:
    """A fresh session (new token) for the logged-in user: a token seen before login is void."""
    session.clear()
    session["auth"] = True
    session[CSRF_FIELD] = secrets.token_urlsafe(32)


def configure(app: Flask) -> None:
    """Session cookie flags and the headers every response carries."""
    app.secret_key = secrets.token_bytes(32)  # sessions end when the dashboard restarts
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_NAME="sqlbridge_dashboard",
                      MAX_CONTENT_LENGTH=64 * 1024)

    @app.before_request
    def _nonce() -> None:
        g.nonce = secrets.token_urlsafe(16)

    @app.after_request
    def _headers(resp: Response) -> Response:
        nonce = getattr(g, "nonce", "")
        resp.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
            "base-uri 'none'")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp
