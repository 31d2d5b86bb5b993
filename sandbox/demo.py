"""``make demo``: a password rotation breaks Power BI refreshes and the healer heals them.

Everything runs on this machine: the sandbox serves Entra ID, Key Vault and Power BI over HTTPS,
and the product (``remediation``) talks to it with the real Microsoft SDKs. The story:

1. the refreshes work; 2. the SQL password of ``svc_pbi`` rotates (source and Key Vault);
3. the scheduled refreshes fail with ``DM_GWPipeline_Gateway_InvalidConnectionCredentials`` and
Power BI turns their schedules off; 4. Key Vault's ``SecretNewVersionCreated`` event reaches the
healer, which re-encrypts the new password for each gateway, updates the data sources, turns the
schedules back on and retries the refreshes; 5. someone stores a *wrong* password in Key Vault:
the source rejects it once, and the healer never presents it again (no account lockout).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable

from sandbox.demo_world import build_demo_world
from sandbox.world import Sandbox


def main() -> int:
    state_dir = tempfile.mkdtemp(prefix="pbi-healer-demo-")
    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.2f}s] {message}", flush=True)

    with Sandbox() as sb:
        world = build_demo_world(sb)
        os.environ.update(
            sb.env(
                REMEDIATION_BINDINGS=world.bindings_json(),
                REMEDIATION_STATE_PATH=os.path.join(state_dir, "ledger.sqlite"),
            )
        )
        # Imported after the environment points at the sandbox (CA bundle for requests).
        from remediation.cli import _print_report  # noqa: PLC0415 - the demo's own output
        from remediation.events import Kind, parse_events
        from remediation.runtime import build_healer
        from remediation.settings import Settings

        events: list[dict[str, object]] = []
        sb.vault.subscribe(events.append, schema="EventGridSchema")
        runtime = build_healer(Settings.from_env(), poll_interval=0.2)
        healer, pbi = runtime.healer, sb.powerbi
        sales_model, sales_dw, _finance = world.datasets
        broken = [sales_model, sales_dw]

        say(
            f"Sandbox at {sb.url}: workspace 'Sales', gateways GW-PROD-01 (2048-bit), GW-LEGACY "
            "(1024-bit) and a cloud source; 3 datasets."
        )
        for dataset in broken:
            pbi.start_refresh(dataset)
        say("Scheduled refreshes: " + _states(sb, broken))

        version = sb.rotate("sqlsales", "sql-sales-password")
        sb.sources.set_secret("sqldw", sb.sources.get("sqlsales").secret or "")
        say(f"Password of svc_pbi rotated on both SQL servers; Key Vault has version {version[:8]}…")

        for dataset in broken:
            pbi.start_refresh(dataset)
        say("Scheduled refreshes: " + _states(sb, broken))
        say("Schedules enabled: " + ", ".join(f"{d.name}={d.schedule.enabled}" for d in broken))

        parsed = parse_events(json.dumps(events), vault_origin=runtime.settings.vault_origin)
        event = next(e for e in parsed if e.kind is Kind.SECRET_NEW_VERSION)
        say(f"Event Grid delivers {event.type} for {event.secret_name} (event {event.id[:8]}…)")
        runtime.ledger.mark_event_seen(event.id, time.time())
        report = healer.heal_secret(
            event.secret_name or "", event.secret_version, trigger="eventgrid", correlation_id=event.id
        )
        say("Healed. Refreshes: " + _states(sb, broken))
        say("Schedules enabled: " + ", ".join(f"{d.name}={d.schedule.enabled}" for d in broken))
        patches = sb.requests.find("powerbi.update_datasource")
        say(
            f"Power BI saw {len(patches)} credential updates (one per data source), "
            f"{sum(1 for r in patches if r.body['credentialDetails']['encryptionAlgorithm'] == 'RSA-OAEP')} "
            "encrypted for their gateway."
        )
        print()
        _print_report(report, sys.stdout, False)
        print()

        say("Someone stores a WRONG password in Key Vault (the SQL server keeps the real one).")
        failures_before = sum(s.total_failures for s in sb.sources.all())
        sb.vault.set_secret("sql-sales-password", "Wrong#Password1")
        first = healer.heal_secret("sql-sales-password", trigger="demo", retry_refreshes=False)
        _summary(say, "First run", first.outcomes)
        for sweep in (1, 2, 3):
            again = healer.sweep(trigger="timer")
            _summary(say, f"Timer sweep {sweep}", [o for o in again.targets() if o.binding == "sales-sql"])
        failures = sum(s.total_failures for s in sb.sources.all()) - failures_before
        locked = [s.id for s in sb.sources.all() if s.locked]
        say(
            f"Failed sign-ins caused at the SQL servers: {failures} (one per data source); "
            f"locked accounts: {locked or 'none'}."
        )
        runtime.close()
        code = 0 if report.exit_code == 0 and not locked and failures == 2 else 1
    say("Done." if code == 0 else "The demo did not go as expected.")
    return code


def _states(sb: Sandbox, datasets: list[object]) -> str:
    parts = []
    for dataset in datasets:
        latest = sb.powerbi.history(dataset)[0]  # type: ignore[arg-type]
        parts.append(f"{dataset.name}={latest.status}")  # type: ignore[attr-defined]
    return ", ".join(parts)


def _summary(say: Callable[[str], None], label: str, outcomes: list[object]) -> None:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        action = getattr(outcome, "action", "?")
        counts[action] = counts.get(action, 0) + 1
    say(f"{label}: " + ", ".join(f"{n} {a}" for a, n in sorted(counts.items())))


if __name__ == "__main__":
    raise SystemExit(main())
