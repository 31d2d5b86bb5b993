"""Operator CLI: ``python -m remediation ...``.

    heal --secret NAME [--version V] | --workspace W --dataset D | --gateway G --datasource S | --connection C
    sweep                      what the timer runs
    replay FILE                Event Grid or CloudEvents JSON (one event or an array), e.g. dead-lettered
    history [--hours H] [--figures]
                               recent outcomes from the ledger (or figures per binding, account and day)
    bindings check             validate the bindings file and resolve its targets against Power BI
    discover [--json|--csv] [--propose FILE]
                               read-only inventory of the data sources, their datasets and bindings
    events check [--json]      which watched semantic models Fabric job events could cover, which
                               rely on the sweep alone, and the last event received for each
    adopt --connection C --vault-connection K [--secret NAME] [--yes] [--write-bindings FILE]
    adopt --connection C --release [--yes] [--write-bindings FILE]
                               move a Fabric connection onto a Key Vault reference (or back); without
                               --yes it shows the plan and changes nothing
    --dry-run                  plan only: no update, no refresh, no ledger write
    --json                     the report as JSON on stdout

With ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set, ``heal``, ``sweep``, ``replay`` and ``adopt`` send their
outcomes to Application Insights as ``CredentialRemediation`` events (trigger ``cli``, redacted
like the Functions app's) and flush them before exiting; without it nothing is configured.

The parser and the commands are here; what they print (tables, JSON, warning lines) is
:mod:`remediation.edges.render`.

Exit codes: 0 every target in scope holds the current secret (healed now or already) or there was
nothing to do; 1 some target failed, was rejected, or stays blocked; 2 usage or configuration
error (one line on stderr saying what to fix).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TextIO

from remediation.clients.fabric import FabricEntityNotFound, FabricNotAuthorized
from remediation.config.bindings import CONNECTIONS, Binding, BindingSet, Target, TargetMatch
from remediation.config.bindings_advice import binding_problems, binding_warnings
from remediation.config.bindings_file import with_reference_mark
from remediation.config.settings import Settings
from remediation.edges.render import print_check, print_figures, print_history, print_inventory, print_report
from remediation.edges.runtime import (
    Runtime,
    build_fabric,
    build_healer,
    build_powerbi,
    load_bindings_from,
    open_ledger,
)
from remediation.errors import ConfigError, RemediationError
from remediation.inbound.events import EventError, Kind, parse_events
from remediation.inventory import discover, event_coverage, proposal
from remediation.ledger.references import References
from remediation.reconciler import adopt
from remediation.reconciler.adopt import AdoptRefused, MovePlan
from remediation.reconciler.healer import Action, NotBound, Report
from remediation.reconciler.runs import outcomes_to
from remediation.rules.connections import fabric_credential_type
from remediation.rules.redact import mask_urls
from remediation.rules.references import could_reference
from remediation.telemetry.appinsights import Telemetry
from remediation.telemetry.figures import figures
from remediation.telemetry.redaction import redact

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
TRIGGER = "cli"
"""The ``trigger`` of every outcome and ``CredentialRemediation`` event of the CLI (replay too)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line that says what is wrong and where to look, not the whole usage block.
        print(f"error: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--dry-run", action="store_true", default=argparse.SUPPRESS, help="plan only; change nothing"
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the report as JSON"
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log what happens (never secrets)",
    )
    parser = _Parser(
        prog="python -m remediation",
        parents=[common],
        description="Self-healing Power BI gateway credentials from Azure Key Vault.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    heal = sub.add_parser(
        "heal", parents=[common], help="heal a secret's targets, a dataset or a data source"
    )
    heal.add_argument("--secret", help="Key Vault secret name")
    heal.add_argument(
        "--version",
        help="a version that must exist and be enabled (the current version is what is applied)",
    )
    heal.add_argument(
        "--present-again",
        action="store_true",
        help="present the current version once more although it was rejected or is in doubt "
        "(only once the source is known to have it: each presentation may be a failed sign-in)",
    )
    heal.add_argument("--workspace", help="workspace (group) id, with --dataset")
    heal.add_argument("--dataset", help="dataset id, with --workspace")
    heal.add_argument("--gateway", help="gateway id, with --datasource")
    heal.add_argument("--datasource", help="gateway data source id, with --gateway")
    heal.add_argument("--connection", help="Fabric connection id (a GUID)")

    sub.add_parser("sweep", parents=[common], help="reconcile every binding and scan for failed refreshes")
    replay = sub.add_parser("replay", parents=[common], help="process events from a JSON file")
    replay.add_argument("file", help="Event Grid or CloudEvents JSON: one event or an array ('-' for stdin)")
    history = sub.add_parser("history", parents=[common], help="recent outcomes from the ledger")
    history.add_argument("--hours", type=float, default=24.0, help="how far back (default 24)")
    history.add_argument("--limit", type=int, default=200, help="at most this many rows (default 200)")
    history.add_argument(
        "--figures",
        action="store_true",
        help=(
            "per binding and per account and day: healed, rejected, in doubt, blocked, deferred; "
            "rotation to healed refresh"
        ),
    )
    bindings = sub.add_parser("bindings", parents=[common], help="bindings file tools")
    bindings.add_argument("action", choices=["check"], help="check: validate and resolve against Power BI")
    discover = sub.add_parser(
        "discover", parents=[common], help="read-only inventory: data sources, datasets, bindings"
    )
    discover.add_argument("--csv", action="store_true", help="print the inventory as CSV")
    discover.add_argument(
        "--propose",
        metavar="FILE",
        help="write a draft bindings file for the unbound data sources (fill in the <...> placeholders)",
    )
    events = sub.add_parser(
        "events", parents=[common], help="refresh-failure events: which models they can cover (read-only)"
    )
    events.add_argument(
        "action",
        choices=["check"],
        help="check: the watched semantic models Fabric job events could cover, and those on the sweep alone",
    )
    adopt = sub.add_parser(
        "adopt",
        parents=[common],
        help="move a Fabric connection onto a Key Vault reference (or back, --release)",
    )
    adopt.add_argument("--connection", required=True, help="the Fabric connection's id (a GUID)")
    adopt.add_argument(
        "--vault-connection",
        help="the Key Vault connection's id (Manage connections and gateways, Azure Key Vault references)",
    )
    adopt.add_argument(
        "--secret", help="the secret the reference names (default: the connection's binding's)"
    )
    adopt.add_argument(
        "--release", action="store_true", help="move it back: Key Vault's current version is pushed as a copy"
    )
    adopt.add_argument("--yes", action="store_true", help="do it (without: show the plan, change nothing)")
    adopt.add_argument(
        "--write-bindings",
        metavar="FILE",
        help="once done, mark (or unmark) the target in this bindings file",
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: dict[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the CLI; returns the exit code."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        # argparse writes usage errors and --help to sys.stderr / sys.stdout and exits.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    as_json = bool(getattr(args, "json", False))
    dry_run = bool(getattr(args, "dry_run", False))
    level = logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    console = logging.StreamHandler(err)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console.setLevel(level)  # the INFO outcome event records show only with --verbose
    logging.basicConfig(level=level, handlers=[console])
    telemetry: Telemetry | None = None
    try:
        settings = Settings.from_env(os.environ if environ is None else environ)
        if args.command == "history":
            return _history(settings, args, out, as_json)
        if args.command == "bindings":
            return _bindings_check(settings, out, as_json)
        if args.command == "discover":
            return _discover(settings, args, out, err, as_json)
        if args.command == "events":
            return _events_check(settings, out, as_json)
        if args.command == "adopt":
            _adopt_usage(args)
            dry_run = dry_run or not args.yes
        else:
            command = _command(args)  # usage errors before anything is built
        # Before the healer is built, so its calls are reported as dependencies; without
        # APPLICATIONINSIGHTS_CONNECTION_STRING this only installs the log redaction filter.
        telemetry = Telemetry(settings)
        telemetry.configure()
        runtime = build_healer(settings)
        plan: MovePlan | None = None
        try:
            if args.command == "adopt":
                plan = _plan_move(runtime, args)  # reads only; refused: exit 2, nothing sent
                _print_plan(plan, out, as_json, yes=not dry_run)
                command = _move(plan)

            def reported(rt: Runtime, dry: bool, say: Callable[[str], None]) -> Report:
                before = rt.stats.snapshot()
                live = telemetry.live(lambda: rt.stats.snapshot() - before, trigger=TRIGGER)
                with outcomes_to(live):  # each outcome is sent as it is recorded
                    report = command(rt, dry, say)
                live.finish(report)
                return report

            report = _run_settled(reported, runtime, dry_run, _progress(err, as_json), err)
        finally:
            runtime.close()
        print_report(report, out, as_json, extra=None if plan is None else {"plan": plan.to_dict()})
        if plan is not None:
            _after_move(plan, report, args.write_bindings, dry_run, err)
        return report.exit_code
    except (ConfigError, NotBound, EventError, AdoptRefused) as exc:
        print(f"error: {redact(str(exc))}", file=err)
        return EXIT_USAGE
    except RemediationError as exc:
        print(f"error: {redact(str(exc))}", file=err)
        return EXIT_PROBLEM
    finally:
        if telemetry is not None and not telemetry.flush():
            print("warning: not every telemetry item was sent to Application Insights", file=err)


Command = Callable[[Runtime, bool, Callable[[str], None]], Report]

MAX_SETTLE_WAITS = 3
"""How often the CLI waits for a settling version and runs the command again."""


def _run_settled(
    command: Command,
    runtime: Runtime,
    dry_run: bool,
    say: Callable[[str], None],
    err: TextIO,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> Report:
    """Run ``command``; while a version is still settling (``retry_at``), wait and run it again."""
    report = command(runtime, dry_run, say)
    for _ in range(MAX_SETTLE_WAITS):
        if dry_run or report.retry_at is None:
            break
        wait = max(0.0, report.retry_at - clock())
        print(
            f"waiting {wait:.0f} s: a Key Vault version is younger than REMEDIATION_SETTLE_SECONDS",
            file=err,
        )
        sleep(wait)
        report = command(runtime, dry_run, say)
    return report


def _command(args: argparse.Namespace) -> Command:
    if args.command == "sweep":
        return lambda rt, dry, say: rt.healer.sweep(dry_run=dry, trigger=TRIGGER, progress=say)
    if args.command == "replay":
        return lambda rt, dry, say: _replay(rt, args.file, dry)
    given = {
        k
        for k in ("secret", "workspace", "dataset", "gateway", "datasource", "connection")
        if getattr(args, k)
    }
    again = bool(getattr(args, "present_again", False))
    if given == {"secret"}:
        return lambda rt, dry, say: rt.healer.heal_secret(
            args.secret, args.version, dry_run=dry, trigger=TRIGGER, present_again=again
        )
    if args.version:
        raise ConfigError("--version goes with --secret")
    if given == {"workspace", "dataset"}:
        return lambda rt, dry, say: rt.healer.heal_dataset(
            args.workspace, args.dataset, dry_run=dry, trigger=TRIGGER, present_again=again
        )
    if given == {"gateway", "datasource"}:
        return lambda rt, dry, say: rt.healer.heal_target(
            args.gateway, args.datasource, dry_run=dry, trigger=TRIGGER, present_again=again
        )
    if given == {"connection"}:
        if not _GUID.fullmatch(args.connection.strip()):
            raise ConfigError(f"--connection {args.connection!r} is not a connection id (a GUID)")
        connection_id = args.connection.strip().lower()
        return lambda rt, dry, say: rt.healer.heal_target(
            CONNECTIONS, connection_id, dry_run=dry, trigger=TRIGGER, present_again=again
        )
    raise ConfigError(
        "heal needs exactly one of: --secret NAME | --workspace W --dataset D | --gateway G --datasource S"
        " | --connection C"
    )


def _adopt_usage(args: argparse.Namespace) -> None:
    """``adopt``'s flags, checked before anything is built."""
    for flag, value in (("--connection", args.connection), ("--vault-connection", args.vault_connection)):
        if value is not None and not _GUID.fullmatch(value.strip()):
            raise ConfigError(f"{flag} {value!r} is not a connection id (a GUID)")
    if args.release and (args.vault_connection or args.secret):
        raise ConfigError("adopt --release takes no --vault-connection or --secret (it moves back to a copy)")
    if not args.release and not args.vault_connection:
        raise ConfigError(
            "adopt needs --vault-connection K: the Key Vault connection the reference goes through"
        )


def _plan_move(runtime: Runtime, args: argparse.Namespace) -> MovePlan:
    """What ``adopt`` would do (GET requests and a Key Vault read only); raises
    :class:`AdoptRefused` saying why not."""
    healer = runtime.healer
    if runtime.fabric is None:  # pragma: no cover - build_healer always builds one
        raise ConfigError("Fabric is not configured")
    connection_id = args.connection.strip().lower()
    if args.release:
        return adopt.plan_release(
            fabric=runtime.fabric,
            bindings=runtime.bindings,
            references=healer.references,
            connection_id=connection_id,
        )
    return adopt.plan_adoption(
        fabric=runtime.fabric,
        keyvault=runtime.keyvault,
        bindings=runtime.bindings,
        references=healer.references,
        vault_url=runtime.settings.key_vault_url,
        connection_id=connection_id,
        vault_connection_id=args.vault_connection.strip().lower(),
        secret_name=args.secret,
    )


def _move(plan: MovePlan) -> Command:
    return lambda rt, dry, say: rt.healer.move_connection(plan, dry_run=dry, trigger=TRIGGER)


def _print_plan(plan: MovePlan, out: TextIO, as_json: bool, *, yes: bool) -> None:
    """The plan, before anything is sent (with ``--json`` the report carries it as ``plan``)."""
    if as_json:
        return
    out.write(("Moving back" if plan.release else "Moving onto a Key Vault reference") + ":\n")
    for line in plan.lines():
        out.write(f"  {line}\n")
    if not yes:
        out.write("Nothing is changed without --yes. What the safety core says now:\n")
    out.write("\n")


def _after_move(plan: MovePlan, report: Report, write_to: str | None, dry_run: bool, err: TextIO) -> None:
    """Once moved: the bindings change, written to ``write_to`` or said on stderr."""
    wanted = Action.UPDATED if plan.release else Action.ADOPTED
    if dry_run or not any(o.action == wanted for o in report.targets()):
        if not dry_run:
            print("the connection was not moved: the bindings stay as they are", file=err)
        return
    if write_to is None:
        print(f"now change the bindings: {plan.bindings_change()}", file=err)
        return
    try:
        with open(write_to, encoding="utf-8-sig") as fh:
            doc = json.load(fh)
        edited = with_reference_mark(doc, plan.binding.name, plan.connection_id, marked=not plan.release)
        with open(write_to, "w", encoding="utf-8") as fh:
            json.dump(edited, fh, indent=2)
            fh.write("\n")
    except (OSError, ValueError, RemediationError) as exc:
        print(
            f"warning: could not write {write_to} ({exc}); change the bindings by hand: "
            f"{plan.bindings_change()}",
            file=err,
        )
        return
    print(f"wrote {write_to}: {plan.bindings_change().split(' (or ', 1)[0]}", file=err)


def _replay(runtime: Runtime, path: str, dry_run: bool) -> Report:
    """Process a batch of events the way the Functions app does, with event-id dedupe."""
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    events = parse_events(text, vault_origin=runtime.settings.vault_origin)
    combined = Report(dry_run=dry_run, correlation_id=str(uuid.uuid4()))
    healer, ledger = runtime.healer, runtime.ledger
    for event in events:
        if event.kind is Kind.SECRET_NEW_VERSION and not event.foreign_vault and event.secret_name:
            if not healer.bindings.for_secret(event.secret_name):
                continue
            if not dry_run and ledger.event_seen(event.id):
                continue
            part = healer.heal_secret(
                event.secret_name,
                event_version=event.secret_version,
                dry_run=dry_run,
                trigger=TRIGGER,
                correlation_id=event.id,
            )
        elif event.kind is Kind.REFRESH_FAILED and event.workspace_id and event.dataset_id:
            if not dry_run and any(ledger.event_seen(key) for key in event.dedupe_keys):
                continue
            part = healer.heal_dataset(
                event.workspace_id,
                event.dataset_id,
                dry_run=dry_run,
                trigger=TRIGGER,
                correlation_id=event.id,
            )
        else:
            continue
        if not dry_run:  # done once handled, so a replay that failed half-way can be run again
            for key in event.dedupe_keys:  # a job event: its job instance too
                ledger.mark_event_seen(key, time.time())
        combined.merge(part)
    return combined


def _history(settings: Settings, args: argparse.Namespace, out: TextIO, as_json: bool) -> int:
    ledger = open_ledger(settings)
    try:
        rows = ledger.outcomes(since=time.time() - args.hours * 3600, limit=args.limit)
    finally:
        ledger.close()
    # Rows recorded before outcomes were masked may still hold a URL's key: mask it on the way out.
    rows = [replace(o, reason=mask_urls(o.reason)) if o.reason else o for o in rows]
    if args.figures:
        print_figures(figures(rows), out, as_json)
    else:
        print_history(rows, out, as_json)
    return EXIT_OK


def _bindings_check(settings: Settings, out: TextIO, as_json: bool) -> int:
    """Validate the file (exit 2 if invalid), then look every target up in Power BI (GETs only;
    never the status check, which signs in). Rows whose status does not start with ``ok`` make
    the exit code 1; ``ok (...)`` rows carry a warning a person should read."""
    bindings = load_bindings_from(settings)
    runtime = build_healer(settings, bindings=bindings)
    rows: list[dict[str, object]] = []

    def row(binding: str, gateway: str, datasource: str, status: str, warnings: Sequence[str] = ()) -> None:
        entry: dict[str, object] = {"binding": binding, "gateway": gateway, "datasource": datasource}
        entry["status"] = status
        if warnings:
            entry["warnings"] = list(warnings)
        rows.append(entry)

    try:
        gateways = {g.id.lower(): g for g in runtime.powerbi.get_gateways()}
        by_gateway = {gid: runtime.powerbi.get_datasources(gid) for gid in gateways}
        for binding in bindings.bindings:
            for problem in binding_problems(binding):
                row(binding.name, "-", "-", problem)
            warnings = binding_warnings(binding)
            if binding.matches:
                warnings.append(
                    "a match selects by type, server, database, url and path, not by account: Power "
                    "BI does not report which account a data source signs in as, so every data source "
                    f"it selects that signs in with {binding.credential_type.value} credentials is given "
                    f"{binding.name!r}'s (one with another credential type is refused); bind by id the "
                    "ones that sign in as another account"
                )
            for target in binding.targets:
                if target.connection_id is not None:
                    status, advice = _check_connection(runtime, binding, target)
                    row(binding.name, "connection", target.connection_id, status, [*warnings, *advice])
                    continue
                found = next(
                    (
                        d
                        for d in by_gateway.get(target.gateway_id, [])
                        if d.id.lower() == target.datasource_id
                    ),
                    None,
                )
                if found is None and target.gateway_id not in gateways:
                    # A cloud data source (its virtual gateway is never listed): read it directly.
                    with contextlib.suppress(RemediationError):
                        found = runtime.powerbi.get_datasource(target.gateway_id, target.datasource_id)
                if found is None:
                    status = (
                        "gateway not visible: add the identity as a gateway admin (on-premises) "
                        "or make it the owner of a dataset using the source (cloud)"
                        if target.gateway_id not in gateways
                        else "data source not found on the gateway"
                    )
                elif found.credential_type != binding.credential_type.value:
                    status = (
                        f"credential type is {found.credential_type} in Power BI, "
                        f"{binding.credential_type} here"
                    )
                else:
                    status = "ok"
                row(binding.name, target.gateway_id, target.datasource_id, status, warnings)
            for match in binding.matches:
                if match.selects_connections:
                    for connection_id, status in _check_connection_match(runtime, bindings, binding, match):
                        row(binding.name, "connection", connection_id, status, warnings)
                    continue
                hits = [
                    (gid, d.id)
                    for gid, items in by_gateway.items()
                    for d in items
                    if match.matches(d.datasource_type or "", _strings(d.connection() or {}))
                ]
                for gid, did in hits:
                    row(binding.name, gid, did, "ok (match)", warnings)
                if not hits:
                    row(binding.name, "-", "-", "match selects no data source", warnings)
    finally:
        runtime.close()
    print_check(rows, out, as_json)
    return EXIT_OK if all(str(r["status"]).startswith("ok") for r in rows) else EXIT_PROBLEM


def _check_connection(runtime: Runtime, binding: Binding, target: Target) -> tuple[str, list[str]]:
    """``bindings check`` for a Fabric connection target: a GET, never a test (it would sign in)."""
    if runtime.fabric is None:  # pragma: no cover - build_healer always builds one
        return "Fabric is not configured", []
    connection_id = target.connection_id or ""
    try:
        connection = runtime.fabric.get_connection(connection_id)
    except FabricNotAuthorized:
        return (
            "connection not visible: give the identity a role on it (User, or Owner) in Manage "
            "connections and gateways",
            [],
        )
    except FabricEntityNotFound:
        return "connection not found", []
    except RemediationError as exc:
        return f"could not read the connection: {exc}", []
    wanted = {"SAS": "SharedAccessSignature"}.get(
        binding.credential_type.value, binding.credential_type.value
    )
    if target.key_vault_reference:
        return "ok (Key Vault reference: Fabric reads the secret itself; never pushed)", []
    advice: list[str] = []
    if could_reference(connection, binding.credential_type):
        advice.append(
            f"connection {connection_id} ({connection.connection_type}, {wanted}) could reference Key Vault "
            f"secret {binding.secret!r} instead of being pushed a copy on every rotation; once it does, mark "
            'the target "keyVaultReference": true'
        )
    if connection.credential_type and connection.credential_type != wanted:
        return f"credential type is {connection.credential_type} in Fabric, {wanted} here", advice
    return "ok", advice


def _check_connection_match(
    runtime: Runtime, bindings: BindingSet, binding: Binding, match: TargetMatch
) -> list[tuple[str, str]]:
    """``bindings check`` for a connection ``match``: which connections it selects (a GET)."""
    if runtime.fabric is None:  # pragma: no cover - build_healer always builds one
        return [("-", "Fabric is not configured")]
    try:
        connections = runtime.fabric.list_connections()
    except RemediationError as exc:
        return [("-", f"could not list the Fabric connections: {exc}")]
    wanted = fabric_credential_type(binding.credential_type)
    rows: list[tuple[str, str]] = []
    for connection in connections:
        if not match.matches_connection(
            connection.connection_type, connection.connectivity_type, connection.path
        ):
            continue
        explicit = bindings.for_target(CONNECTIONS, connection.id)
        if explicit is not None and explicit.name != binding.name:
            rows.append((connection.id, f"ok (match; bound by id by {explicit.name!r}, which decides)"))
        elif connection.credential_type and connection.credential_type != wanted:
            rows.append(
                (
                    connection.id,
                    f"match selects it, but it signs in with {connection.credential_type}, not {wanted}",
                )
            )
        else:
            rows.append((connection.id, "ok (match)"))
    return rows or [("-", "match selects no connection")]


def _discover(settings: Settings, args: argparse.Namespace, out: TextIO, err: TextIO, as_json: bool) -> int:
    """Read-only inventory (GET requests only, no Key Vault; the ledger, when one exists, only for
    adopt's records of the connections it moved); see :mod:`remediation.inventory.discover`."""
    if as_json and args.csv:
        raise ConfigError("discover takes --json or --csv, not both")
    bindings = load_bindings_from(settings) if settings.bindings else BindingSet()
    powerbi = build_powerbi(settings)
    fabric = build_fabric(settings)
    # adopt's records of the connections it moved, when there is a ledger (never made for this)
    ledger = (
        open_ledger(settings) if settings.storage is not None or os.path.exists(settings.state_path) else None
    )
    live = err.isatty() and not (as_json or args.csv)
    try:
        inventory = discover.scan(
            powerbi,
            bindings,
            workspaces=bindings.watch_workspaces,
            progress=(lambda m: print(f"\r\033[K… {m}", end="", file=err, flush=True))
            if live
            else (lambda _m: None),
            concurrency=settings.concurrency,
            fabric=fabric,
            records=None if ledger is None else References(ledger).of,
        )
    finally:
        powerbi.pipeline.close()
        fabric.pipeline.close()
        if ledger is not None:
            ledger.close()
        if live:
            print("\r\033[K", end="", file=err, flush=True)
    print_inventory(inventory, out, err, as_json=as_json, as_csv=args.csv)
    if args.propose:
        draft = proposal.propose(inventory)
        try:
            with open(args.propose, "x", encoding="utf-8") as fh:
                json.dump(draft, fh, indent=2)
                fh.write("\n")
        except FileExistsError:
            raise ConfigError(f"{args.propose} exists; --propose does not overwrite a file") from None
        except OSError as exc:
            raise ConfigError(f"cannot write {args.propose}: {exc.strerror}") from None
        print(
            f"wrote {args.propose}: {len(draft['bindings'])} draft bindings for "
            f"{sum(len(b['targets']) for b in draft['bindings'])} unbound data sources and connections; "
            "fill in every <...> placeholder, then run: python -m remediation bindings check",
            file=err,
        )
    return EXIT_OK


def _events_check(settings: Settings, out: TextIO, as_json: bool) -> int:
    """Which watched semantic models Fabric job events could cover (read-only, as ``discover``; the
    ledger is only read); see :mod:`remediation.inventory.event_coverage`."""
    bindings = load_bindings_from(settings)
    powerbi = build_powerbi(settings)
    fabric = build_fabric(settings)
    try:
        inventory = discover.scan(
            powerbi,
            bindings,
            workspaces=bindings.watch_workspaces,
            concurrency=settings.concurrency,
            fabric=fabric,
        )
        groups = powerbi.get_groups()
    finally:
        powerbi.pipeline.close()
        fabric.pipeline.close()
    ledger = open_ledger(settings)
    try:
        outcomes = ledger.outcomes(since=time.time() - 7 * 86400, limit=5000)
    finally:
        ledger.close()
    rows = event_coverage.coverage(inventory, groups, outcomes, watched=bindings.watch_workspaces)
    event_coverage.render(rows, out, as_json=as_json)
    return EXIT_OK


def _strings(details: dict[str, object]) -> dict[str, str]:
    return {k: v for k, v in details.items() if isinstance(v, str)}


def _progress(err: TextIO, as_json: bool) -> Callable[[str], None]:
    if as_json or not err.isatty():
        return lambda _m: None
    return lambda message: print(f"… {message}", file=err)
