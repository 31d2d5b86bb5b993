"""``make bench`` / ``python -m bench``: the benchmarks of the performance issues.

Every run is on the sandbox with a fixed per-request latency L (``--latency``, default 50 ms), so
the network, not this machine, sets the scale. Each row prints the measured time, its lower bound
(L x the round trips that cannot be avoided, given the concurrency), their ratio, and the API calls
made against the minimum for that flow. Results also go to ``bench/results/latest.json``.

    python -m bench                 # everything (a few minutes)
    python -m bench --quick         # small sizes and L = 10 ms (a smoke run)
    python -m bench --only fanout   # one: heal, fanout, sweep, coldstart, throttling, tenant, scanner
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import requests

from bench.worlds import SECRET, BenchWorld, build
from sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
POLL_INTERVAL = 0.05
"""``runtime_for``'s poll interval: the scanner waits this long before each status poll."""


@dataclass
class Row:
    benchmark: str
    case: str
    seconds: float
    lower_bound: float | None
    calls: int | None = None
    min_calls: int | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return None if not self.lower_bound else self.seconds / self.lower_bound

    def line(self) -> str:
        ratio = f"{self.ratio:5.2f}" if self.ratio is not None else "    -"
        bound = f"{self.lower_bound:8.3f}" if self.lower_bound is not None else "       -"
        calls = f"{self.calls}/{self.min_calls}" if self.calls is not None else "-"
        head = f"{self.benchmark:<11} {self.case:<34}"
        return f"{head} {self.seconds:8.3f} {bound} {ratio} {calls:>11}  {self.notes}"


@contextmanager
def sandbox(latency: float) -> Iterator[Sandbox]:
    with Sandbox(serve_user_realm=False) as sb:
        sb.faults.latency = latency
        yield sb


def api_calls(sb: Sandbox, since: int) -> int:
    """Key Vault and Power BI requests recorded after index ``since`` (token calls excluded)."""
    return sum(1 for r in sb.requests.all()[since:] if r.service in ("keyvault", "powerbi"))


def runtime_for(world: BenchWorld, concurrency: int, state_dir: str, **env: str) -> Any:
    from remediation.config.settings import Settings
    from remediation.edges.runtime import build_healer

    world.apply_env(
        os.path.join(state_dir, f"{uuid.uuid4().hex}.sqlite"), REMEDIATION_CONCURRENCY=str(concurrency), **env
    )
    runtime = build_healer(Settings.from_env(), poll_interval=POLL_INTERVAL)
    # Tokens are cached after first use: acquire them before timing (the lower bounds
    # count them as cached).
    runtime.keyvault.get_secret(SECRET)
    runtime.powerbi.get_groups()
    return runtime


# -- 1. time to heal through the Event Grid function --------------------------------------------
def bench_heal(latency: float, repeats: int, state_dir: str) -> list[Row]:
    import azure.functions as func

    import function_app
    from remediation.edges import service as service_module

    rows = []
    with sandbox(latency) as sb:
        world = build(sb, targets=1)
        # One target rotated many times in a row: allow the updates (the default bound of 3 per day
        # is the lockout guard, and would rightly stop the repeats).
        world.apply_env(os.path.join(state_dir, "heal.sqlite"), REMEDIATION_MAX_ATTEMPTS="10")
        service_module.reset_service()
        (fn,) = [f for f in function_app.app.get_functions() if f.get_function_name() == "keyvault_events"]
        invoke = fn.get_user_function()
        service = service_module.get_service()
        healed_at: list[float] = []
        original = service.runtime.powerbi.update_datasource

        def timed(*args: Any, **kwargs: Any) -> None:
            original(*args, **kwargs)
            healed_at.append(time.perf_counter())

        service.runtime.powerbi.update_datasource = timed  # type: ignore[method-assign]

        def event(version: str) -> func.EventGridEvent:
            return func.EventGridEvent(
                id=str(uuid.uuid4()),
                topic="/subscriptions/x/vaults/bench",
                subject=SECRET,
                event_type="Microsoft.KeyVault.SecretNewVersionCreated",
                event_time=None,
                data_version="1",
                data={
                    "Id": f"{sb.vault.url}secrets/{SECRET}/{version}",
                    "VaultName": "bench",
                    "ObjectType": "Secret",
                    "ObjectName": SECRET,
                    "Version": version,
                },
            )

        samples: list[tuple[float, float, int]] = []
        for attempt in range(repeats + 1):
            version = world.rotate()
            mark = len(sb.requests.all())
            started = time.perf_counter()
            before = len(healed_at)
            invoke(event(version))
            ended = time.perf_counter()
            assert len(healed_at) == before + 1, "the event did not update the data source"
            samples.append((healed_at[-1] - started, ended - started, api_calls(sb, mark)))
            if attempt == 0:
                cold = samples.pop()
        service_module.reset_service()
    heal = statistics.median(s[0] for s in samples)
    whole = statistics.median(s[1] for s in samples)
    calls = samples[-1][2]
    rows.append(
        Row(
            "heal",
            "cold (first event of a worker)",
            cold[0],
            None,
            cold[2],
            None,
            "tokens, vault challenge and gateway key fetched on the way",
        )
    )
    rows.append(Row("heal", "warm: event -> update accepted", heal, 2 * latency, None, 2, "secret + update"))
    rows.append(
        Row(
            "heal",
            "warm: whole invocation",
            whole,
            3 * latency,
            calls,
            3,
            "+ the last refresh of the datasets that use it (from the inventory)",
        )
    )
    return rows


# -- 2. fan-out -------------------------------------------------------------------------------
def bench_fanout(
    latency: float, sizes: list[int], concurrency: int, state_dir: str, compare_at: int
) -> list[Row]:
    rows = []
    for n in sizes:
        gateways = min(4, n)
        with sandbox(latency) as sb:
            world = build(sb, targets=n, gateways=gateways)
            runtime = runtime_for(world, concurrency, state_dir)
            world.rotate()
            mark = len(sb.requests.all())
            started = time.perf_counter()
            report = runtime.healer.heal_secret(SECRET, retry_refreshes=False)
            seconds = time.perf_counter() - started
            calls = api_calls(sb, mark)
            fabric = sum(1 for r in sb.requests.all()[mark:] if r.service == "fabric")
            runtime.close()
            assert all(o.action == "updated" for o in report.targets()), "fan-out did not heal everything"
        bound = latency * _fanout_round_trips(n, gateways, concurrency)
        rows.append(
            Row(
                "fanout",
                f"N={n} G={gateways} c={concurrency}",
                seconds,
                bound,
                calls,
                n + 2 + gateways,
                f"secret, gateway list, G data source lists, one update per target (one per server "
                f"first); + {fabric} Fabric connection list (privacy levels)",
            )
        )
    if compare_at:
        rows.extend(_compare_with_sequential(latency, compare_at, concurrency, state_dir))
    return rows


def bench_rotation(
    latency: float, sizes: list[int], concurrency: int, state_dir: str, runs: int
) -> list[Row]:
    """A rotation as a new user meets it: N data sources of one account on 4 on-premises
    gateways, all on one SQL server, one secret, a worker that has not signed in yet. Measured on
    the sandbox's side, from the first request of the heal to the last update's answer (every
    data source holds the new password); the median of ``runs`` worlds."""
    from remediation.config.settings import Settings
    from remediation.edges.runtime import build_healer

    rows = []
    gateways = 4
    for n in sizes:
        healed: list[float] = []
        whole: list[float] = []
        calls = fabric = challenged = 0
        for _ in range(runs):
            with sandbox(latency) as sb:
                world = build(sb, targets=n, gateways=gateways, servers=1)
                state = os.path.join(state_dir, f"{uuid.uuid4().hex}.sqlite")
                world.apply_env(state, REMEDIATION_CONCURRENCY=str(concurrency))
                runtime = build_healer(Settings.from_env(), poll_interval=POLL_INTERVAL)
                world.rotate()
                mark = len(sb.requests.all())
                report = runtime.healer.heal_secret(SECRET)
                runtime.close()
                healed_all = all(o.action == "updated" for o in report.targets())
                assert healed_all, "the rotation did not heal everything"
            requests = sb.requests.all()[mark:]
            first = min(r.at for r in requests)
            healed_at = max(r.answered_at or r.at for r in requests if r.method == "PATCH")
            healed.append(healed_at - first)
            whole.append(max(r.answered_at or r.at for r in requests) - first)
            until_healed = [r for r in requests if r.at <= healed_at]
            calls = sum(1 for r in until_healed if r.service in ("keyvault", "powerbi"))
            # Key Vault's SDK caches a vault's challenge for the process: a sandbox on a port an
            # earlier one had may not be challenged.
            challenged = sum(1 for r in until_healed if r.service == "keyvault" and r.status == 401)
            fabric = sum(1 for r in until_healed if r.service == "fabric")
        # Six round trips no worker can avoid before its first update (sign-in discovery, a
        # token, Key Vault's challenge, the secret, the Power BI token, the gateway key), then
        # ceil(N / c) rounds of updates: the bound. (An account's first update goes
        # alone, so the healer's own floor is one round more.)
        bound = latency * (6 + math.ceil(n / concurrency))
        rows.append(
            Row(
                "rotation",
                f"N={n} G={gateways} 1 server c={concurrency} cold",
                statistics.median(healed),
                bound,
                calls,
                n + 2 + gateways + challenged,
                f"first request -> last update answered, median of {runs} (whole command, with the "
                f"refresh retries: {statistics.median(whole):.3f} s); calls until then: Key Vault's "
                f"challenge and secret, gateway list, G data source lists, N updates; + {fabric} "
                "Fabric connection list",
            )
        )
    return rows


def _fanout_round_trips(n: int, gateways: int, concurrency: int) -> int:
    """The round trips a warm fan-out cannot avoid: its reads (the secret, the on-premises
    gateways with their keys, each gateway's data source list: where the targets sign in, one
    server behind each gateway; Fabric's connection list: the privacy levels), all independent,
    side by side (1); then one account: the first target of each server alone, one server at a
    time (the version is not known to work there yet), the rest of that server concurrently
    meanwhile. (Until 2026-12-06 the reads were one after another, and the bound counted them so:
    3 + G round trips.)"""
    return 1 + max(gateways, 1 + math.ceil((n - 1) / concurrency))


def _compare_with_sequential(latency: float, n: int, concurrency: int, state_dir: str) -> list[Row]:
    """The same rotation handled as Microsoft's sample scripts do it (one data source after
    another: update, then refresh) and by the healer (updates, then the failed refreshes)."""
    from remediation.rules.gateway_crypto import GatewayPublicKey, encrypt_credentials

    rows = []
    gateways = min(4, n)
    with sandbox(latency) as sb:
        world = build(sb, targets=n, gateways=gateways)
        runtime = runtime_for(world, concurrency, state_dir)
        world.rotate()
        world.fail_refreshes(world.datasets)
        token = runtime.powerbi._token_provider()  # the script's token, acquired beforehand
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        api = sb.powerbi.api_url
        started = time.perf_counter()
        password = runtime.keyvault.get_secret(SECRET).value
        keys: dict[str, GatewayPublicKey] = {}
        updated_at = 0.0
        for datasource, dataset in zip(world.bound, world.datasets, strict=True):
            gw = datasource.gateway.id
            if gw not in keys:
                keys[gw] = GatewayPublicKey.from_api(
                    session.get(f"{api}/gateways/{gw}", timeout=30).json()["publicKey"]
                )
            plain = json.dumps(
                {
                    "credentialData": [
                        {"name": "username", "value": "svc_pbi"},
                        {"name": "password", "value": password},
                    ]
                }
            )
            body = {
                "credentialDetails": {
                    "credentialType": "Basic",
                    "credentials": encrypt_credentials(plain, keys[gw]),
                    "encryptedConnection": "Encrypted",
                    "encryptionAlgorithm": "RSA-OAEP",
                    "privacyLevel": "Organizational",
                }
            }
            session.patch(
                f"{api}/gateways/{gw}/datasources/{datasource.id}", json=body, timeout=30
            ).raise_for_status()
            updated_at = time.perf_counter()
            session.post(
                f"{api}/groups/{dataset.workspace.id}/datasets/{dataset.id}/refreshes",
                json={"notifyOption": "NoNotification"},
                timeout=30,
            ).raise_for_status()
        script_all = time.perf_counter() - started
        script_updates = updated_at - started
        runtime.close()

    with sandbox(latency) as sb:
        world = build(sb, targets=n, gateways=gateways)
        runtime = runtime_for(world, concurrency, state_dir)
        world.rotate()
        world.fail_refreshes(world.datasets)
        patched: list[float] = []
        original = runtime.powerbi.update_datasource

        def timed(*args: Any, **kwargs: Any) -> None:
            original(*args, **kwargs)
            patched.append(time.perf_counter())

        runtime.powerbi.update_datasource = timed
        mark = len(sb.requests.all())
        started = time.perf_counter()
        report = runtime.healer.heal_secret(SECRET)
        ours_all = time.perf_counter() - started
        ours_updates = max(patched) - started
        calls = api_calls(sb, mark)
        refreshed = sum(
            1 for o in report.datasets() if o.action == "refreshed" and o.refresh_state == "Completed"
        )
        runtime.close()
    rows.append(
        Row(
            "sequential",
            f"script: all {n} updated",
            script_updates,
            None,
            None,
            None,
            f"healer is {script_updates / ours_updates:.1f}x faster",
        )
    )
    rows.append(
        Row(
            "sequential",
            f"healer: all {n} updated",
            ours_updates,
            latency * _fanout_round_trips(n, gateways, concurrency),
            None,
            None,
            "the same bound as the fan-out row",
        )
    )
    rows.append(
        Row(
            "sequential",
            "script: updates + refresh POSTs",
            script_all,
            None,
            2 * n + gateways + 1,
            None,
            f"healer is {script_all / ours_all:.1f}x faster end to end",
        )
    )
    rows.append(
        Row(
            "sequential",
            "healer: + scan, schedules, refreshes",
            ours_all,
            None,
            calls,
            None,
            f"{refreshed}/{n} refreshes followed to Completed",
        )
    )
    return rows


# -- 3. sweep ---------------------------------------------------------------------------------
def bench_sweep(
    latency: float, workspaces: int, per_workspace: int, concurrency: int, state_dir: str
) -> list[Row]:
    total = workspaces * per_workspace
    failing = max(1, total // 20)
    with sandbox(latency) as sb:
        world = build(
            sb, targets=failing, gateways=4, workspaces=workspaces, datasets_per_workspace=per_workspace
        )
        runtime = runtime_for(world, concurrency, state_dir)
        world.rotate()
        bound_datasets = [d for d in world.datasets if d.datasources[0] in world.bound]
        world.fail_refreshes(bound_datasets)
        mark = len(sb.requests.all())
        tracemalloc.start()
        started = time.perf_counter()
        report = runtime.healer.sweep(budget_seconds=3000)
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        calls = api_calls(sb, mark)
        runtime.close()
    healed = sum(1 for o in report.datasets() if o.action == "refreshed" and o.refresh_state == "Completed")
    c = concurrency
    # phases that depend on each other: secret, gateway keys, updates; dataset lists; the data
    # sources of every dataset (the inventory, built by this first sweep); the last refresh of the
    # datasets on bound sources (here: the failing ones); per failed dataset: data sources,
    # schedule, re-enable, refresh, one poll.
    # The gateway keys: one GET /gateways lists every on-premises gateway with its public key.
    gateways = 1
    bound = latency * (
        1
        + gateways
        + math.ceil(failing / c)
        + math.ceil(workspaces / c)
        + math.ceil(total / c)
        + math.ceil(failing / c)
        + 5 * math.ceil(failing / c)
    )
    minimum = 1 + gateways + failing + workspaces + total + failing + 5 * failing
    return [
        Row(
            "sweep",
            f"{workspaces}x{per_workspace} datasets, {failing} failed",
            seconds,
            bound,
            calls,
            minimum,
            f"{healed}/{failing} healed and refreshed; peak traced memory {peak / 2**20:.0f} MiB "
            "(healer and sandbox in one process)",
            {"peak_bytes": peak},
        )
    ]


# -- 6. a large tenant: the inventory ----------------------------------------------------------
def _measured(sb: Sandbox, run: Callable[[], Any], traced: bool = False) -> tuple[float, int, int, Any]:
    """Seconds, Power BI calls and (``traced``) peak traced memory of ``run()``, and its result."""
    mark = len(sb.requests.all())
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    report = run()
    seconds = time.perf_counter() - started
    peak = 0
    if traced:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return seconds, powerbi_calls(sb, mark), peak, report


def powerbi_calls(sb: Sandbox, since: int) -> int:
    return sum(1 for r in sb.requests.all()[since:] if r.service == "powerbi")


def bench_tenant(latency: float, sizes: list[int], concurrency: int, state_dir: str) -> list[Row]:
    """D datasets in W workspaces, B = D / 50 of them on data sources bound to one secret (the
    issue's 300 datasets of which 6 use bound sources, scaled). Rows: the first sweep, which
    builds the inventory; a sweep with nothing to do; an event for the secret (a rotation)."""
    rows: list[Row] = []
    c = concurrency
    for total in sizes:
        workspaces = {300: 10, 3000: 30, 30000: 100}.get(total, max(1, total // 100))
        bound = max(1, total // 50)
        with sandbox(latency) as sb:
            world = build(
                sb,
                targets=bound,
                gateways=4,
                workspaces=workspaces,
                datasets_per_workspace=total // workspaces,
            )
            # the per-dataset path (the admin scanner's figures are bench_tenant_scanner's)
            runtime = runtime_for(world, concurrency, state_dir, REMEDIATION_INVENTORY_SOURCE="per-dataset")
            runtime.healer.heal_secret(SECRET, retry_refreshes=False)  # the targets hold the secret
            healer = runtime.healer

            measure = partial(_measured, sb)

            seconds, calls, peak, report = measure(partial(healer.sweep, budget_seconds=3000), traced=True)
            minimum = workspaces + total + bound
            rows.append(
                Row(
                    "tenant",
                    f"D={total} W={workspaces} B={bound}: first sweep",
                    seconds,
                    latency * (math.ceil(workspaces / c) + math.ceil(total / c) + math.ceil(bound / c)),
                    calls,
                    minimum,
                    "builds the inventory (lists, every dataset's sources, B histories); "
                    f"exit {report.exit_code}; peak traced memory {peak / 2**20:.0f} MiB",
                    {"peak_bytes": peak, "exit": report.exit_code},
                )
            )
            seconds, calls, _, report = measure(partial(healer.sweep, budget_seconds=3000))
            rows.append(
                Row(
                    "tenant",
                    f"D={total} W={workspaces} B={bound}: steady sweep",
                    seconds,
                    latency * (math.ceil(workspaces / c) + math.ceil(bound / c)),
                    calls,
                    workspaces + bound,
                    f"issue bound 1 + W + 2B + 5 = {1 + workspaces + 2 * bound + 5}; exit {report.exit_code}",
                    {"issue_bound": 1 + workspaces + 2 * bound + 5, "exit": report.exit_code},
                )
            )
            world.rotate()
            seconds, calls, _, report = measure(partial(healer.heal_secret, SECRET))
            updated = sum(1 for o in report.targets() if o.action == "updated")
            rows.append(
                Row(
                    "tenant",
                    f"D={total} W={workspaces} B={bound}: event",
                    seconds,
                    # the secret, one probe, the other updates, then the B histories
                    latency * (1 + 1 + math.ceil((bound - 1) / c) + math.ceil(bound / c)),
                    calls,
                    2 * bound,
                    f"{updated}/{bound} updated, then B histories; no dataset list; exit {report.exit_code}",
                    {"exit": report.exit_code},
                )
            )
            runtime.close()
    return rows


def bench_tenant_scanner(latency: float, sizes: list[int], concurrency: int, state_dir: str) -> list[Row]:
    """The tenants of :func:`bench_tenant` with the identity allowed the admin scanner APIs
    (``REMEDIATION_INVENTORY_SOURCE=auto``): the first sweep learns every dataset's sources from
    scans of 100 workspaces each instead of one read per dataset; then a steady sweep, and a
    sweep after one new dataset on a bound source appeared."""
    rows: list[Row] = []
    c = concurrency
    for total in sizes:
        workspaces = {300: 10, 3000: 30, 30000: 100}.get(total, max(1, total // 100))
        bound = max(1, total // 50)
        batches = math.ceil(workspaces / 100)
        with sandbox(latency) as sb:
            world = build(
                sb,
                targets=bound,
                gateways=4,
                workspaces=workspaces,
                datasets_per_workspace=total // workspaces,
            )
            sb.powerbi.admin_principals.add(world.app.client_id)  # the tenant setting, its group
            sb.powerbi.scan_polls = 0  # a scan done by its first status poll
            runtime = runtime_for(world, concurrency, state_dir, REMEDIATION_INVENTORY_SOURCE="auto")
            runtime.healer.heal_secret(SECRET, retry_refreshes=False)  # the targets hold the secret
            healer = runtime.healer

            measure = partial(_measured, sb)

            seconds, calls, peak, report = measure(partial(healer.sweep, budget_seconds=3000), traced=True)
            rows.append(
                Row(
                    "scanner",
                    f"D={total} W={workspaces} B={bound}: first sweep",
                    seconds,
                    latency * (math.ceil(workspaces / c) + 3 + math.ceil(bound / c)) + POLL_INTERVAL,
                    calls,
                    workspaces + 3 * batches + bound,
                    f"lists, {batches} scan(s) (getInfo, status, result), B histories; no per-dataset "
                    f"read; exit {report.exit_code}; peak traced memory {peak / 2**20:.0f} MiB",
                    {
                        "peak_bytes": peak,
                        "exit": report.exit_code,
                        "per_dataset_minimum": workspaces + total + bound,
                    },
                )
            )
            seconds, calls, _, report = measure(partial(healer.sweep, budget_seconds=3000))
            rows.append(
                Row(
                    "scanner",
                    f"D={total} W={workspaces} B={bound}: steady sweep",
                    seconds,
                    latency * (math.ceil(workspaces / c) + math.ceil(bound / c)),
                    calls,
                    workspaces + bound,
                    f"no scan; issue bound 1 + W + 2B + 5 = {1 + workspaces + 2 * bound + 5}; "
                    f"exit {report.exit_code}",
                    {"issue_bound": 1 + workspaces + 2 * bound + 5, "exit": report.exit_code},
                )
            )
            first = world.workspaces[0]
            sb.powerbi.add_dataset(first, "new model", [world.bound[0]], owner=world.app.client_id)
            seconds, calls, _, report = measure(partial(healer.sweep, budget_seconds=3000))
            rows.append(
                Row(
                    "scanner",
                    f"D={total} W={workspaces} B={bound}: + 1 new dataset",
                    seconds,
                    latency * (math.ceil(workspaces / c) + 3 + math.ceil((bound + 1) / c)) + POLL_INTERVAL,
                    calls,
                    workspaces + 3 + bound + 1,
                    f"one scan of its workspace, which re-learns all {total // workspaces} of its datasets; "
                    f"exit {report.exit_code}",
                    {"exit": report.exit_code},
                )
            )
            runtime.close()
    return rows


# -- 4. cold start ------------------------------------------------------------------------------
def _no_bytecode_env() -> dict[str, str]:
    """A deployed worker's situation: the package is read-only, so nothing can be written to
    __pycache__ (PYTHONDONTWRITEBYTECODE stands for that here). pip compiled the SDKs at install."""
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def _package(state_dir: str, name: str, *, compiled: bool) -> str:
    """A copy of what azd deploys of our code (function_app.py, host.json, remediation/), with the
    bytecode the prepackage hook adds (``compiled``) or without any."""
    import shutil

    target = os.path.join(state_dir, name)
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    for item in ("function_app.py", "host.json"):
        shutil.copy2(ROOT / item, target)
    shutil.copytree(
        ROOT / "remediation",
        os.path.join(target, "remediation"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    if compiled:
        subprocess.run(
            ["sh", str(ROOT / "infra" / "hooks" / "prepackage.sh"), target],
            env={**os.environ, "PYTHON": sys.executable},
            check=True,
            capture_output=True,
        )
    return target


def _sdk_statement(cwd: str, env: dict[str, str]) -> str:
    """Import every module that importing function_app loads, except our own, in the same order:
    the exact third-party (and standard library) work the app cannot avoid with the SDKs it uses."""
    probe = (
        "import json, sys; before = set(sys.modules); import function_app; "
        "print(json.dumps([m for m in sys.modules if m not in before "
        "and not m.startswith(('remediation', 'function_app'))]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    names = json.loads(out.stdout.strip().splitlines()[-1])
    return (
        "import importlib\n"
        f"for name in {names!r}:\n"
        "    try: importlib.import_module(name)\n"
        "    except Exception: pass"
    )


def _interleaved(cases: list[tuple[str, str, dict[str, str]]], runs: int) -> list[float]:
    """Each case ``(code, cwd, env)`` run ``runs`` times in fresh interpreters, round-robin so that
    the machine's load falls on all alike; the best time of each (the code prints its seconds)."""
    best = [math.inf] * len(cases)
    for _ in range(runs):
        for i, (code, cwd, env) in enumerate(cases):
            out = subprocess.run(
                [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True, env=env
            )
            best[i] = min(best[i], float(out.stdout.strip().splitlines()[-1]))
    return best


def _timed(statement: str) -> str:
    return f"import time\nt = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)"


def bench_coldstart(latency: float, runs: int, state_dir: str) -> list[Row]:
    env = _no_bytecode_env()
    packaged = _package(state_dir, "package", compiled=True)
    bare = _package(state_dir, "package-bare", compiled=False)
    sdk, app, bare_app = _interleaved(
        [
            (_timed(_sdk_statement(packaged, env)), packaged, env),
            (_timed("import function_app"), packaged, env),
            (_timed("import function_app"), bare, env),
        ],
        runs * 3,
    )
    rows = [
        Row("coldstart", "import the SDKs it cannot avoid", sdk, None, notes="azure.functions (indexing)"),
        Row(
            "coldstart",
            "import function_app, package with bytecode",
            app,
            sdk,
            notes="as deployed: prepackage hook, read-only package",
        ),
        Row(
            "coldstart",
            "import function_app, package without bytecode",
            bare_app,
            sdk,
            notes="nothing compiled, nothing writable",
        ),
    ]
    with sandbox(latency) as sb:
        world = build(sb, targets=1)
        run_env = {
            **env,
            **world.sb.env(
                REMEDIATION_BINDINGS=world.bindings(),
                REMEDIATION_STATE_PATH=os.path.join(state_dir, "cold.sqlite"),
            ),
            "TMPDIR": state_dir,
        }
        with_bytecode, without = _interleaved(
            [(FIRST_INVOCATION, packaged, run_env), (FIRST_INVOCATION, bare, run_env)], runs * 2
        )
    for name, seconds in (("with bytecode", with_bytecode), ("without bytecode", without)):
        rows.append(
            Row(
                "coldstart",
                f"import + first invocation + telemetry, {name}",
                seconds,
                None,
                notes="GET /api/remediations with App Insights configured (sandbox)",
            )
        )
    return rows


FIRST_INVOCATION = _timed(
    "import function_app\n"
    "from azure.functions import meta\n"
    "(f,) = [f for f in function_app.app.get_functions() if f.get_function_name() == 'remediations']\n"
    "s = lambda v: meta.Datum(v, 'string')\n"
    "datum = meta.Datum({'method': s('GET'), 'url': s('https://x/api/remediations'), 'headers': {}, "
    "'query': {}, 'params': {}, 'body': meta.Datum(b'', 'bytes')}, 'http')\n"
    "req = meta.get_binding_registry().get('httpTrigger').decode(datum, trigger_metadata={})\n"
    "resp = f.get_user_function()(req)\n"
    "assert resp.status_code == 200, resp.get_body()"
)
"""The worker's first request: import (indexing), build the argument as the worker does, call."""


# -- 5. under throttling -------------------------------------------------------------------------
def bench_throttling(latency: float, n: int, rate: float, concurrency: int, state_dir: str) -> list[Row]:
    from remediation.clients.http import HttpPipeline

    rows = []
    for adaptive in (True, False):
        with sandbox(latency) as sb:
            world = build(sb, targets=n, gateways=2)
            runtime = runtime_for(world, concurrency, state_dir)
            if not adaptive:  # the comparison: the same healer without the adaptive limiter
                runtime.powerbi._pipeline = HttpPipeline.from_settings(
                    runtime.settings, service="powerbi", stats=runtime.stats, adaptive=False
                )
                runtime.powerbi._token_provider()
            world.rotate()
            sb.faults.rate_limit("powerbi.update_datasource", per_second=rate)
            mark = len(sb.requests.all())
            started = time.perf_counter()
            report = runtime.healer.heal_secret(SECRET, retry_refreshes=False)
            seconds = time.perf_counter() - started
            calls = api_calls(sb, mark)
            throttled = sb.faults.throttled("powerbi.update_datasource")
            runtime.close()
        healed = sum(1 for o in report.targets() if o.action == "updated")
        label = "adaptive limiter" if adaptive else "limiter off"
        rows.append(
            Row(
                "throttling",
                f"N={n} at {rate:g}/s, c={concurrency}, {label}",
                seconds,
                n / rate,
                calls,
                n + 2 + 1,
                f"{healed}/{n} healed, {throttled} answers were 429",
                {"throttled": throttled},
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=None, help="per-request latency in seconds (0.05)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="small sizes, L = 10 ms")
    parser.add_argument("--results", type=Path, default=RESULTS / "latest.json", help="where the JSON goes")
    parser.add_argument(
        "--only",
        choices=["heal", "rotation", "fanout", "sweep", "coldstart", "throttling", "tenant", "scanner"],
        action="append",
    )
    args = parser.parse_args(argv)
    latency = args.latency if args.latency is not None else (0.01 if args.quick else 0.05)
    c = args.concurrency
    chosen = set(
        args.only or ["heal", "rotation", "fanout", "sweep", "coldstart", "throttling", "tenant", "scanner"]
    )
    state_dir = tempfile.mkdtemp(prefix="pbi-bench-")
    os.environ.setdefault("TMPDIR", state_dir)
    plans: dict[str, Callable[[], list[Row]]] = {
        "heal": lambda: bench_heal(latency, 3 if args.quick else 8, state_dir),
        "rotation": lambda: bench_rotation(
            latency, [10] if args.quick else [100, 1000], c, state_dir, 1 if args.quick else 5
        ),
        "fanout": lambda: bench_fanout(
            latency, [1, 10] if args.quick else [1, 10, 100, 1000], c, state_dir, 10 if args.quick else 100
        ),
        "sweep": lambda: bench_sweep(latency, *((5, 8) if args.quick else (50, 40)), c, state_dir),
        "coldstart": lambda: bench_coldstart(latency, 2 if args.quick else 5, state_dir),
        "throttling": lambda: bench_throttling(
            latency, 20 if args.quick else 200, 10.0 if args.quick else 20.0, c, state_dir
        ),
        # the 30 000-dataset tenant takes minutes: never in --quick
        "tenant": lambda: bench_tenant(latency, [300] if args.quick else [300, 3000, 30000], c, state_dir),
        "scanner": lambda: bench_tenant_scanner(
            latency, [300] if args.quick else [300, 3000, 30000], c, state_dir
        ),
    }
    print(
        f"# L = {latency * 1000:.0f} ms, concurrency {c}, {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(f"{'benchmark':<11} {'case':<34} {'seconds':>8} {'bound':>8} {'ratio':>5} {'calls/min':>11}  notes")
    rows: list[Row] = []
    for name, plan in plans.items():
        if name in chosen:
            for row in plan():
                rows.append(row)
                print(row.line(), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "latency": latency,
        "concurrency": c,
        "quick": args.quick,
        "when": time.time(),
        "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
    }
    args.results.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
