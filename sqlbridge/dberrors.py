"""Which database errors are outages to ride out, and which are bugs to surface: one table.

The worker retries a statement with back-off only when ``classify(exc).transient`` is true.
Everything else (a missing table, a permission refused, a constraint violated, a syntax error)
is raised, because retrying it would only hide a broken install or a bug behind an endless
"database unavailable" log.

Transient, by SQL Server error number (Microsoft's "troubleshoot transient connection errors"
list for Azure SQL, plus the two lock errors every OLTP application retries):

====== ============== ===============================================================
number kind           meaning
====== ============== ===============================================================
1205   deadlock       chosen as deadlock victim: run the transaction again
1222   lock_timeout   lock request time-out period exceeded
40613  unavailable    database not currently available (Azure reconfiguration)
40197  unavailable    service error processing the request (Azure failover/upgrade)
40501  throttled      the service is currently busy
49918  throttled      not enough resources to process the request
49919  throttled      too many create/update operations in progress
49920  throttled      too many operations in progress
4060   unavailable    cannot open database (often during a failover)
4221   unavailable    login to a read-secondary failed: replica is not yet ready
10928  throttled      resource limit reached (Azure: requests / sessions)
10929  throttled      resource minimum guarantee not met; the server is busy
976    unavailable    availability database not accessible (Always On role change)
978    unavailable    availability database not accessible for this intent (role change)
983    unavailable    database replica not in the PRIMARY or SECONDARY role (failover)
====== ============== ===============================================================

plus a *dropped connection* (``disconnect``): the driver or SQLAlchemy says the connection is
gone (an Always On failover, a network blip, a killed session; SQLSTATE class 08), and
SQLite's "database is locked" (``locked``: another process holds the write lock longer than
the busy timeout). Serialization failures (SQLSTATE 40001 without a number) count as deadlocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

# SQL Server error number -> kind. Everything here is an outage, not a bug.
TRANSIENT_NUMBERS: dict[int, str] = {
    1205: "deadlock",
    1222: "lock_timeout",
    40613: "unavailable",
    40197: "unavailable",
    40501: "throttled",
    49918: "throttled",
    49919: "throttled",
    49920: "throttled",
    4060: "unavailable",
    4221: "unavailable",
    10928: "throttled",
    10929: "throttled",
    # Always On: the database is changing role under a failover; a new primary takes over.
    976: "unavailable",
    978: "unavailable",
    983: "unavailable",
}
# Every kind classify() can return, for metric labels (a closed set: no label from error text).
KINDS = ("deadlock", "lock_timeout", "unavailable", "throttled", "disconnect", "locked",
         "other")
# pyodbc and the ODBC drivers end a message with the native error number: "... (1205)
# (SQLExecDirectW)". pymssql/mssql-python put it first in args; both are read.
_NUMBER = re.compile(r"\((\d{3,5})\)")
# pyodbc: args[0] is the SQLSTATE alone, and the message starts with "[08S01] ".
_SQLSTATE = re.compile(r"^(?:\[([0-9A-Z]{5})\]|([0-9A-Z]{5})$)")
_DISCONNECT_TEXT = (
    "communication link failure", "connection is busy", "connection was forcibly closed",
    "connection reset", "broken pipe", "server closed the connection", "transport-level error",
    "physical connection is not usable", "cannot operate on a closed database",
    "connection failure", "tcp provider", "login timeout expired",
)
_LOCKED_TEXT = ("database is locked", "database table is locked")


@dataclass(frozen=True)
class DbError:
    kind: str
    transient: bool
    number: int | None = None

    def __str__(self) -> str:
        return self.kind + (f" ({self.number})" if self.number else "")


def _numbers(orig: BaseException | None) -> list[int]:
    """Native error numbers: an int argument, or the last "(NNNN)" of a message (pyodbc puts
    the server's number last, so a number inside quoted user data cannot pass for it)."""
    if orig is None:
        return []
    found: list[int] = []
    for arg in getattr(orig, "args", ()):
        if isinstance(arg, int) and not isinstance(arg, bool):
            found.append(arg)
        elif isinstance(arg, (str, bytes)):
            text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else arg
            numbers = _NUMBER.findall(text)
            if numbers:
                found.append(int(numbers[-1]))
    return found


def _sqlstates(orig: BaseException | None) -> list[str]:
    out = []
    for arg in getattr(orig, "args", ()) if orig is not None else ():
        if isinstance(arg, str) and (m := _SQLSTATE.match(arg.strip())):
            out.append(m.group(1) or m.group(2))
    return out


def classify(exc: BaseException) -> DbError:
    """Say what kind of database error ``exc`` is and whether waiting can cure it."""
    orig = getattr(exc, "orig", None) or exc
    numbers = _numbers(orig)
    for number in numbers:
        if number in TRANSIENT_NUMBERS:
            return DbError(TRANSIENT_NUMBERS[number], True, number)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return DbError("disconnect", True)
    states = _sqlstates(orig)
    if any(s.startswith("08") for s in states):
        return DbError("disconnect", True)
    if "40001" in states:
        return DbError("deadlock", True)
    if "HYT00" in states or "HYT01" in states:
        # The driver's own timeout: the server was too slow to answer, not a wrong statement.
        return DbError("unavailable", True)
    text = str(orig).lower()
    if any(t in text for t in _LOCKED_TEXT):
        return DbError("locked", True)
    if any(numbers):
        # The server named its error and it is not an outage: surface it, do not guess.
        return DbError("other", False, numbers[-1])
    if any(t in text for t in _DISCONNECT_TEXT):
        return DbError("disconnect", True)
    return DbError("other", False)


def is_transient(exc: BaseException) -> bool:
    return classify(exc).transient
