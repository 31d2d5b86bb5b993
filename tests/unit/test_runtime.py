"""Where the bindings come from: inline JSON, or a file next to the deployed app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remediation.config.settings import Settings
from remediation.edges import runtime
from remediation.errors import BindingsError, ConfigError


def test_a_relative_bindings_path_is_found_next_to_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "wwwroot"
    app.mkdir()
    (app / "bindings.json").write_text(json.dumps({"bindings": [], "watch": {"workspaces": []}}))
    monkeypatch.setattr(runtime, "APP_ROOT", app)
    monkeypatch.chdir(tmp_path)  # the host's working directory is not the app root

    bindings = runtime.load_bindings_from(Settings.from_env({"REMEDIATION_BINDINGS": "bindings.json"}))

    assert bindings.bindings == ()


def test_a_bindings_file_found_nowhere_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "APP_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BindingsError, match="missing.json"):
        runtime.load_bindings_from(Settings.from_env({"REMEDIATION_BINDINGS": "missing.json"}))


def test_no_bindings_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="REMEDIATION_BINDINGS"):
        runtime.load_bindings_from(Settings.from_env({}))
