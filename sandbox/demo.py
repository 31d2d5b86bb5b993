"""``make demo``: a password rotation breaks Power BI refreshes and the healer heals them, safely.

Everything runs on this machine: the sandbox serves Entra ID, Key Vault and Power BI over HTTPS,
and the product (``remediation``) talks to it with the real Microsoft SDKs. The story:

1. the refreshes work; 2. the password of ``CONTOSO\\svc_pbi`` rotates the way Microsoft's own
rotation sample does it: Key Vault first, the SQL login a moment later; 3. Key Vault's
``SecretNewVersionCreated`` event reaches the healer at once, but the version is younger than the
settle time, so nothing is presented yet (presenting it now would be refused and burn the right
version); 4. two scheduled refreshes fail on the old password and Power BI turns their schedules
off; 5. once the version has settled the healer presents it to *one* data source of the account,
then to the other five, re-encrypted for each gateway, keeping the privacy level and encryption
each one's admin set (read from its Fabric connection: gateway data sources are connections too),
turns the schedules back on and retries the refreshes; 6. someone stores a *wrong* password in
Key Vault: six data sources sign in as that one account, and it sees exactly one failed sign-in
with that password, however many sweeps follow.
Beside them, a Fabric connection on a two-member on-premises gateway cluster is healed through
Fabric's Connections API: one entry per member, each encrypted with that member's own key. And a
cloud Fabric connection is moved onto a Key Vault reference (``adopt``): the request carries the
reference alone, Fabric tests it, and after the next rotation the healer sends it nothing while
its model's refresh reads the new password from Key Vault itself.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable

from sandbox.accounts import fingerprint
from sandbox.demo_world import build_demo_world
from sandbox.world import Sandbox

SETTLE_SECONDS = 3  # the product's default is 60; a demo should not make you wait a minute
ACCOUNT = "CONTOSO\\svc_pbi"


def main() -> int:
    state_dir = tempfile.mkdtemp(prefix="pbi-healer-demo-")
    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.2f}s] {message}", flush=True)

    # No caller-identity binding here: msal's user-realm port (443) is not needed.
    with Sandbox(serve_user_realm=False) as sb:
        world = build_demo_world(sb)
        os.environ.update(
            sb.env(
                REMEDIATION_BINDINGS=world.bindings_json(),
                REMEDIATION_STATE_PATH=os.path.join(state_dir, "ledger.sqlite"),
                REMEDIATION_SETTLE_SECONDS=str(SETTLE_SECONDS),
            )
        )
        # Imported after the environment points at the sandbox (CA bundle for requests).
        from remediation.config.settings import Settings
        from remediation.edges.render import print_report as _print_report  # noqa: PLC0415 - the demo's own output
        from remediation.edges.runtime import build_healer
        from remediation.inbound.events import Kind, parse_events
        from remediation.reconciler.adopt import plan_adoption
        from remediation.reconciler.healer import Report

        events: list[dict[str, object]] = []
        sb.vault.subscribe(events.append, schema="EventGridSchema")
        runtime = build_healer(Settings.from_env(), poll_interval=0.2)
        healer, pbi = runtime.healer, sb.powerbi
        account = sb.sources.account(ACCOUNT)
        sales = [d for d in world.datasets if d.name != "Finance"]
        sources = [s for d in sales for s in d.datasources]
        admin_set = {s.id: (s.privacy_level, s.connection_encryption) for s in sources}

        def until_settled(run: Callable[[], Report]) -> Report:
            """What the CLI and the Functions app's queue do with a settling version: wait, again."""
            report = run()
            while report.retry_at is not None:
                wait = max(0.0, report.retry_at - time.time())
                _summary(say, f"Version not presented yet, settling: waiting {wait:.1f} s", report.targets())
                time.sleep(wait)
                report = run()
            return report

        say(
            f"Sandbox at {sb.url}: workspace 'Sales', gateways GW-PROD-01 (2048-bit), GW-LEGACY "
            f"(1024-bit) and a cloud source; {len(sales)} Sales datasets read SQL Server as {ACCOUNT}."
        )
        for dataset in sales:
            pbi.start_refresh(dataset)
        say("Scheduled refreshes: " + _states(sb, sales))

        version = sb.rotate(ACCOUNT, "sql-sales-password", order="vault-first", delay=1.0)
        new_password = sb.vault.get_secret("sql-sales-password").value
        say(
            f"Rotation, Key Vault first (as Microsoft's SQL rotation sample does): version {version[:8]}… "
            "is in Key Vault; the SQL login changes 1 s later."
        )
        parsed = parse_events(json.dumps(events), vault_origin=runtime.settings.vault_origin)
        event = next(e for e in parsed if e.kind is Kind.SECRET_NEW_VERSION)
        say(f"Event Grid delivers {event.type} for {event.secret_name} at once (event {event.id[:8]}…)")
        runtime.ledger.mark_event_seen(event.id, time.time())

        first = healer.heal_secret(
            event.secret_name or "",
            event_version=event.secret_version,
            trigger="eventgrid",
            correlation_id=event.id,
        )
        _summary(
            say, f"Healer: the version is younger than {SETTLE_SECONDS} s, nothing presented", first.targets()
        )
        time.sleep(1.2)
        broken = sales[:2]  # the two whose schedule came round in the meantime
        for dataset in broken:
            pbi.start_refresh(dataset)
        say("The SQL login has changed. Scheduled refreshes: " + _states(sb, broken))
        say("Schedules enabled: " + ", ".join(f"{d.name}={d.schedule.enabled}" for d in broken))

        report = until_settled(
            lambda: healer.heal_secret(
                event.secret_name or "",
                event_version=event.secret_version,
                trigger="queue",
                correlation_id=event.id,
            )
        )
        say("Healed. Refreshes: " + _states(sb, broken))
        say("Schedules enabled: " + ", ".join(f"{d.name}={d.schedule.enabled}" for d in broken))
        patches = [r for r in sb.requests.find("powerbi.update_datasource") if r.status == 200]
        encrypted = sum(
            1 for r in patches if r.body["credentialDetails"]["encryptionAlgorithm"] == "RSA-OAEP"
        )
        burnt = account.failures_of(new_password)
        say(
            f"Power BI saw {len(patches)} credential updates (one per data source, {encrypted} encrypted for "
            f"their gateway); failed sign-ins with the new password: {burnt}."
        )
        kept = sum(1 for s in sources if (s.privacy_level, s.connection_encryption) == admin_set[s.id])
        levels = Counter(s.privacy_level for s in sources)
        say(
            "Privacy levels and encryption as their admins set them, read from each data source's Fabric "
            "connection: "
            + ", ".join(f"{n} {level}" for level, n in sorted(levels.items(), key=lambda x: (x[1], x[0])))
            + f"; {kept} of {len(sources)} kept."
        )
        print()
        _print_report(report, sys.stdout, False)
        print()

        erp = world.fabric_connection
        assert erp is not None and erp.gateway is not None
        erp_password = "Rotated#Erp2"
        sb.rotate("erp", "erp-fabric-password", erp_password)
        say(
            f"Fabric: the password of the ERP connection's account rotates (source first); the connection "
            f"is on gateway cluster {erp.gateway.name} with {len(erp.gateway.members)} members "
            f"({', '.join(str(m.keys.modulus_bytes * 8) + '-bit' for m in erp.gateway.members)})."
        )
        fabric_report = until_settled(lambda: healer.heal_secret("erp-fabric-password", trigger="demo"))
        fabric_patch = [r for r in sb.requests.find("fabric.update_connection") if r.status == 200][-1]
        entries = fabric_patch.body["credentialDetails"]["credentials"]["values"]
        decrypted = sum(
            1
            for member, entry in zip(erp.gateway.members, entries, strict=True)
            if {"name": "password", "value": erp_password}
            in json.loads(member.keys.decrypt(entry["encryptedCredentials"]))["credentialData"]
        )
        fabric_ok = erp.data.get("password") == erp_password and decrypted == len(erp.gateway.members)
        _summary(say, "Healer, Fabric connection ERP", fabric_report.targets())
        say(
            f"Fabric saw 1 connection update with {len(entries)} encrypted entries, one per member; "
            f"{decrypted} members decrypted the new password; failed sign-ins: "
            f"{sb.sources.account('erp').failures_of(erp_password)}."
        )

        lake, vault, lake_model = world.lake_connection, world.vault_connection, world.lake_model
        assert (
            lake is not None and vault is not None and lake_model is not None and runtime.fabric is not None
        )
        plan = plan_adoption(
            fabric=runtime.fabric,
            keyvault=runtime.keyvault,
            bindings=runtime.bindings,
            references=healer.references,
            vault_url=runtime.settings.key_vault_url,
            connection_id=lake.id,
            vault_connection_id=vault.id,
        )
        say(
            f"adopt: the cloud connection {lake.display_name} can read its password from Key Vault itself "
            f"({plan.field}); it is moved onto a reference through the Key Vault connection "
            f"{vault.display_name!r}."
        )
        moved = until_settled(lambda: healer.move_connection(plan, trigger="demo"))
        _summary(say, f"adopt, Fabric connection {lake.display_name}", moved.targets())
        sent = [r for r in sb.requests.find("fabric.update_connection") if r.status == 200][-1]
        credentials = sent.body["credentialDetails"]["credentials"]
        say(
            f"Fabric saw 1 connection update carrying {', '.join(sorted(credentials))}: the reference "
            f"{json.dumps(credentials['passwordReference'])}, no password; it tested it: failed sign-ins "
            f"{sb.sources.account('lake-azsql').total_failures}."
        )
        updates = len(sb.requests.find("fabric.update_connection"))
        sb.rotate("lake-azsql", "lake-sql-password", "Rotated#Lake2")
        lake_report = until_settled(lambda: healer.heal_secret("lake-sql-password", trigger="demo"))
        _summary(
            say,
            f"The lake password rotates; healer, Fabric connection {lake.display_name}",
            lake_report.targets(),
        )
        pbi.start_refresh(lake_model)
        pbi.settle()
        lake_state = sb.powerbi.history(lake_model)[0].status
        pushed = len(sb.requests.find("fabric.update_connection")) - updates
        say(
            f"Fabric saw {pushed} connection updates since; the Lake model's scheduled refresh: {lake_state} "
            "(Fabric read the new password from Key Vault itself)."
        )
        adopt_ok = (
            [o.action for o in moved.targets()] == ["adopted"]
            and "password" not in credentials
            and pushed == 0
            and lake_state == "Completed"
        )

        say(f"Someone stores a WRONG password in Key Vault ({ACCOUNT} keeps the real one).")
        wrong = "Wrong#Password1"
        sb.vault.set_secret("sql-sales-password", wrong)
        bad = until_settled(
            lambda: healer.heal_secret("sql-sales-password", trigger="demo", retry_refreshes=False)
        )
        _summary(say, "First run", bad.targets())
        for sweep in (1, 2, 3):
            again = healer.sweep(trigger="timer")
            _summary(say, f"Timer sweep {sweep}", [o for o in again.targets() if o.binding == "sales-sql"])
        with_wrong = account.failures_by_fingerprint().get(fingerprint(wrong), 0)
        targets = len([o for o in bad.targets() if o.binding == "sales-sql"])
        say(
            f"{targets} data sources sign in as {ACCOUNT}; failed sign-ins with the wrong password: "
            f"{with_wrong}; account locked: {account.locked}."
        )
        runtime.close()
        healthy = report.exit_code == 0 and burnt == 0 and with_wrong == 1 and not account.locked
        healthy = healthy and kept == len(sources)
        code = 0 if healthy and fabric_ok and adopt_ok else 1
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
