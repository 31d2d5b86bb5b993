"""The benchmarks still run (performance itself is measured by `make bench`, not by tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_benchmarks_run_and_heal_what_they_measure(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "heal",
            "--only",
            "rotation",
            "--only",
            "fanout",
            "--only",
            "tenant",
            "--only",
            "scanner",
            "--results",
            str(results),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(results.read_text())["rows"]
    cases = {(r["benchmark"], r["case"].split(":")[0]) for r in rows}
    assert ("heal", "warm") in cases and ("fanout", "N=10 G=4 c=8") in cases
    assert all(r["seconds"] > 0 for r in rows)
    rotation = [r for r in rows if r["benchmark"] == "rotation"]  # cold, one server, 4 gateways
    assert [r["case"] for r in rotation] == ["N=10 G=4 1 server c=8 cold"]
    assert all(r["calls"] == r["min_calls"] for r in rotation), rotation
    fanout = [r for r in rows if r["benchmark"] == "fanout"]
    assert all(r["calls"] == r["min_calls"] for r in fanout), fanout
    tenant = [r for r in rows if r["benchmark"] == "tenant"]
    assert [r["case"].split(": ")[1] for r in tenant] == ["first sweep", "steady sweep", "event"]
    assert all(r["calls"] == r["min_calls"] and r["extra"]["exit"] == 0 for r in tenant), tenant
    steady = tenant[1]
    assert steady["calls"] <= steady["extra"]["issue_bound"]  # 1 + W + 2B + 5
    scanner = [r for r in rows if r["benchmark"] == "scanner"]
    assert [r["case"].split(": ")[1] for r in scanner] == ["first sweep", "steady sweep", "+ 1 new dataset"]
    assert all(r["calls"] == r["min_calls"] and r["extra"]["exit"] == 0 for r in scanner), scanner
    assert scanner[0]["calls"] < tenant[0]["calls"]  # the scanner builds it in far fewer calls
