"""Prometheus metrics, ``/healthz`` and ``/readyz`` for one worker (``worker --metrics-port``).

``WorkerMetrics`` is the worker's observer (``sqlbridge.health``): the hooks update counters as
the loop runs. ``MetricsServer`` serves them on a loopback port by default (bind elsewhere with
``--metrics-bind``; the endpoint has no authentication, like every Prometheus exporter).

**Labels never carry request data.** ``operation`` is a name from the registry or ``other``;
``account`` is an account from the worker's configuration or ``other``; ``provider``,
``outcome`` and ``kind`` come from closed lists. A row ``INSERT``ed with a hostile operation
name or account cannot add a series, and no parameter, response, error text or secret is ever
a label or a value.

**Queue figures come from the database on a slow clock.** Each worker with metrics on reads
``sqlbridge.queue_health`` (``sqlbridge.monitoring``) and the circuit breakers
(``sqlbridge.breaker``) every ``queue_interval`` seconds (default 30), starting at a random
point of the first interval and jittered by ±20 % after, so workers started together do not
read together. Chosen over electing one reader through a lease row:
ten workers cost one cheap grouped read of the live rows every three seconds, next to the
hundreds of claim statements a busy queue runs per second; a lease would add a table, a write
per interval and a gap whenever its holder dies, to save that. Every worker's gauges then stand
alone; take ``max by (operation)`` across workers in alert rules.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import Engine

from . import registry as ops_registry
from .breaker import states as breaker_states
from .dberrors import KINDS
from .health import HealthState
from .monitoring import FIGURES, queue_health

if TYPE_CHECKING:
    from .dberrors import DbError
    from .queue import Claimed, Completion

log = logging.getLogger("sqlbridge.metrics")
OTHER = "other"
OUTCOMES = ("succeeded", "failed", "uncertain")
# Seconds: an HTTP call from a few ms (sandbox) to the 30 s read timeout and beyond.
HTTP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Labels:
    """Turns row data into bounded label values (see the module docstring)."""

    def __init__(self, accounts: Iterable[str]) -> None:
        self.accounts = frozenset(accounts)
        self.operations = frozenset(ops_registry.OPERATIONS)

    def operation(self, name: Any) -> str:
        return name if isinstance(name, str) and name in self.operations else OTHER

    def account(self, name: Any) -> str:
        return name if isinstance(name, str) and name in self.accounts else OTHER

    @staticmethod
    def provider(name: Any) -> str:
        return name if name in ops_registry.PROVIDERS else OTHER


class WorkerMetrics(HealthState):
    """The worker's observer: health state plus Prometheus metrics, in its own registry."""

    def __init__(self, accounts: Iterable[str] = ("default",), *, stall_after: float = 60.0,
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(stall_after)
        self.labels = Labels(accounts)
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.finished_total = Counter(
            "sqlbridge_requests_finished_total",
            "Requests this worker finished, by operation, account and outcome "
            "(succeeded, failed, uncertain).", ["operation", "account", "outcome"], registry=r)
        self.retries_total = Counter(
            "sqlbridge_retries_total", "Attempts that ended in a retry (queued again with "
            "back-off).", ["operation", "account"], registry=r)
        self.uncertain_total = Counter(
            "sqlbridge_uncertain_total", "Requests this worker marked uncertain (a send whose "
            "outcome is unknown; a person must check).", ["operation", "account"], registry=r)
        self.lost_leases_total = Counter(
            "sqlbridge_lost_leases_total", "Outcomes refused at write time because the lease "
            "had been lost (fencing).", registry=r)
        self.http_seconds = Histogram(
            "sqlbridge_http_request_duration_seconds", "Duration of one attempt's HTTP "
            "exchange, by provider.", ["provider"], buckets=HTTP_BUCKETS, registry=r)
        self.recovered_total = Counter(
            "sqlbridge_leases_recovered_total", "Expired leases this worker settled, by the "
            "status the row got.", ["outcome"], registry=r)
        self.db_errors_total = Counter(
            "sqlbridge_db_errors_total", "Failed database calls, by kind (see "
            "sqlbridge.dberrors).", ["kind"], registry=r)
        self.claims_total = Counter(
            "sqlbridge_claims_total", "Claim statements run.", registry=r)
        self.claimed_total = Counter(
            "sqlbridge_claimed_requests_total", "Requests claimed.", registry=r)
        self.claim_seconds = Histogram(
            "sqlbridge_claim_duration_seconds", "Time to claim a batch, back-off included.",
            buckets=CLAIM_BUCKETS, registry=r)
        self.inflight = Gauge("sqlbridge_inflight_calls", "Calls running now.", registry=r)
        self.db_up = Gauge("sqlbridge_database_up", "1 when the last database call "
                           "succeeded.", registry=r)
        self.db_up.set_function(lambda: 1.0 if self.database_reachable else 0.0)
        self.loop_age = Gauge("sqlbridge_loop_age_seconds", "Seconds since the worker loop "
                              "last came round.", registry=r)
        self.loop_age.set_function(lambda: time.monotonic() - self.last_loop)
        for kind in KINDS:  # every kind present from the start: rate() needs a zero
            self.db_errors_total.labels(kind)
        for outcome in ("queued", "failed", "uncertain"):
            self.recovered_total.labels(outcome)
        self._claimed: dict[int, tuple[str, str]] = {}
        self.queue = QueueFigures(self.labels)
        r.register(self.queue)
        self.breakers = BreakerFigures(self.labels)
        r.register(self.breakers)

    # -- the hooks -----------------------------------------------------------------------------

    def loop(self, inflight: int) -> None:
        super().loop(inflight)
        self.inflight.set(inflight)

    def db_error(self, error: DbError) -> None:
        super().db_error(error)
        self.db_errors_total.labels(error.kind if error.kind in KINDS else OTHER).inc()

    def claimed(self, claims: Sequence[Claimed], seconds: float) -> None:
        self.claims_total.inc()
        self.claim_seconds.observe(seconds)
        self.claimed_total.inc(len(claims))
        for c in claims:
            self._claimed[c.id] = (self.labels.operation(c.operation),
                                   self.labels.account(c.account))

    def finished(self, completions: Sequence[Completion], fenced: Sequence[int]) -> None:
        lost = set(fenced)
        for c in completions:
            operation, account = self._claimed.pop(c.id, (OTHER, OTHER))
            if c.provider is not None:  # a row refused before any HTTP has no duration
                self.http_seconds.labels(self.labels.provider(c.provider)).observe(
                    c.duration_ms / 1000)
            if c.id in lost:
                self.lost_leases_total.inc()
            elif c.status == "queued":
                self.retries_total.labels(operation, account).inc()
            elif c.status in OUTCOMES:
                self.finished_total.labels(operation, account, c.status).inc()
                if c.status == "uncertain":
                    self.uncertain_total.labels(operation, account).inc()

    def recovered(self, counts: dict[str, int]) -> None:
        for outcome, n in counts.items():
            if n:
                self.recovered_total.labels(outcome).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class QueueFigures:
    """A collector for the last ``queue_health`` sample (gauges that may lose series)."""

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.rows: list[dict[str, Any]] = []
        self.sampled_at: float | None = None

    def update(self, rows: list[dict[str, Any]]) -> None:
        self.rows, self.sampled_at = rows, time.time()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        rows, sampled_at = self.rows, self.sampled_at
        requests = GaugeMetricFamily(
            "sqlbridge_queue_requests", "Requests in the outbox by operation and state "
            "(queued, due, processing, stuck, uncertain), read from the database.",
            labels=["operation", "state"])
        oldest = GaugeMetricFamily(
            "sqlbridge_queue_oldest_age_seconds", "Seconds the oldest due queued request "
            "has waited, by operation.", labels=["operation"])
        merged: dict[str, dict[str, float]] = {}
        ages: dict[str, float] = {}
        for row in rows:  # 'other' can gather several unknown operations
            op = self.labels.operation(row["operation"])
            slot = merged.setdefault(op, dict.fromkeys(FIGURES, 0.0))
            for k in FIGURES:
                slot[k] += row[k]
            if row["oldest_queued_age_seconds"] is not None:
                ages[op] = max(ages.get(op, 0.0), float(row["oldest_queued_age_seconds"]))
        for op, figures in sorted(merged.items()):
            for state, value in figures.items():
                requests.add_metric([op, state], value)
        for op, age in sorted(ages.items()):
            oldest.add_metric([op], age)
        yield requests
        yield oldest
        stamp = GaugeMetricFamily("sqlbridge_queue_sampled_timestamp_seconds",
                                  "When the queue figures were last read (Unix time).")
        if sampled_at is not None:
            stamp.add_metric([], sampled_at)
        yield stamp


# The states a breaker is shown in (sqlbridge.breaker.describe), each a series of its own.
BREAKER_SHOWN = ("closed", "open", "half-open")


class BreakerFigures:
    """A collector for the circuit breakers as last read (on the queue figures' clock)."""

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.rows: list[dict[str, Any]] = []

    def update(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def collect(self) -> Iterable[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "sqlbridge_circuit_state", "1 for the state each (account, provider) circuit "
            "breaker is in: closed, open (claims paused) or half_open (one probe due or "
            "running); read from the database.", labels=["account", "provider", "state"])
        failures = GaugeMetricFamily(
            "sqlbridge_circuit_consecutive_failures", "Transient failures in a row of each "
            "breaker (it opens at breaker_failures).", labels=["account", "provider"])
        trips = CounterMetricFamily(
            "sqlbridge_circuit_trips", "Times each breaker opened (a failed probe opens it "
            "again), as recorded in the database.", labels=["account", "provider"])
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for row in self.rows:  # 'other' can gather several unknown accounts
            key = (self.labels.account(row["account"]), self.labels.provider(row["provider"]))
            slot = merged.setdefault(key, {"state": "closed", "failures": 0, "trips": 0})
            if BREAKER_SHOWN.index(row["state"]) > BREAKER_SHOWN.index(slot["state"]):
                slot["state"] = row["state"]
            slot["failures"] = max(slot["failures"], row["failures"])
            slot["trips"] += row["trips"]
        for (account, provider), v in sorted(merged.items()):
            for shown in BREAKER_SHOWN:
                state.add_metric([account, provider, shown.replace("-", "_")],
                                 1.0 if v["state"] == shown else 0.0)
            failures.add_metric([account, provider], v["failures"])
            trips.add_metric([account, provider], v["trips"])
        yield state
        yield failures
        yield trips


class MetricsServer:
    """``/metrics``, ``/healthz``, ``/readyz`` on one port, plus the slow queue sampler."""

    def __init__(self, metrics: WorkerMetrics, engine: Engine, *, port: int,
                 bind: str = "127.0.0.1", queue_interval: float = 30.0) -> None:
        self.metrics = metrics
        self.engine = engine
        self.queue_interval = queue_interval
        self._stop = threading.Event()
        self.httpd = ThreadingHTTPServer((bind, port), _handler(metrics))
        self.httpd.daemon_threads = True
        self._threads = [
            threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                             name="sqlbridge-metrics", daemon=True),
            threading.Thread(target=self._sample, name="sqlbridge-queue-sampler", daemon=True),
        ]

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> MetricsServer:
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(timeout=10)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sample(self) -> None:
        # The schema first (readiness), retried every few seconds until it is there.
        while not self._stop.is_set() and not self.metrics.check_schema(self.engine):
            self._stop.wait(min(5.0, self.queue_interval))
        self._stop.wait(random.uniform(0, self.queue_interval))
        while not self._stop.is_set():
            try:
                self.metrics.queue.update(queue_health(self.engine))
                self.metrics.breakers.update(breaker_states(self.engine))
            except Exception as exc:  # noqa: BLE001 - a failed sample keeps the last one
                log.warning("queue figures not read: %s", type(exc).__name__)
            self._stop.wait(self.queue_interval * random.uniform(0.8, 1.2))


def _handler(metrics: WorkerMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "sqlbridge"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, details = metrics.health() if path == "/healthz" else metrics.readiness()
                self._send(200 if ok else 503, json.dumps(details).encode(),
                           "application/json")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n",
                           "text/plain; charset=utf-8")

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # scrapes every few seconds would drown the worker's own log

    return Handler


def serve(metrics: WorkerMetrics, engine: Engine, port: int, bind: str = "127.0.0.1",
          queue_interval: float = 30.0) -> MetricsServer:
    """Start the endpoint; the caller closes it when the worker stops."""
    return MetricsServer(metrics, engine, port=port, bind=bind,
                         queue_interval=queue_interval).start()
