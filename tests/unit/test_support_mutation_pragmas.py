"""A line mutmut skips (``# pragma: no mutate``) is one whose every mutant is equivalent: it says
why on the line, it lies in the code make mutate mutates, and docs/mutation-survivors.md lists it,
so skipping a mutant is never silent (tests/support/mutate.py)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import mutate

ROOT = Path(__file__).resolve().parents[2]
_ANY_PRAGMA = re.compile(r"#\s*pragma:\s*no\s+mutate")


def _pragma_lines() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted((ROOT / "remediation").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if _ANY_PRAGMA.search(line):
                found.append((path.relative_to(ROOT).as_posix(), number, line))
    return found


def test_every_skipped_line_is_in_the_mutated_code_and_says_why_it_is_equivalent() -> None:
    listed = {(path, number) for path, number, _ in mutate.excluded(ROOT)}
    for path, number, line in _pragma_lines():
        assert (path, number) in listed, f"{path}:{number} is not in the code make mutate mutates"
        assert re.search(r"# pragma: no mutate \(equivalent: [^)]{10,}\)", line), (
            f"{path}:{number} must say `# pragma: no mutate (equivalent: <why>)`"
        )


def test_docs_list_every_skipped_line_with_its_reason() -> None:
    doc = (ROOT / "docs" / "mutation-survivors.md").read_text(encoding="utf-8")
    missing = [
        f"{path}: {reason}"
        for path, _, reason in mutate.excluded(ROOT)
        if path not in doc or reason.removeprefix("equivalent: ") not in doc
    ]
    assert missing == [], "docs/mutation-survivors.md does not list these skipped lines"
