"""Running many workers on an existing engine: ``docker compose up --scale worker=N`` and the
Kubernetes manifests (a worker Deployment, a one-shot install Job, KEDA's ``mssql`` scaler on
``sqlbridge.queued_depth``), and ``sqlbridge install`` raced by several installers at once.

No Docker engine and no cluster here: the files are read as YAML and checked for what scaling
needs, every command they run is parsed by the real click CLI, and the scaler's query by
Microsoft's T-SQL grammar (and run on a SQL Server engine when ``SQLBRIDGE_TEST_MSSQL_URL``
names one). The install race runs for real, on SQLite and on SQL Server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from sqlalchemy import delete, insert, select, text

from sqlbridge import install as installer
from sqlbridge import tsql
from sqlbridge.cli import main
from sqlbridge.config import ENV_NAMES, Settings
from sqlbridge.db import make_engine
from sqlbridge.queue import Queue
from sqlbridge.schema import circuit_breaker, metadata, outbox, schema_version

from .conftest import MSSQL_URL, NO_MSSQL

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
KUBE = ROOT / "deploy" / "kubernetes"
OPERATIONS = ROOT / "docs" / "operations.md"
README = ROOT / "README.md"
IMAGE_USER = 10001  # the Dockerfile's USER
needs_server = pytest.mark.skipif(not MSSQL_URL, reason=NO_MSSQL)


def cli(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``sqlbridge ARGV`` with the real CLI, running nothing: (command, its options).
    An unknown command or option, or a value of the wrong type, raises click's UsageError."""
    root = click.Context(main, info_name="sqlbridge")
    command = main.get_command(root, argv[0])
    if command is None:
        raise click.UsageError(f"no such command {argv[0]!r}")
    with command.make_context(argv[0], list(argv[1:]), parent=root) as ctx:
        return argv[0], dict(ctx.params)


def test_the_cli_parser_used_here_really_refuses_what_the_cli_refuses() -> None:
    assert cli(["worker", "--concurrency", "8"])[1]["concurrency"] == 8
    for bad in (["wroker"], ["worker", "--concurency", "8"], ["worker", "--concurrency", "x"]):
        with pytest.raises(click.UsageError):
            cli(bad)


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# -- docker compose --scale worker=N --------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def sqlbridge_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the sqlbridge image (its ENTRYPOINT is ``sqlbridge``)."""
    return {name: s for name, s in compose()["services"].items()
            if s.get("image") == "sqlbridge:latest"}


def test_the_compose_worker_scales() -> None:
    worker = compose()["services"]["worker"]
    # Each of these makes `--scale worker=2` fail or the replicas collide.
    assert "container_name" not in worker
    assert "hostname" not in worker
    assert not worker.get("ports"), "a published host port lets one replica start, not N"
    assert "volumes" not in worker, "replicas share nothing but the database"
    assert worker.get("expose") == [option(worker["command"], "--metrics-port")]
    assert worker["healthcheck"]["test"][0] == "CMD"
    assert worker["restart"] == "unless-stopped"
    # The schema comes from the one-shot install, finished before any replica starts.
    assert worker["depends_on"] == {"install": {"condition": "service_completed_successfully"}}
    install = compose()["services"]["install"]
    assert install["restart"] == "no" and cli(install["command"])[0] == "install"


def test_every_compose_command_is_a_real_cli_command() -> None:
    services = sqlbridge_services()
    assert set(services) == {"install", "worker"}
    for name, service in services.items():
        command, params = cli(service["command"])
        assert command == name
        for key in service.get("environment", {}):
            assert key.removesuffix("_FILE") in ENV_NAMES, (name, key)
    params = cli(services["worker"]["command"])[1]
    assert params["metrics_bind"] == "0.0.0.0"  # reachable by Prometheus on the network


def test_the_image_s_entrypoint_is_the_cli_the_commands_are_parsed_by() -> None:
    text_ = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r'^ENTRYPOINT \["sqlbridge"\]$', text_, re.M)
    assert re.search(rf"^USER {IMAGE_USER}:{IMAGE_USER}$", text_, re.M)


# -- Kubernetes ----------------------------------------------------------------------------------

def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object under deploy/kubernetes/, by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in found, f"{key} twice"
                found[key] = doc
    return found


def only_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec["containers"]
    assert len(containers) == 1
    return containers[0]


def deployment() -> dict[str, Any]:
    return manifests()[("Deployment", "sqlbridge-worker")]


def test_the_manifests_are_these_objects() -> None:
    assert set(manifests()) == {("Job", "sqlbridge-install"),
                                ("Deployment", "sqlbridge-worker"),
                                ("TriggerAuthentication", "sqlbridge-keda"),
                                ("ScaledObject", "sqlbridge-worker")}


def test_the_worker_deployment_runs_the_worker_command_with_probes_on_its_health_port() -> None:
    d = deployment()
    spec, pod = d["spec"], d["spec"]["template"]["spec"]
    assert "replicas" not in spec, "KEDA owns the count; kubectl apply would reset it"
    assert spec["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"][
        "labels"].items()
    c = only_container(pod)
    command, params = cli(c["args"])
    assert command == "worker" and params["metrics_bind"] == "0.0.0.0"
    port = params["metrics_port"]
    assert [p["containerPort"] for p in c["ports"] if p["name"] == "metrics"] == [port]
    # The endpoints of sqlbridge/health.py, through the named port.
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # The kubelet's SIGKILL comes after the worker's own grace for calls in flight.
    assert params["grace"] < pod["terminationGracePeriodSeconds"] <= params["grace"] + 30


def secret_files(pod: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Mounted path of each secret file -> (Secret name, key)."""
    c = only_container(pod)
    volumes = {v["name"]: v for v in pod["volumes"]}
    out: dict[str, tuple[str, str]] = {}
    for mount in c["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        assert mount.get("readOnly") is True
        for item in secret["items"]:
            out[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return out


@pytest.mark.parametrize("kind, name", [("Deployment", "sqlbridge-worker"),
                                        ("Job", "sqlbridge-install")])
def test_secrets_reach_the_pods_as_files_never_as_values(kind: str, name: str) -> None:
    pod = manifests()[(kind, name)]["spec"]["template"]["spec"]
    files = secret_files(pod)
    env = only_container(pod)["env"]
    for var in env:
        assert "value" in var and "valueFrom" not in var, var  # no secretKeyRef as a value
        assert var["name"].endswith("_FILE") and var["name"].removesuffix("_FILE") in ENV_NAMES
        assert var["value"] in files, f"{var['name']} names a file no Secret provides"
    assert any(v["name"] == "SQLBRIDGE_DATABASE_URL_FILE" for v in env)


@pytest.mark.parametrize("kind, name", [("Deployment", "sqlbridge-worker"),
                                        ("Job", "sqlbridge-install")])
def test_the_pods_run_as_the_image_s_unprivileged_user(kind: str, name: str) -> None:
    pod = manifests()[(kind, name)]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_USER
    assert pod["automountServiceAccountToken"] is False
    c = only_container(pod)["securityContext"]
    assert c["allowPrivilegeEscalation"] is False and c["capabilities"]["drop"] == ["ALL"]
    assert c["readOnlyRootFilesystem"] is True
    image = only_container(pod)["image"]
    assert image == only_container(deployment()["spec"]["template"]["spec"])["image"]


def test_the_install_job_installs_once_with_its_own_login() -> None:
    job = manifests()[("Job", "sqlbridge-install")]
    pod = job["spec"]["template"]["spec"]
    assert cli(only_container(pod)["args"])[0] == "install"
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    assert job["spec"].get("parallelism", 1) == 1 and job["spec"].get("completions", 1) == 1
    # The owner login (DDL) is the install's alone; the workers' Secret items exclude it.
    install_url = secret_files(pod)["/run/secrets/sqlbridge/install-database-url"]
    worker_keys = {key for _, key in secret_files(deployment()["spec"]["template"]["spec"]
                                                  ).values()}
    assert install_url[1] not in worker_keys


def scaled_object() -> dict[str, Any]:
    return manifests()[("ScaledObject", "sqlbridge-worker")]


def keda_query() -> str:
    (trigger,) = scaled_object()["spec"]["triggers"]
    return trigger["metadata"]["query"]


def test_keda_scales_the_worker_deployment_on_the_queued_depth_view() -> None:
    so = scaled_object()
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"] == {"name": deployment()["metadata"]["name"]}
    # A worker also runs the schedules and lease recovery: never scaled to zero.
    assert so["spec"]["minReplicaCount"] >= 1
    assert so["spec"]["maxReplicaCount"] > so["spec"]["minReplicaCount"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "mssql"
    assert float(trigger["metadata"]["targetValue"]) > 0
    assert keda_query() == f"SELECT depth FROM sqlbridge.{tsql.QUEUED_DEPTH_VIEW}"
    # Its credentials come from a Secret through the TriggerAuthentication beside it.
    auth = manifests()[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    refs = auth["spec"]["secretTargetRef"]
    assert [r["parameter"] for r in refs] == ["connectionString"]
    assert not any(k in trigger["metadata"] for k in ("connectionString", "password"))


def test_the_scaler_s_query_parses_as_t_sql_and_reads_a_view_that_is_installed(
        tmp_path: Path) -> None:
    from .test_tsql_parse import parse_errors

    assert parse_errors(keda_query(), tmp_path) == ""
    views = (tsql.SQL_DIR / "120_views.sql").read_text(encoding="utf-8")
    assert f"CREATE VIEW sqlbridge.{tsql.QUEUED_DEPTH_VIEW} AS\nSELECT COUNT_BIG(*) AS depth" \
        in views
    # The login KEDA borrows from the workers may read it.
    assert f"GRANT SELECT ON sqlbridge.{tsql.QUEUED_DEPTH_VIEW} TO {tsql.WORKER};" in views


def test_the_view_is_served_by_the_queued_rows_filtered_index() -> None:
    """Its filter is the claim index's: status = 'queued' (a constant, so the filtered index
    matches) and a range on available_at, that index's first column."""
    index = next(i for i in outbox.indexes if i.name == "ix_outbox_claim")
    assert [c.name for c in index.columns][0] == "available_at"
    where = str(index.dialect_options["mssql"]["where"].compile(
        compile_kwargs={"literal_binds": True}))
    assert where.endswith("outbox.status = 'queued'"), where
    body = tsql.VIEWS[tsql.QUEUED_DEPTH_VIEW]
    assert "WHERE status = N'queued' AND available_at <= SYSUTCDATETIME()" in body


def test_the_docs_name_the_view_the_commands_and_what_was_not_run() -> None:
    ops = OPERATIONS.read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    for doc in (ops, readme):
        assert f"sqlbridge.{tsql.QUEUED_DEPTH_VIEW}" in doc
        assert "--scale worker=" in doc
    for needed in ("deploy/kubernetes/worker.yaml", "deploy/kubernetes/install-job.yaml",
                   "deploy/kubernetes/keda.yaml", keda_query(),
                   "not run on a cluster", "kubectl wait --for=condition=complete"):
        assert needed in ops, needed


# -- sqlbridge install raced by several installers ---------------------------------------------

RACERS = 6


def race_cli_install(db: Path) -> list[subprocess.CompletedProcess[str]]:
    """RACERS `sqlbridge install` processes started together on one fresh SQLite file."""
    exe = Path(sys.executable).with_name("sqlbridge")
    procs = [subprocess.Popen([str(exe), "install", "--database-url", f"sqlite:///{db}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(RACERS)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate())
            for p in procs]


@pytest.mark.slow
def test_racing_installs_on_a_fresh_sqlite_file_all_succeed_and_one_creates(
        tmp_path: Path) -> None:
    for round_ in range(2):  # a race shows only sometimes: give it two chances
        db = tmp_path / f"race{round_}.db"
        done = race_cli_install(db)
        assert [d.returncode for d in done] == [0] * RACERS, [d.stderr for d in done]
        applied = [d for d in done if "applied: sqlite:metadata" in d.stdout]
        assert len(applied) == 1, [d.stdout for d in done]
        engine = make_engine(f"sqlite:///{db}")
        try:
            assert installer.install(engine) == []
            with engine.connect() as conn:
                assert conn.execute(select(schema_version.c.version)).scalars().all() == [
                    installer.SQLITE_VERSION]
        finally:
            engine.dispose()


@pytest.mark.mssql
@needs_server
def test_racing_installs_on_sql_server_apply_a_new_script_exactly_once(tmp_path: Path) -> None:
    """Six installers at once, each with a new versioned script whose DDL fails if run twice:
    the application lock makes one apply it and the others find nothing left to do."""
    assert MSSQL_URL
    scripts = tmp_path / "sql"
    shutil.copytree(installer.SQL_DIR, scripts)
    tag = uuid.uuid4().hex[:10]
    name = f"099_race_{tag}.sql"
    (scripts / name).write_text(f"CREATE TABLE sqlbridge.race_{tag} (id INT NOT NULL);\nGO\n",
                                encoding="utf-8")
    engines = [make_engine(MSSQL_URL) for _ in range(RACERS)]
    installer.install(engines[0])  # the shipped scripts are in place before the race
    for engine in engines:  # logged in before the start, so the installers really overlap
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    start = threading.Barrier(RACERS)
    results: list[Any] = [None] * RACERS

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = installer.install(engines[i], directory=scripts)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(RACERS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not [r for r in results if isinstance(r, Exception)], results
        assert sorted(results, key=len) == [[]] * (RACERS - 1) + [[name]]
    finally:
        with engines[0].begin() as conn:
            conn.execute(text(f"IF OBJECT_ID(N'sqlbridge.race_{tag}', N'U') IS NOT NULL "
                              f"DROP TABLE sqlbridge.race_{tag}"))
            conn.execute(delete(schema_version).where(schema_version.c.version == name))
        for engine in engines:
            engine.dispose()


@pytest.mark.mssql
@needs_server
def test_the_scaler_s_query_counts_the_due_requests_on_sql_server() -> None:
    assert MSSQL_URL
    engine = make_engine(MSSQL_URL)
    try:
        installer.install(engine)
        with engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                if table.name != "schema_version":
                    conn.execute(delete(table))
        queue = Queue(engine, Settings(database_url=MSSQL_URL))
        params = {"platform": "whatsapp", "platformid": "100", "destination": "34600001000",
                  "message": "depth"}
        for _ in range(3):
            queue.enqueue("chat.sendmessage", params)
        later = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
        queue.enqueue("chat.sendmessage", params, not_before=later)  # not due: not counted
        for _ in range(2):  # due, but an open circuit breaker pauses them: not counted
            queue.enqueue("chat.sendmessage", params, account="paused")
        with engine.begin() as conn:
            conn.execute(insert(circuit_breaker).values(
                account="paused", provider="afilnet", state="open", failures=5,
                open_until=later, cooldown=30.0, trips=1))
        with engine.connect() as conn:
            rows = conn.execute(text(keda_query())).all()
        assert len(rows) == 1 and len(rows[0]) == 1 and int(rows[0][0]) == 3
    finally:
        engine.dispose()
