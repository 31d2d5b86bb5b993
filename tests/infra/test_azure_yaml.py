"""azure.yaml: `azd up` provisions infra/, deploys the Functions app, then creates the subscriptions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.infra._tools import ROOT, load_yaml


def test_azure_yaml_names_infra_the_function_service_and_the_postdeploy_hook() -> None:
    doc = load_yaml(ROOT / "azure.yaml")
    assert doc["infra"]["provider"] == "bicep"
    assert doc["infra"]["path"] == "infra"
    assert (ROOT / doc["infra"]["path"] / f"{doc['infra'].get('module', 'main')}.bicep").exists()
    (name, service), *others = doc["services"].items()
    assert not others
    assert service["language"] == "python"
    assert service["host"] == "function"
    assert (ROOT / service["project"] / "function_app.py").exists()
    main = (ROOT / "infra" / "modules" / "functionapp.bicep").read_text(encoding="utf-8")
    assert f"'azd-service-name': '{name}'" in main, "the site's azd-service-name tag must match the service"

    hook = doc["hooks"]["postdeploy"]
    posix, windows = hook["posix"], hook["windows"]
    for script in (posix["run"], windows["run"]):
        path = ROOT / script
        assert path.exists(), script
        assert "subscriptions.bicep" in path.read_text(encoding="utf-8"), script
    assert os.access(ROOT / posix["run"], os.X_OK)


def test_azure_yaml_compiles_the_package_before_azd_zips_it() -> None:
    doc = load_yaml(ROOT / "azure.yaml")
    (service,) = doc["services"].values()
    hook = service["hooks"]["prepackage"]
    assert hook["posix"]["run"] == "./infra/hooks/prepackage.sh"
    assert hook["windows"]["run"] == "./infra/hooks/prepackage.ps1"


def test_the_package_carries_hash_checked_bytecode_that_a_read_only_worker_uses(tmp_path: Path) -> None:
    """The prepackage hook compiles our modules; .funcignore keeps the pycs; a worker that
    cannot write bytecode (PYTHONDONTWRITEBYTECODE, like a read-only package) loads them."""
    hook = ROOT / "infra" / "hooks" / "prepackage.sh"
    assert os.access(hook, os.X_OK)
    assert (ROOT / "infra" / "hooks" / "prepackage.ps1").exists()
    ignored = [line.strip() for line in (ROOT / ".funcignore").read_text().splitlines()]
    assert "__pycache__/" not in ignored and "*.pyc" not in ignored
    for item in ("function_app.py", "host.json"):
        shutil.copy2(ROOT / item, tmp_path)
    shutil.copytree(
        ROOT / "remediation", tmp_path / "remediation", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["sh", str(hook), str(tmp_path)], env=env, check=True, capture_output=True)
    for source in (tmp_path / "function_app.py", *(tmp_path / "remediation").glob("*.py")):
        os.utime(source, (0, 0))  # zip archives change file times: a hash check does not care
    probe = (
        "import importlib.util, sys, function_app, remediation.edges.service as s\n"
        "from importlib._bootstrap_external import _classify_pyc\n"
        "for m in (function_app, s):\n"
        "    data = open(m.__cached__, 'rb').read(16)\n"
        "    flags = _classify_pyc(data, m.__name__, {})\n"
        "    assert flags == 0b11, (m.__name__, flags)  # hash-based, checked\n"
        "print(sorted(n for n in sys.modules if n.startswith('remediation'))[:1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert not list((tmp_path / "remediation" / "__pycache__").glob("*.opt-*.pyc"))
