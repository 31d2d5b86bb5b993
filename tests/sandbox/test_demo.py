"""`make demo` tells the whole story on the sandbox and ends well, without a warning of its own."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from remediation.edges.cli import main
from sandbox import Sandbox
from sandbox.demo_world import build_demo_world

pytestmark = [pytest.mark.sandbox, pytest.mark.filterwarnings("ignore::DeprecationWarning:msal.*")]
ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_heals_a_rotation_and_never_locks_the_account(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sandbox.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its ledger directory, in this test's own
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "6 settling" in out  # the vault-first version waits for its settle time
    assert "Scheduled refreshes: Sales Model=Failed, Sales DW=Failed" in out
    assert "Healed. Refreshes: Sales Model=Completed, Sales DW=Completed" in out
    assert "Power BI saw 6 credential updates" in out and "failed sign-ins with the new password: 0" in out
    assert "First run: 5 blocked, 1 rejected" in out  # one data source of the account first
    assert "failed sign-ins with the wrong password: 1; account locked: False" in out
    assert "Wrong#Password1" not in out
    # A Fabric connection on a two-member gateway cluster is healed beside the gateway data sources.
    assert "Healer, Fabric connection ERP: 1 updated" in out
    assert "1 connection update with 2 encrypted entries, one per member; 2 members decrypted" in out
    assert "Rotated#Erp2" not in out
    # A cloud connection is moved onto a Key Vault reference; after the next rotation the healer
    # sends it nothing and its model's refresh reads the new password from Key Vault itself.
    assert "adopt, Fabric connection Lake (Azure SQL): 1 adopted" in out
    assert "carrying credentialType, passwordReference, username" in out and "no password" in out
    assert "healer, Fabric connection Lake (Azure SQL): 1 key-vault-reference" in out
    assert "Fabric saw 0 connection updates since; the Lake model's scheduled refresh: Completed" in out
    assert "Rotated#Lake2" not in out and "Initial#Lake1" not in out
    # A clean run: its world models gateway data sources as Fabric connections, as the service
    # does, so the healer reads each one's privacy level and encryption and keeps them, and the
    # demo causes no warning of its own.
    assert "1 Private, 5 Organizational; 6 of 6 kept" in out
    assert "warning" not in out.lower()
    assert "2 refreshed, 6 updated." in out
    assert done.stderr == ""  # nothing else on the terminal either (no port 443 notice)


def test_a_world_whose_data_sources_are_not_connections_says_its_warning_once_with_the_count(
    sb: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The demo's world as it was: Fabric does not list the gateway data sources, so the six are
    sent the defaults, and the report says so once, with the count, not six times."""
    world = build_demo_world(sb)
    sb.fabric.lists_gateway_datasources = False
    env = sb.env(
        REMEDIATION_BINDINGS=world.bindings_json(),
        REMEDIATION_STATE_PATH=str(tmp_path / "ledger.sqlite"),
        REMEDIATION_SETTLE_SECONDS="0",
    )
    env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING")  # no exporter in the pytest process
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sb.rotate("CONTOSO\\svc_pbi", "sql-sales-password", "Rotated#Sales2")
    out, err = io.StringIO(), io.StringIO()

    code = main(["heal", "--secret", "sql-sales-password"], environ=env, stdout=out, stderr=err)

    assert code == 0, out.getvalue() + err.getvalue()
    lines = out.getvalue().splitlines()
    (warning,) = [line for line in lines if line.startswith("warning:")]
    assert warning.startswith(
        "warning: 6 data sources: privacyLevel (Organizational) and encryptedConnection (Encrypted) "
        "set to the defaults because the data source's current setting could not be read"
    )
    assert warning.endswith(" and 3 more)")
    assert not any(ds.id in warning for ds in world.datasources)  # each one's own id set aside
    assert sum(" updated " in line for line in lines) == 6
