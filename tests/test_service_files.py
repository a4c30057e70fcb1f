"""The service files in docs/ and docker/, tried as far as this machine allows: the systemd unit
with systemd's own verifier, the Dockerfile and compose file read instruction by instruction (no
Docker engine here)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from sqlbridge.config import ENV_NAMES

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "docs" / "sqlbridge-worker.service"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "docker-compose.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
# The worker's default grace period for calls in flight (worker --grace).
GRACE_SECONDS = 30


def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value.strip())
    assert m, value
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


# -- systemd -------------------------------------------------------------------------------------

def test_the_unit_stops_gracefully_restarts_and_is_hardened() -> None:
    s = unit_settings(UNIT.read_text(encoding="utf-8"))
    assert s["KillSignal"] == ["SIGTERM"] and s["KillMode"] == ["mixed"]
    assert s["Restart"] == ["on-failure"]
    exec_start = shlex.split(s["ExecStart"][0])
    assert exec_start[1] == "worker" and "--metrics-port" in exec_start
    grace = GRACE_SECONDS
    if "--grace" in exec_start:
        grace = int(exec_start[exec_start.index("--grace") + 1])
    stop = seconds(s["TimeoutStopSec"][0])
    assert grace < stop <= grace + 30, "TimeoutStopSec must cover the grace period, briefly"
    assert s["EnvironmentFile"] == ["/etc/sqlbridge/worker.env"]
    assert not any(k.startswith("Environment") and "PASSWORD" in v.upper()
                   for k, vs in s.items() for v in vs), "secrets belong in the EnvironmentFile"
    assert s["User"] == ["sqlbridge"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
                       "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes"}.items():
        assert s.get(key) == [value], key


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return path


def verify(tmp_path: Path, text: str) -> str:
    """systemd-analyze verify's complaints about the unit ('' when it has none). ExecStart
    must name an executable that exists, so it points at this checkout's sqlbridge."""
    here = Path(sys.executable).with_name("sqlbridge")
    unit = tmp_path / "sqlbridge-worker.service"
    unit.write_text(text.replace("/opt/sqlbridge/bin/sqlbridge", str(here)), encoding="utf-8")
    done = subprocess.run([systemd_analyze(), "verify", str(unit)], capture_output=True,
                          text=True, timeout=120)
    return (done.stdout + done.stderr).strip() + ("" if done.returncode == 0 else
                                                  f" (exit {done.returncode})")


def test_systemd_verifies_the_unit_without_a_warning(tmp_path: Path) -> None:
    assert verify(tmp_path, UNIT.read_text(encoding="utf-8")) == ""


@pytest.mark.parametrize("old, new", [
    ("Restart=on-failure", "Restart=sometimes"),
    ("KillSignal=SIGTERM", "KillSignal=SIGFOO"),
    ("ProtectSystem=strict", "ProtectSytem=strict"),
])
def test_the_verifier_really_catches_a_broken_unit(tmp_path: Path, old: str, new: str) -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert old in text
    assert verify(tmp_path, text.replace(old, new)) != ""


def test_systemd_rates_the_unit_s_exposure_low(tmp_path: Path) -> None:
    unit = tmp_path / "sqlbridge-worker.service"
    unit.write_text(UNIT.read_text(encoding="utf-8"), encoding="utf-8")
    done = subprocess.run([systemd_analyze(), "security", "--offline=yes", str(unit)],
                          capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    if done.returncode != 0 and m is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit offline: {done.stderr.strip()}")
    assert m, done.stdout
    print(f"systemd exposure level: {m.group(1)}")
    assert float(m.group(1)) <= 2.0  # systemd calls up to 2.9 "OK"; 10 is "UNSAFE"


# -- Dockerfile ----------------------------------------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        result[-1].append(ins)
    return result


def test_the_image_installs_the_built_wheel_not_the_source_tree() -> None:
    build, final = stages(DOCKERFILE.read_text(encoding="utf-8"))
    assert build[0] == ("FROM", "python:3.11-slim AS build")
    assert any(i == "RUN" and "pip wheel" in a and "--wheel-dir /wheels" in a for i, a in build)
    copies = [a for i, a in final if i == "COPY"]
    assert copies == ["--from=build /wheels /tmp/wheels"], "only wheels cross into the image"
    assert any(i == "RUN" and "pip install" in a and "--no-index --find-links /tmp/wheels" in a
               and "sqlbridge[mssql]" in a for i, a in final)


def test_the_image_runs_as_a_user_with_a_healthcheck_on_healthz() -> None:
    final = stages(DOCKERFILE.read_text(encoding="utf-8"))[-1]
    names = [i for i, _ in final]
    user = [a for i, a in final if i == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert names.index("USER") < names.index("ENTRYPOINT")
    health = dict(final)["HEALTHCHECK"]
    cmd = dict(final)["CMD"]
    port = re.search(r'"--metrics-port", "(\d+)"', cmd)
    assert port and f"http://127.0.0.1:{port.group(1)}/healthz" in health
    assert ("EXPOSE", port.group(1)) in final
    assert dict(final)["STOPSIGNAL"] == "SIGTERM"
    assert dict(final)["ENTRYPOINT"] == '["sqlbridge"]'
    assert "PASSWORD" not in " ".join(a for i, a in final if i == "ENV")


# -- compose -------------------------------------------------------------------------------------

def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_compose_runs_sql_server_then_a_one_shot_install_then_the_worker() -> None:
    c = compose()
    services = c["services"]
    assert services["mssql"]["image"] == "mcr.microsoft.com/mssql/server:2022-latest"
    assert "healthcheck" in services["mssql"]
    install = services["install"]
    assert install["command"] == ["install"] and install["restart"] == "no"
    assert install["depends_on"] == {"create-database": {
        "condition": "service_completed_successfully"}}
    assert services["create-database"]["depends_on"]["mssql"]["condition"] == "service_healthy"
    worker = services["worker"]
    assert worker["depends_on"] == {"install": {"condition": "service_completed_successfully"}}
    assert worker["command"][0] == "worker"
    port = worker["command"][worker["command"].index("--metrics-port") + 1]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])
    grace = float(worker["command"][worker["command"].index("--grace") + 1])
    assert grace < seconds(worker["stop_grace_period"]) <= grace + 30
    assert worker["stop_signal"] == "SIGTERM"
    # scripts/test-mssql starts only mssql: the rest waits behind a profile.
    assert "profiles" not in services["mssql"]
    assert all(services[s]["profiles"] == ["worker"] for s in
               ("create-database", "install", "worker"))


def test_compose_passes_secrets_as_files_and_publishes_on_loopback_only() -> None:
    c = compose()
    declared = set(c["secrets"])
    for name, service in c["services"].items():
        env = service.get("environment", {})
        for key, value in env.items():
            if key.endswith("_FILE"):
                assert key.removesuffix("_FILE") in ENV_NAMES, f"config.py reads no {key}"
                secret = value.removeprefix("/run/secrets/")
                assert value.startswith("/run/secrets/") and secret in service["secrets"], key
                assert secret in declared
            elif not service.get("image", "").startswith("mcr.microsoft.com/mssql/"):
                # (SQL Server's own image takes its sa password only as a variable)
                assert "PASSWORD" not in key and "DATABASE_URL" not in key, (name, key)
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), (name, mapping)


def test_operations_doc_shows_the_unit_and_a_windows_service() -> None:
    doc = OPERATIONS.read_text(encoding="utf-8")
    assert UNIT.read_text(encoding="utf-8").strip() in doc
    assert "<stopsignal>CTRL_C</stopsignal>" not in doc or "WinSW" in doc
    for needed in ("WinSW", "<stoptimeout>45 sec</stoptimeout>", "scrape_configs",
                   "sqlbridge_queue_oldest_age_seconds", "sqlbridge_queue_requests",
                   "MultiSubnetFailover=Yes"):
        assert needed in doc, needed


def winsw_config() -> ET.Element:
    doc = OPERATIONS.read_text(encoding="utf-8")
    m = re.search(r"```xml\n(<service>.*?</service>)\n```", doc, re.S)
    assert m, "docs/operations.md has no WinSW <service> configuration"
    return ET.fromstring(m.group(1))  # well-formed, or this raises


def test_the_windows_service_recipe_stops_like_the_systemd_unit() -> None:
    service = winsw_config()
    assert service.findtext("executable", "").endswith("\\Scripts\\sqlbridge.exe")
    arguments = service.findtext("arguments", "").split()
    assert arguments[0] == "worker"
    grace = float(arguments[arguments.index("--grace") + 1])
    # WinSW sends Ctrl+C, then waits stoptimeout: the same budget as TimeoutStopSec.
    m = re.fullmatch(r"(\d+) sec", service.findtext("stoptimeout", ""))
    unit = unit_settings(UNIT.read_text(encoding="utf-8"))
    assert m and float(m.group(1)) == seconds(unit["TimeoutStopSec"][0].removesuffix("s"))
    assert grace < float(m.group(1))
    assert [f.get("action") for f in service.findall("onfailure")][0] == "restart"
    for env in service.findall("env"):
        name = env.get("name", "")
        assert name.endswith("_FILE") and name.removesuffix("_FILE") in ENV_NAMES, name
    assert service.find(".//password") is None  # no password in the service definition


def test_every_t_sql_example_in_the_operations_doc_parses(tmp_path: Path) -> None:
    from .test_tsql_parse import parse_errors

    blocks = re.findall(r"```sql\n(.*?)```", OPERATIONS.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        assert parse_errors(block, tmp_path, f"example{i}.sql") == "", block


def test_the_image_s_healthcheck_command_really_tells_healthy_from_not(tmp_path: Path) -> None:
    """Run the HEALTHCHECK's own command (its port pointed at a live endpoint): exit 0 while
    healthy, non-zero once /healthz answers 503."""
    import json

    from sqlbridge.db import make_engine
    from sqlbridge.dberrors import DbError
    from sqlbridge.metrics import MetricsServer, WorkerMetrics

    final = stages(DOCKERFILE.read_text(encoding="utf-8"))[-1]
    image_check = json.loads(dict(final)["HEALTHCHECK"].split(" CMD ", 1)[1])
    compose_check = compose()["services"]["worker"]["healthcheck"]["test"][1:]  # after "CMD"
    for command in (image_check, compose_check):
        metrics = WorkerMetrics(stall_after=3600)
        engine = make_engine(f"sqlite:///{tmp_path / 'h.db'}")
        with MetricsServer(metrics, engine, port=0, queue_interval=3600) as server:
            port = str(server.address[1])
            argv = [sys.executable if a == "python" else a.replace("9464", port)
                    for a in command]
            assert subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
            metrics.db_error(DbError("disconnect", True))  # the database went away
            assert subprocess.run(argv, capture_output=True, timeout=60).returncode != 0
        engine.dispose()
