"""Helpers for the infra tests: paths, and the Bicep / YAML parsers from wherever they are.

pycep-parser (the Bicep parser checkov uses) and PyYAML are imported from the project venv when
installed there; otherwise they are run from ``.venv-checkov`` (which ``make infra-check``
creates, and which has both, as checkov's dependencies). Without either, the test is skipped
with a message saying how to get them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CHECKOV_PYTHON = ROOT / ".venv-checkov" / "bin" / "python"

BICEP_FILES = sorted(INFRA.rglob("*.bicep"))


def _in_checkov_venv(code: str, *args: str) -> str:
    if not CHECKOV_PYTHON.exists():
        pytest.skip("neither the project venv nor .venv-checkov has the parser: run `make infra-check`")
    done = subprocess.run(
        [str(CHECKOV_PYTHON), "-c", code, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise AssertionError(done.stderr[-4000:])
    return done.stdout


_PARSE_BICEP = """
import json, sys
from pathlib import Path
from pycep import BicepParser
errors = {}
for name in sys.argv[1:]:
    try:
        BicepParser().parse(file_path=Path(name))
    except Exception as exc:
        errors[name] = f"{type(exc).__name__}: {str(exc)[:800]}"
print(json.dumps(errors))
"""


def bicep_parse_errors(paths: list[Path]) -> dict[str, str]:
    """File -> parse error, for the files pycep-parser cannot parse (empty: all parsed)."""
    names = [str(p) for p in paths]
    try:
        from pycep import BicepParser  # type: ignore[import-not-found]
    except ImportError:
        return dict(json.loads(_in_checkov_venv(_PARSE_BICEP, *names)))
    errors: dict[str, str] = {}
    for path in paths:
        try:
            BicepParser().parse(file_path=path)
        except Exception as exc:  # noqa: BLE001 - report every file's error
            errors[str(path)] = f"{type(exc).__name__}: {str(exc)[:800]}"
    return errors


_LOAD_YAML = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8'))))"


def load_yaml(path: Path) -> Any:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return json.loads(_in_checkov_venv(_LOAD_YAML, str(path)))
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def app_settings_in_bicep() -> set[str]:
    """Names in the Function App's ``siteConfig.appSettings`` (infra/modules/functionapp.bicep)."""
    text = (INFRA / "modules" / "functionapp.bicep").read_text(encoding="utf-8")
    start = text.index("appSettings: [")
    depth, end = 0, start
    for i in range(text.index("[", start), len(text)):
        if text[i] == "[":
            depth += 1
        elif text[i] == "]":
            depth -= 1
            if depth == 0:
                end = i
                break
    return set(re.findall(r"name:\s*'([A-Za-z_][A-Za-z0-9_]*)'", text[start:end]))


def python() -> str:
    return sys.executable
