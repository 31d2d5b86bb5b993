"""Red-team attempts on the reads ahead (issue 18), through the real healer and the sandbox.

What changed: a rotation reads the secret, the gateways' data source lists, a Fabric token and a
gateway's key side by side (``Run.read_ahead`` / ``Run.take_read``), the threads of one run list
the gateways once (``GatewayKeys._on_premises`` under the run's ``GATEWAY_LIST`` lock), and an
acceptance gives the target's lease up in the same write as the applied version
(``record_applied(release=True)``).

Attacked: per account and secret version at most one failed sign-in caused by the healer, one
PATCH per target and version, no secret value in a log record or outcome, no read ahead
outliving its run, and no run held past its deadline by another.

Sections 1-5 held and are kept as regression tests. Section 6 broke the first version, which
let one caller of the *instance* list the gateways at a time: one run's slow or throttled GET
/gateways held every other run that needed a gateway key past its deadline (nothing was sent,
but a target that would have been healed at once, or deferred at once when throttled, was
reported failed or busy after its deadline). Now only the threads of one run share the listing.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from remediation.config.settings import Settings
from remediation.edges.runtime import build_healer
from remediation.reconciler.healer import Action
from sandbox import Sandbox
from sandbox.powerbi import pbi_error
from tests.sandbox.test_echoed_secrets import without_telemetrys_log_filter
from tests.support.harness import Harness, Make
from tests.support.world import World, build_world

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*"),
    pytest.mark.timeout(90),
]

PATCH = "powerbi.update_datasource"
LISTS = "powerbi.get_gateway_datasources"


def wrong_value() -> str:
    return "Wrong#" + secrets.token_urlsafe(8)


def patches(sb: Sandbox) -> list[Any]:
    return sb.requests.find(PATCH)


def patches_per_target(sb: Sandbox) -> dict[str, int]:
    counted: dict[str, int] = {}
    for request in patches(sb):
        if request.status == 429:
            continue
        counted[request.path] = counted.get(request.path, 0) + 1
    return counted


def spread_world(sb: Sandbox, *, gateways: int = 3, per_gateway: int = 2, servers: int = 1) -> World:
    """One account (one secret) on ``gateways`` gateways, ``per_gateway`` data sources each, all
    on ``servers`` SQL servers: the reads ahead read the gateways' lists side by side."""
    w = build_world(sb, sources=per_gateway, servers=servers)
    for g in range(1, gateways):
        gateway = sb.powerbi.add_gateway(f"gw{g}", bits=2048, admins=[w.app.client_id])
        for i in range(per_gateway):
            source = sb.sources.add(f"g{g}-src{i}", credential_type="Basic", account=w.account)
            datasource = sb.powerbi.add_datasource(
                gateway,
                source,
                connection_details={"server": f"sql{i % servers}.local", "database": source.id},
            )
            sb.powerbi.set_refusal(datasource, w.refusal)
            dataset = sb.powerbi.add_dataset(
                w.workspace, f"{source.id} model", [datasource], owner=w.app.client_id
            )
            w.sources.append(source)
            w.datasources.append(datasource)
            w.datasets.append(dataset)
    return w


# =====================================================================================================
# 1. Errors in a read ahead: Key Vault
# =====================================================================================================
def test_a_key_vault_outage_on_the_read_ahead_sends_nothing_and_the_next_run_heals(
    make: Make, sb: Sandbox
) -> None:
    h = make(spread_world(sb))
    w = h.world
    w.rotate()
    sb.requests.clear()
    sb.faults.add("keyvault.get_secret", status=503, times=200)

    report = h.healer.heal_secret(w.secret_name, retry_refreshes=False)

    assert patches(sb) == []
    assert {o.action for o in report.targets()} == {Action.FAILED}, report.to_dict()
    assert w.account.total_failures == 0
    sb.faults.clear()
    healed = h.healer.heal_secret(w.secret_name, retry_refreshes=False)
    assert {o.action for o in healed.targets()} == {Action.UPDATED}, healed.to_dict()
    assert set(patches_per_target(sb).values()) == {1}


def test_a_wrong_value_read_ahead_after_a_transient_key_vault_error_costs_one_failed_sign_in(
    make: Make, sb: Sandbox
) -> None:
    h = make(spread_world(sb))
    w = h.world
    wrong = wrong_value()
    w.put_in_vault(wrong)
    sb.requests.clear()
    sb.faults.add("keyvault.get_secret", status=503, times=1)

    reports = [h.healer.heal_secret(w.secret_name), h.another_instance().healer.heal_secret(w.secret_name)]

    assert w.account.failures_of(wrong) == 1, [r.to_dict() for r in reports]
    assert len(patches(sb)) == 1


# =====================================================================================================
# 2. Errors in a read ahead: the gateways' lists
# =====================================================================================================
@pytest.mark.parametrize("status", [503, 404, 429])
def test_a_failing_gateway_list_read_ahead_costs_one_failed_sign_in_for_a_wrong_value(
    make: Make, sb: Sandbox, status: int
) -> None:
    h = make(spread_world(sb, gateways=4))
    w = h.world
    wrong = wrong_value()
    w.put_in_vault(wrong)
    sb.requests.clear()
    headers = {"Retry-After": "1"} if status == 429 else None
    sb.faults.add(LISTS, status=status, headers=headers, times=2)

    reports = [h.healer.heal_secret(w.secret_name), h.another_instance().healer.sweep()]

    assert w.account.failures_of(wrong) == 1, [r.to_dict() for r in reports]
    assert len(patches(sb)) == 1


@pytest.mark.parametrize("status", [503, 404])
def test_a_failing_gateway_list_read_ahead_still_heals_each_target_once(
    make: Make, sb: Sandbox, status: int
) -> None:
    h = make(spread_world(sb, gateways=4))
    w = h.world
    w.rotate()
    sb.requests.clear()
    sb.faults.add(LISTS, status=status, times=3)

    report = h.healer.heal_secret(w.secret_name, retry_refreshes=False)

    assert {o.action for o in report.targets()} == {Action.UPDATED}, report.to_dict()
    assert set(patches_per_target(sb).values()) == {1}, patches_per_target(sb)
    assert w.account.total_failures == 0


# =====================================================================================================
# 3. Two instances on one ledger: the lease now goes with the applied version
# =====================================================================================================
@pytest.mark.parametrize("round_", range(2))
def test_two_instances_healing_one_rotation_side_by_side_patch_each_target_once(
    make: Make, sb: Sandbox, round_: int
) -> None:
    h = make(spread_world(sb, gateways=3, per_gateway=3), env={"REMEDIATION_CONCURRENCY": "4"})
    w = h.world
    others = [h.another_instance() for _ in range(2)]
    for _ in range(2):
        w.rotate()
        sb.requests.clear()
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [
                pool.submit(h.healer.heal_secret, w.secret_name, retry_refreshes=False),
                pool.submit(others[0].healer.heal_secret, w.secret_name, retry_refreshes=False),
                pool.submit(others[1].healer.sweep),
            ]
            reports = [f.result(timeout=60) for f in futures]
        # A target every run found busy is left to the next run (not a break): it heals it.
        reports.append(h.healer.heal_secret(w.secret_name, retry_refreshes=False))
        counted = patches_per_target(sb)
        assert all(n == 1 for n in counted.values()), (counted, [r.to_dict() for r in reports])
        assert all(w.stored_secret(d) == w.secret for d in w.datasources)
        assert w.account.failures_of(w.secret) == 0


@pytest.mark.parametrize("round_", range(2))
def test_two_instances_presenting_a_wrong_value_side_by_side_cost_one_failed_sign_in(
    make: Make, sb: Sandbox, round_: int
) -> None:
    h = make(spread_world(sb, gateways=3, per_gateway=2), env={"REMEDIATION_CONCURRENCY": "4"})
    w = h.world
    others = [h.another_instance() for _ in range(3)]
    wrong = wrong_value()
    w.put_in_vault(wrong)
    sb.requests.clear()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(h.healer.heal_secret, w.secret_name)]
        futures += [pool.submit(o.healer.heal_secret, w.secret_name) for o in others[:2]]
        futures.append(pool.submit(others[2].healer.sweep))
        reports = [f.result(timeout=60) for f in futures]

    assert w.account.failures_of(wrong) == 1, [r.to_dict() for r in reports]
    assert len(patches(sb)) == 1


# =====================================================================================================
# 4. Secrets in the texts that leave a run, with reads ahead in flight
# =====================================================================================================
def test_a_password_echoed_while_reads_ahead_run_is_in_no_log_record_or_outcome(
    make: Make, sb: Sandbox, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the gateway reads made after the run holds the secret, in read-ahead threads,
    echo it (500s); their log records (http, retry, gateway kind) and the outcomes are masked
    by the run (not by telemetry's filter, which is taken off here)."""
    caplog.set_level(logging.DEBUG)
    without_telemetrys_log_filter(monkeypatch, caplog)
    h = make(spread_world(sb, gateways=3))
    w = h.world
    password = "Echoed Pässwort-" + secrets.token_hex(4)
    w.rotate(password)
    message = f"The value '{password}' is not valid for password."
    body = pbi_error("InvalidRequest", [{"code": "InvalidValue", "detail": {"type": 1, "value": message}}])
    body["error"]["message"] = message
    sb.faults.add(PATCH, status=400, after=True, body=body)
    # The gateway reads (made after the run holds the secret, some in read-ahead threads) echo it
    # too (a service that repeats a value it was sent).
    sb.faults.add("powerbi.get_gateway", status=500, body=body, times=50)
    sb.faults.add("powerbi.get_gateways", status=500, body=body, times=50)

    report = h.healer.heal_secret(w.secret_name)
    later = h.another_instance().healer.sweep()

    texts = json.dumps(report.to_dict(), ensure_ascii=False) + json.dumps(later.to_dict(), ensure_ascii=False)
    logs = caplog.text + "".join(repr(r.args) + str(r.__dict__) for r in caplog.records)
    assert password not in texts
    assert password not in logs
    # The echoes did reach log records written in read-ahead threads (masked there).
    assert any(
        r.threadName.startswith("read-ahead") and "[REDACTED]" in r.getMessage() for r in caplog.records
    )


# =====================================================================================================
# 5. A run that ends early, with reads ahead in flight
# =====================================================================================================
def read_ahead_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("read-ahead")]


def test_no_read_ahead_outlives_a_run_that_ends_early(
    make: Make, sb: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: NotBound (every gateway's list read ahead), a deadline already passed, and an
    error out of the resolver while the secret is read ahead: each run ends once its reads have,
    leaves no thread, sends nothing."""
    h = make(spread_world(sb, gateways=3))
    w = h.world
    w.put_in_vault(wrong_value())
    sb.requests.clear()
    sb.faults.add(LISTS, delay=1.0, times=3)  # the lists are slow
    with pytest.raises(Exception, match="no binding covers"):
        h.healer.heal_target(w.gateway_id, "00000000-0000-4000-8000-000000000000")
    assert read_ahead_threads() == []

    report = h.healer.heal_secret(w.secret_name, deadline=time.time() - 1)
    assert {o.action for o in report.targets()} == {Action.DEFERRED}, report.to_dict()
    assert read_ahead_threads() == []

    def broken() -> Any:
        raise RuntimeError("the inventory cannot be read")

    monkeypatch.setattr(h.healer.refresher.inventory, "known_sources", broken)
    with pytest.raises(RuntimeError):
        h.healer.heal_secret(w.secret_name)
    assert read_ahead_threads() == []
    assert patches(sb) == []
    assert w.account.total_failures == 0


# =====================================================================================================
# 6. One run's GET /gateways holds the other runs of the instance (GatewayKeys._reading)
# =====================================================================================================
def _two_runs_on_one_instance(
    h: Harness, runtime: Any, first: str, second: str, deadline_in: float, hold_for: float, *, held: bool
) -> tuple[float, Any, bool]:
    """Run A heals ``first`` (no deadline) and is inside GET /gateways; then run B, on the same
    healer, heals ``second`` with a deadline ``deadline_in`` seconds away. Returns how long B took
    (up to ``hold_for``), its report, and whether B was still running after ``hold_for``."""
    w, sb = h.world, h.sb
    done: dict[str, Any] = {}
    a = threading.Thread(
        target=lambda: done.setdefault("a", runtime.healer.heal_target(w.gateway_id, first, trigger="queue"))
    )
    a.start()
    outcome: dict[str, Any] = {}
    try:
        assert sb.faults.wait_held("powerbi.get_gateways", timeout=20) if held else wait_for_request(sb)
        started = time.monotonic()
        deadline = time.time() + deadline_in
        b = threading.Thread(
            target=lambda: outcome.setdefault(
                "b", runtime.healer.heal_target(w.gateway_id, second, trigger="queue", deadline=deadline)
            )
        )
        b.start()
        b.join(timeout=hold_for)
        took = time.monotonic() - started
        still_running = b.is_alive()
    finally:
        sb.faults.release_held()
        a.join(timeout=60)
    b.join(timeout=60)
    return took, outcome["b"], still_running


def wait_for_request(sb: Sandbox) -> bool:
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if sb.requests.find("powerbi.get_gateways"):
            time.sleep(0.3)  # its answer (a 429) is in, and the run waits out Retry-After
            return True
        time.sleep(0.02)
    return False


def test_a_slow_gateway_list_of_one_run_does_not_hold_another_run_of_the_instance(
    make: Make, sb: Sandbox
) -> None:
    """Run A's GET /gateways is slow (its answer held); run B of the same instance, with a
    deadline 3 s away, needs the gateway's key: B reads the list itself and heals its target at
    once, not after A's answer."""
    h = make(sources=2, servers=1)
    w = h.world
    w.rotate()
    sb.requests.clear()
    sb.faults.add("powerbi.get_gateways", hold=True, times=1)

    took, report, still_running = _two_runs_on_one_instance(
        h, h.runtime, w.datasource_ids[0], w.datasource_ids[1], deadline_in=3.0, hold_for=8.0, held=True
    )

    assert not still_running, f"run B waited {took:.1f}s (its deadline: 3 s) for run A's GET /gateways"
    assert [o.action for o in report.targets()] == [Action.UPDATED], report.to_dict()


def test_a_run_is_not_held_past_its_deadline_by_another_runs_throttled_gateway_list(
    make: Make, sb: Sandbox
) -> None:
    """Run A (no deadline) is told to wait 8 s before GET /gateways (429, Retry-After) and waits
    it out, as it may. Run B of the same instance has a deadline 2 s away: a throttling wait past
    its deadline is not begun, the work is deferred to a later run (retry.deadline_scope); B does
    not wait out A's Retry-After."""
    h = make(sources=2, servers=1)
    w = h.world
    w.rotate()
    real = build_healer(Settings.from_env(h.env), sleep=time.sleep, poll_interval=0.01)
    try:
        sb.requests.clear()
        sb.faults.throttle("powerbi.get_gateways", retry_after=8)

        took, report, still_running = _two_runs_on_one_instance(
            h, real, w.datasource_ids[0], w.datasource_ids[1], deadline_in=2.0, hold_for=5.0, held=False
        )
    finally:
        real.close()

    assert not still_running, f"run B waited {took:.1f}s (its deadline: 2 s) for run A's Retry-After"
    assert [o.action for o in report.targets()] == [Action.DEFERRED], report.to_dict()
