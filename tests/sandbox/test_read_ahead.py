"""A rotation reads what it needs side by side, not one thing after another (issue 18).

A rotation's time to "every data source holds the new password" is the product's headline
figure, and the reads in front of the first update are round trips a user waits for. The worker
here has not signed in yet, as after a cold start. Each test holds the sandbox's answers to the
reads that should be in flight together, and waits until all of them have arrived: code that
reads them in series never gets there (its first read waits for an answer that is held). Then
the answers go, and the rotation must still heal everything, once per data source, with the
reads the minimum (nothing is read twice because it was read ahead).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.worlds import SECRET, BenchWorld, build
from remediation.config.settings import Settings
from remediation.edges.runtime import build_healer
from remediation.reconciler.report import Action
from sandbox import Sandbox

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]

GATEWAYS = 4


@pytest.fixture
def rotation(
    sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[BenchWorld, Any]]:
    """Eight data sources of one account on four gateways (one SQL server), a rotated secret and
    a healer that has not made a request yet."""
    world = build(sb, targets=8, gateways=GATEWAYS, servers=1)
    env = sb.env(
        REMEDIATION_BINDINGS=world.bindings(),
        REMEDIATION_STATE_PATH=str(tmp_path / "ledger.db"),
        REMEDIATION_SETTLE_SECONDS="0",
    )
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING", None)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    runtime = build_healer(Settings.from_env())
    world.rotate()
    sb.requests.clear()
    try:
        yield world, runtime
    finally:
        runtime.close()


def _heal_while_held(sb: Sandbox, runtime: Any, held: dict[str, int]) -> tuple[bool, Any]:
    """Heal in a thread while the answers of ``held`` (route: how many) are held; True when all
    of those requests were in flight at once (else they are released after a few seconds)."""
    for route, times in held.items():
        sb.faults.add(route, hold=True, times=times)
    result: dict[str, Any] = {}

    def heal() -> None:
        result["report"] = runtime.healer.heal_secret(SECRET, retry_refreshes=False)

    worker = threading.Thread(target=heal)
    worker.start()
    together = _wait_for(lambda: all(sb.faults.held(r) == n for r, n in held.items()), 10.0)
    sb.faults.release_held()
    for route in held:  # a read in series: release each answer as it comes, to let the heal end
        while worker.is_alive() and _wait_for(lambda r=route: sb.faults.held(r) > 0, 0.5):
            sb.faults.release_held(route)
    worker.join(30)
    assert not worker.is_alive()
    return together, result["report"]


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not done.is_set():
            if condition():
                return True
            done.wait(0.01)
        return condition()
    finally:
        deadline.cancel()


def test_the_gateways_data_source_lists_and_the_secret_are_read_side_by_side(
    sb: Sandbox, rotation: tuple[BenchWorld, Any]
) -> None:
    world, runtime = rotation
    together, report = _heal_while_held(
        sb, runtime, {"powerbi.get_gateway_datasources": GATEWAYS, "keyvault.get_secret": 1}
    )

    assert together, "the four gateways' lists and the Key Vault read were not in flight at once"
    assert {o.action for o in report.targets()} == {Action.UPDATED}
    assert all(s.secret == world.password for s in world.sources)
    # Read ahead, read once: each list once, the secret once (after Key Vault's challenge, unless
    # the SDK's process-wide challenge cache knows this vault's address from an earlier test).
    assert len(sb.requests.find("powerbi.get_gateway_datasources")) == GATEWAYS
    reads = [r.status for r in sb.requests.find("keyvault.get_secret")]
    assert reads in ([401, 200], [200]), reads
    assert len(sb.requests.find("powerbi.update_datasource")) == len(world.bound)


def test_the_first_update_waits_for_the_gateway_key_and_the_privacy_levels_together(
    sb: Sandbox, rotation: tuple[BenchWorld, Any]
) -> None:
    world, runtime = rotation
    together, report = _heal_while_held(
        sb, runtime, {"powerbi.get_gateways": 1, "fabric.list_connections": 1}
    )

    assert together, "the gateway list (keys) and Fabric's connection list were read one after the other"
    assert {o.action for o in report.targets()} == {Action.UPDATED}
    assert len(sb.requests.find("powerbi.get_gateways")) == 1
    assert len(sb.requests.find("fabric.list_connections")) == 1
