"""A smoke run of the benchmark with tiny numbers: it runs end to end and writes every figure.
Not a speed test (no figure is checked against a target; those live in the printout)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_benchmark_runs_and_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_queue.py"), "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["sequential_req_per_s"] > 0 and figures["sandbox_capacity_req_per_s"] > 0
    assert [(r["concurrency"], r["processes"]) for r in figures["worker"]] == [(1, 1), (8, 1),
                                                                              (8, 2)]
    assert all(r["succeeded"] == r["requests"] for r in figures["worker"])
    for key in ("wakeup_p50_ms", "wakeup_p99_ms", "idle_statements_per_min"):
        assert key in figures["idle"]
    assert figures["backlog"]["claim_50_ms"] > 0 and figures["bulk"]["bulk_rows_per_s"] > 0
    assert figures["peak_rss_mb"] > 0
    for line in ("sequential (sp_OA pattern)", "worker c=8 (2 processes)", "idle worker:",
                 "claim of 50:", "bulk enqueue", "peak resident memory"):
        assert line in done.stdout


@pytest.mark.slow
def test_the_per_request_cpu_breakdown_runs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_request_cpu.py"),
                           "--requests", "40", "--batch", "10"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "40 requests, batches of 10" in done.stdout
    assert "CPU per request (ms): claim " in done.stdout
