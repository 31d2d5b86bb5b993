"""azure.yaml: `azd up` provisions infra/, deploys the Functions app, then creates the subscriptions."""

from __future__ import annotations

import os

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
