"""The list of tests that check a stand-in rather than the product (tests/support/layers.py)
names files and functions that exist, and the ``standin`` mark follows it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import layers

ROOT = Path(__file__).resolve().parents[2]


def _test_functions(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_each_listed_file_exists_and_holds_tests() -> None:
    empty = [path for path in sorted(layers.STANDIN_FILES) if not _test_functions(path)]
    assert empty == [], "no test functions (renamed or moved? update tests/support/layers.py)"


def test_each_listed_function_is_a_test_of_its_file() -> None:
    assert not set(layers.STANDIN_TESTS) & layers.STANDIN_FILES
    missing = {
        path: sorted(names - _test_functions(path))
        for path, names in layers.STANDIN_TESTS.items()
        if names - _test_functions(path)
    }
    assert missing == {}, "no such tests (renamed? update tests/support/layers.py)"


def test_the_mark_follows_the_list(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("standin") is not None  # this file is listed
    assert layers.is_standin("tests/unit/test_gateway_crypto.py", "test_malformed_input_is_refused")
    assert not layers.is_standin("tests/unit/test_gateway_crypto.py", "test_empty_plaintext_is_refused")
    assert not layers.is_standin("tests/sandbox/test_healer.py", "test_two_hundred_targets_on_one_secret")
