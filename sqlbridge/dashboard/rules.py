"""Where the dashboard may listen and which Host headers it answers: plain functions, without
Flask, so the CLI can refuse a bad bind before importing the web stack."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost': only this machine can connect."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, password: str | None) -> str | None:
    """Why the dashboard must not start on ``host`` with this password, or None."""
    if password is not None and not password.strip():
        return "the dashboard password is empty; give a non-empty --password or password file"
    if not is_loopback(host) and not password:
        return (f"refusing to serve the dashboard on {host} without a password: other machines "
                "could reach it; give --password-file, SQLBRIDGE_DASHBOARD_PASSWORD or "
                "--password, or bind to 127.0.0.1")
    return None


def loopback_hosts(port: int) -> frozenset[str]:
    """The Host headers a browser on this machine sends. Without a password the dashboard
    answers only these, so a web page that rebinds its own DNS name to 127.0.0.1 cannot read
    it (its requests carry its own name)."""
    return frozenset(f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]"))
