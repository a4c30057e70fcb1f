"""Every table, as SQLAlchemy Core metadata: the one source of truth for the schema.

The T-SQL table scripts in ``sql/`` are generated from this metadata (and a test fails when they
drift). On SQL Server the tables live in schema ``sqlbridge``; on SQLite the same tables are
created without a schema through ``schema_translate_map`` (see ``sqlbridge.db``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Unicode,
    UnicodeText,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import mssql

from .sqlfuncs import utcnow

SCHEMA = "sqlbridge"
STATUSES = ("queued", "processing", "succeeded", "failed", "uncertain", "cancelled")
FINISHED = ("succeeded", "failed", "uncertain", "cancelled")

metadata = MetaData(schema=SCHEMA)

# BIGINT IDENTITY on SQL Server; SQLite only auto-numbers a column declared INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")
# DATETIME2(3) rather than DATETIME: no 3 ms rounding, and the type SYSUTCDATETIME() returns.
Timestamp = DateTime().with_variant(mssql.DATETIME2(precision=3), "mssql")
# NVARCHAR(MAX), never the deprecated NTEXT the mssql dialect picks when it cannot ask the server.
LongText = UnicodeText().with_variant(mssql.NVARCHAR(None), "mssql")


def _id() -> Column:
    return Column("id", Id, primary_key=True, autoincrement=True)


def _now(name: str, nullable: bool = False) -> Column:
    return Column(name, Timestamp, nullable=nullable, server_default=utcnow())


def _seen() -> list[Column]:
    return [_now("first_seen"), _now("last_seen"), Column("request_id", BigInteger, nullable=True)]


outbox = Table(
    "outbox",
    metadata,
    _id(),
    Column("request_key", Unicode(200), nullable=True),
    Column("account", Unicode(100), nullable=False, server_default=text("'default'")),
    Column("provider", Unicode(20), nullable=True),
    Column("operation", Unicode(100), nullable=False),
    Column("params", LongText, nullable=False, server_default=text("'{}'")),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("status", Unicode(20), nullable=False, server_default=text("'queued'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # 0 (the default): "the worker's setting" ([worker] max_attempts), read by the worker when
    # it claims and recovers the row, so a plain INSERT, a procedure and Python all mean the
    # same thing. Not NULL: Babelfish cannot make a released NOT NULL column NULL-able.
    Column("max_attempts", Integer, nullable=False, server_default=text("0"),
           # 001_schema.sql was released with DEFAULT 5; 005 changes the default there.
           info={"released_ddl": "max_attempts INTEGER NOT NULL DEFAULT 5"}),
    _now("available_at"),
    Column("locked_by", Unicode(200), nullable=True),
    Column("locked_until", Timestamp, nullable=True),
    Column("lease_token", Unicode(36), nullable=True),
    _now("created_at"),
    Column("started_at", Timestamp, nullable=True),
    Column("finished_at", Timestamp, nullable=True),
    Column("http_status", Integer, nullable=True),
    Column("response", LongText, nullable=True),
    Column("error_code", Unicode(100), nullable=True),
    Column("error_message", LongText, nullable=True),
    Column("correlation", Unicode(400), nullable=True),
    Column("parent_id", BigInteger, nullable=True),
    Column("schedule_id", BigInteger, nullable=True),
    CheckConstraint(
        "status IN ('queued', 'processing', 'succeeded', 'failed', 'uncertain', 'cancelled')",
        name="ck_outbox_status",
    ),
    CheckConstraint("ISJSON(params) = 1", name="ck_outbox_params_json").ddl_if(dialect="mssql"),
    CheckConstraint("json_valid(params)", name="ck_outbox_params_json").ddl_if(dialect="sqlite"),
    # SQLite reuses the highest rowid after it is deleted (a purge) unless the table says
    # AUTOINCREMENT; inbox rows' request_id would then point at an unrelated request. SQL
    # Server's IDENTITY never goes back.
    sqlite_autoincrement=True,
)

# The claim statement's index: only queued rows, in the order they are taken.
Index(
    "ix_outbox_claim",
    outbox.c.available_at,
    outbox.c.priority,
    outbox.c.id,
    mssql_where=outbox.c.status == "queued",
    sqlite_where=outbox.c.status == "queued",
)
# Expired-lease recovery looks only at rows in flight.
Index(
    "ix_outbox_lease",
    outbox.c.locked_until,
    mssql_where=outbox.c.status == "processing",
    sqlite_where=outbox.c.status == "processing",
)
# Idempotency: a key may be used once; rows without a key are not constrained (SQL Server's
# UNIQUE would otherwise allow a single NULL).
Index(
    "ux_outbox_request_key",
    outbox.c.request_key,
    unique=True,
    mssql_where=outbox.c.request_key.isnot(None),
    sqlite_where=outbox.c.request_key.isnot(None),
)
Index("ix_outbox_status_finished", outbox.c.status, outbox.c.finished_at)
Index("ix_outbox_parent", outbox.c.parent_id)

# Added after the first release, so on SQL Server they live in their own versioned script
# (``info["script"]``; sqlbridge.tsql writes it): 001 must not change once applied.
BACKLOG_SCRIPT = "003_backlog_indexes.sql"
# The claim reads queued rows in exactly this order and stops after the batch, however long
# the backlog: no sort, and available_at is checked from the index, not the row.
Index(
    "ix_outbox_claim_order",
    outbox.c.priority.desc(),
    outbox.c.id,
    outbox.c.available_at,
    mssql_where=outbox.c.status == "queued",
    sqlite_where=outbox.c.status == "queued",
    info={"script": BACKLOG_SCRIPT},
)
# status: counts per status and operation from a narrow covering index, not the wide rows.
Index("ix_outbox_status_operation", outbox.c.status, outbox.c.operation,
      info={"script": BACKLOG_SCRIPT})
# status: the oldest queued request is the first entry of this one.
Index(
    "ix_outbox_queued_created",
    outbox.c.created_at,
    mssql_where=outbox.c.status == "queued",
    sqlite_where=outbox.c.status == "queued",
    info={"script": BACKLOG_SCRIPT},
)

outbox_attempt = Table(
    "outbox_attempt",
    metadata,
    _id(),
    Column("request_id", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("duration_ms", Integer, nullable=True),
    Column("http_status", Integer, nullable=True),
    Column("outcome", Unicode(20), nullable=False),
    Column("error_code", Unicode(100), nullable=True),
    Column("error_message", LongText, nullable=True),
    Column("worker", Unicode(200), nullable=True),
    Index("ix_outbox_attempt_request", "request_id", "attempt"),
)

# -- inbox: fetched data, upserted on natural keys ------------------------------------------

chat_channel = Table(
    "chat_channel",
    metadata,
    _id(),
    Column("account", Unicode(100), nullable=False),
    Column("platform", Unicode(20), nullable=False),
    Column("platformid", Unicode(100), nullable=False),
    Column("name", Unicode(400), nullable=True),
    *_seen(),
    UniqueConstraint("account", "platform", "platformid", name="ux_chat_channel"),
)

chat = Table(
    "chat",
    metadata,
    _id(),
    Column("account", Unicode(100), nullable=False),
    Column("platform", Unicode(20), nullable=False),
    Column("platformid", Unicode(100), nullable=False),
    Column("destination", Unicode(100), nullable=False),
    Column("last_messageid", Unicode(100), nullable=True),
    Column("last_message", LongText, nullable=True),
    Column("last_sent", Boolean, nullable=True),
    Column("last_status", Unicode(50), nullable=True),
    Column("last_datetime", Unicode(50), nullable=True),
    *_seen(),
    UniqueConstraint("account", "platform", "platformid", "destination", name="ux_chat"),
)

chat_message = Table(
    "chat_message",
    metadata,
    _id(),
    Column("account", Unicode(100), nullable=False),
    Column("platform", Unicode(20), nullable=False),
    Column("platformid", Unicode(100), nullable=False),
    Column("messageid", Unicode(100), nullable=False),
    Column("destination", Unicode(100), nullable=True),
    Column("message", LongText, nullable=True),
    # True for messages the account sent, False for incoming ones (vendor: sent / issent).
    Column("sent", Boolean, nullable=True),
    Column("status", Unicode(50), nullable=True),
    # The vendor's own timestamp text, kept as given: its format is not documented.
    Column("datetime", Unicode(50), nullable=True),
    Column("unread", Boolean, nullable=False, server_default=text("0")),
    # Set once by take_messages so each incoming message is handed to one consumer once.
    Column("taken_at", Timestamp, nullable=True),
    Column("taken_by", Unicode(200), nullable=True),
    *_seen(),
    UniqueConstraint("account", "platform", "platformid", "messageid", name="ux_chat_message"),
)
Index("ix_chat_message_chat", chat_message.c.account, chat_message.c.platform,
      chat_message.c.platformid, chat_message.c.destination)
Index(
    "ix_chat_message_untaken",
    chat_message.c.id,
    mssql_where=chat_message.c.taken_at.is_(None),
    sqlite_where=chat_message.c.taken_at.is_(None),
)

anna_department = Table(
    "anna_department",
    metadata,
    _id(),
    Column("account", Unicode(100), nullable=False),
    Column("alias", Unicode(100), nullable=False),
    Column("name", Unicode(400), nullable=True),
    *_seen(),
    UniqueConstraint("account", "alias", name="ux_anna_department"),
)

anna_channel = Table(
    "anna_channel",
    metadata,
    _id(),
    Column("account", Unicode(100), nullable=False),
    Column("department_alias", Unicode(100), nullable=False),
    Column("alias", Unicode(100), nullable=False),
    Column("name", Unicode(400), nullable=True),
    *_seen(),
    UniqueConstraint("account", "department_alias", "alias", name="ux_anna_channel"),
)

anna_user_request = Table(
    "anna_user_request",
    metadata,
    _id(),
    Column("account", Unicode(100), nullable=False),
    # userId, or "docType:docValue" when the user was identified by document.
    Column("user_key", Unicode(200), nullable=False),
    Column("protocol", Unicode(100), nullable=False),
    Column("department", Unicode(400), nullable=True),
    Column("channel", Unicode(400), nullable=True),
    Column("description", LongText, nullable=True),
    Column("opened", Unicode(50), nullable=True),
    Column("status", Unicode(20), nullable=True),
    Column("pending", Boolean, nullable=True),
    Column("link", Unicode(2000), nullable=True),
    *_seen(),
    UniqueConstraint("account", "user_key", "protocol", name="ux_anna_user_request"),
)

anna_alert_counter = Table(
    "anna_alert_counter",
    metadata,
    _id(),
    Column("account", Unicode(100), nullable=False),
    Column("user_key", Unicode(200), nullable=False),
    # The messengerFilters the count was asked with, as canonical JSON ('{}' for none).
    Column("filters", Unicode(900), nullable=False),
    Column("alert_counter", Integer, nullable=False),
    *_seen(),
    UniqueConstraint("account", "user_key", "filters", name="ux_anna_alert_counter"),
)

anna_user_hash = Table(
    "anna_user_hash",
    metadata,
    _id(),
    Column("account", Unicode(100), nullable=False),
    Column("user_id", Unicode(100), nullable=False),
    Column("hash", Unicode(400), nullable=True),
    Column("chat_url", Unicode(2000), nullable=True),
    Column("embedded_url", Unicode(2000), nullable=True),
    Column("expires_at", Timestamp, nullable=True),
    *_seen(),
    UniqueConstraint("account", "user_id", name="ux_anna_user_hash"),
)

# -- schedules and bookkeeping -------------------------------------------------------------

sync_schedule = Table(
    "sync_schedule",
    metadata,
    _id(),
    Column("name", Unicode(200), nullable=False),
    Column("account", Unicode(100), nullable=False, server_default=text("'default'")),
    Column("operation", Unicode(100), nullable=False),
    Column("params", LongText, nullable=False, server_default=text("'{}'")),
    Column("interval_seconds", Integer, nullable=False),
    _now("next_run_at"),
    Column("enabled", Boolean, nullable=False, server_default=text("1")),
    Column("max_children", Integer, nullable=False, server_default=text("1000")),
    Column("locked_by", Unicode(200), nullable=True),
    Column("locked_until", Timestamp, nullable=True),
    Column("last_run_at", Timestamp, nullable=True),
    Column("last_request_id", BigInteger, nullable=True),
    Column("last_status", Unicode(20), nullable=True),
    Column("last_error", LongText, nullable=True),
    _now("created_at"),
    UniqueConstraint("name", name="ux_sync_schedule_name"),
    CheckConstraint("interval_seconds > 0", name="ck_sync_schedule_interval"),
)

# Bulk operator actions (sqlbridge retry/cancel with filters, sqlbridge.retry_requests /
# cancel_requests): who did what to how many requests. Added after 001_schema.sql was released,
# so its T-SQL is a versioned script of its own (``info["script"]``, see tsql.schema_script):
# an applied 001 never changes.
operator_action = Table(
    "operator_action",
    metadata,
    _id(),
    Column("action", Unicode(20), nullable=False),
    Column("actor", Unicode(200), nullable=False),
    # cli or tsql
    Column("via", Unicode(20), nullable=False),
    # The filter as JSON, as given (statuses, operations, times...).
    Column("criteria", LongText, nullable=False),
    _now("requested_at"),
    # Set when the action completed; NULL with matched NULL: it stopped part-way.
    Column("finished_at", Timestamp, nullable=True),
    Column("matched", Integer, nullable=True),
    Index("ix_operator_action_requested", "requested_at"),
    info={"script": "002_operator_action.sql"},
)

# Requests-per-second limits shared by every worker (sqlbridge.shared_limits): the next free
# send slot of each (account, provider), in seconds since 1970 by the database's clock.
SHARED_LIMITS_SCRIPT = "004_shared_limits.sql"
rate_limit_slot = Table(
    "rate_limit_slot",
    metadata,
    Column("account", Unicode(100), primary_key=True),
    Column("provider", Unicode(20), primary_key=True),
    Column("next_at", Float, nullable=False),
    info={"script": SHARED_LIMITS_SCRIPT},
)

# The claim's gates per (account, provider), shared by every worker and host: the circuit
# breaker's state (sqlbridge.breaker) and the row that serialises capped claims
# (sqlbridge.gates, max_in_flight). Added after 005, in a versioned script of their own.
CLAIM_GATES_SCRIPT = "006_claim_gates.sql"
# closed: claims run; open: paused until open_until; probing: one probe claimed, the others
# wait until it answers or open_until (the probe's lease) passes.
BREAKER_STATES = ("closed", "open", "probing")
circuit_breaker = Table(
    "circuit_breaker",
    metadata,
    Column("account", Unicode(100), primary_key=True),
    Column("provider", Unicode(20), primary_key=True),
    Column("state", Unicode(10), nullable=False, server_default=text("'closed'")),
    # Transient failures in a row (reset by a success or a refusal: the API answered).
    Column("failures", Integer, nullable=False, server_default=text("0")),
    Column("open_until", Timestamp, nullable=True),
    # Seconds of the current pause: breaker_cooldown, doubled by each failed probe.
    Column("cooldown", Float, nullable=False, server_default=text("0")),
    # Times the breaker opened (a failed probe opens it again), ever.
    Column("trips", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Unicode(100), nullable=True),
    _now("changed_at"),
    CheckConstraint("state IN ('closed', 'open', 'probing')", name="ck_circuit_breaker_state"),
    info={"script": CLAIM_GATES_SCRIPT},
)
in_flight_lock = Table(
    "in_flight_lock",
    metadata,
    Column("account", Unicode(100), primary_key=True),
    Column("provider", Unicode(20), primary_key=True),
    # Bumped by every capped claim: the UPDATE is what holds the row's lock to the commit.
    Column("claims", BigInteger, nullable=False, server_default=text("0")),
    info={"script": CLAIM_GATES_SCRIPT},
)

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Unicode(200), primary_key=True),
    Column("checksum", Unicode(64), nullable=False),
    _now("applied_at"),
)

INBOX_TABLES = (
    chat_channel,
    chat,
    chat_message,
    anna_department,
    anna_channel,
    anna_user_request,
    anna_alert_counter,
    anna_user_hash,
)
