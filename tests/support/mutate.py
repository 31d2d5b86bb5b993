"""``make mutate``: mutmut over the safety core and what feeds it, then the score.

Run from the repository root (``python -m tests.support.mutate``). It starts from a clean
``mutants/`` (mutmut's working copy), runs ``mutmut run`` on :data:`TARGETS` (the configuration,
the test selection and what is copied are in ``pyproject.toml`` under ``[tool.mutmut]``), and
prints the wall time, the score (killed / all) and every mutant that was not killed, each of
which ``mutmut show NAME`` prints as a diff. docs/testing.md ("Mutation testing") lists the
equivalent ones with the reason. Not part of ``make test``.
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import io
import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
import tokenize
from collections import Counter
from pathlib import Path

#: What is mutated (mutmut's mutant names, as globs): the safety core, the refresher's gating
#: (the evidence for the refresh gate and reading a failure: refresh_evidence.py; starting and
#: following refreshes one account at a time: refreshes.py; the dataset flow and the sweep's
#: choice of failed datasets in refresher.py), accounts, the sign-in recogniser, redaction and the
#: gateway encryption.
TARGETS: tuple[str, ...] = (
    "remediation.safety.*",
    "remediation.rules.accounts.*",
    "remediation.rules.signins.*",
    "remediation.rules.redact.*",
    "remediation.rules.gateway_crypto.*",
    "remediation.reconciler.refresh_evidence.*",
    "remediation.reconciler.refreshes.*",
    "remediation.reconciler.refresher.x?Refresher?_prepare__mutmut_*",
    "remediation.reconciler.refresher.x?Refresher?_finish__mutmut_*",
    "remediation.reconciler.refresher.x?Refresher?_failed_among__mutmut_*",
)

MUTANTS = Path("mutants")
#: The files the targets live in (where an equivalent line may carry mutmut's pragma).
SOURCES: tuple[str, ...] = (
    "remediation/safety/*.py",
    "remediation/rules/accounts.py",
    "remediation/rules/signins.py",
    "remediation/rules/redact.py",
    "remediation/rules/gateway_crypto.py",
    "remediation/reconciler/refresh_evidence.py",
    "remediation/reconciler/refreshes.py",
    "remediation/reconciler/refresher.py",
)
#: ``# pragma: no mutate (equivalent: why)``: mutmut makes no mutant of that line; only lines whose
#: every mutant is equivalent carry it, each with its reason (docs/mutation-survivors.md).
PRAGMA = re.compile(r"#\s*pragma:\s*no mutate\b(?P<rest>.*)$")
# mutmut's exit codes (mutmut.stats.status_by_exit_code) as they count here.
_STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout"}
_STATUS |= {24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 37: "caught by type check"}


def results() -> dict[str, str]:
    """Every targeted mutant and its status, from mutmut's ``.meta`` files."""
    found: dict[str, str] = {}
    for meta in sorted(MUTANTS.glob("remediation/**/*.py.meta")):
        codes = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {})
        for name, code in codes.items():
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in TARGETS):
                found[name] = "not checked" if code is None else _STATUS.get(code, "suspicious")
    return found


def _functions(module: str) -> dict[str, str]:
    """The body of every function of mutmut's copy of ``module`` (mutants and originals), by name."""
    path = MUTANTS / (module.replace(".", "/") + ".py")
    lines = path.read_text(encoding="utf-8").splitlines()
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "__mutmut_" in node.name:
            found[node.name] = textwrap.dedent("\n".join(lines[node.body[0].lineno - 1 : node.end_lineno]))
    return found


_STRINGS = {
    tokenize.STRING,
    *(getattr(tokenize, t) for t in ("FSTRING_START", "FSTRING_MIDDLE") if hasattr(tokenize, t)),
}
_LAYOUT = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT}


def _shape(code: str) -> list[str]:
    """The tokens of ``code`` with every string literal as one placeholder."""
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    return ["<str>" if t.type in _STRINGS else t.string for t in tokens if t.type not in _LAYOUT]


def changes(name: str, cache: dict[str, dict[str, str]]) -> tuple[str, list[str]]:
    """What mutant ``name`` changed: ``"wording"`` when only string literals differ from the
    original (the text of a reason or a message), else ``"logic"``; and the changed lines."""
    module, _, function = name.rpartition(".")
    if module not in cache:
        cache[module] = _functions(module)
    mutant = cache[module].get(function, "")
    original = cache[module].get(function.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", "")
    diff = difflib.unified_diff(original.splitlines(), mutant.splitlines(), lineterm="", n=0)
    lines = [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    if _shape(original) == _shape(mutant):
        return "wording", lines
    if _FIRST_PIECE.sub(r".split(\1)[0]", original) == _FIRST_PIECE.sub(r".split(\1)[0]", mutant):
        return "split", lines  # the first piece of a split is the same whatever the maxsplit
    return "logic", lines


# `.split(sep, n)[0]`, `.split(sep, )[0]`, `.split(sep)[0]`: one first piece for any n.
_FIRST_PIECE = re.compile(r"\.split\(([^,()]+?)\s*(?:,\s*\d*\s*)?\)\[0\]")


def excluded(root: Path = Path(".")) -> list[tuple[str, int, str]]:
    """Every line of :data:`SOURCES` that mutmut skips (its pragma): file, line and reason."""
    found: list[tuple[str, int, str]] = []
    for pattern in SOURCES:
        for path in sorted(root.glob(pattern)):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                match = PRAGMA.search(line)
                if match:
                    reason = match["rest"].strip().removeprefix("(").removesuffix(")")
                    found.append((path.relative_to(root).as_posix(), number, reason))
    return found


def report(found: dict[str, str], seconds: float | None) -> int:
    counts = Counter(found.values())
    killed = counts["killed"] + counts["timeout"]
    if seconds is not None:
        print(f"wall time: {seconds / 60:.1f} min")
    print("by status: " + ", ".join(f"{status} {n}" for status, n in sorted(counts.items())))
    print(f"score: {killed}/{len(found)} killed ({100 * killed / max(len(found), 1):.1f}%)")
    hung = sorted(name for name, status in found.items() if status == "timeout")
    if hung:  # counted killed (the mutant made a run never end); named so each can be checked
        print(f"killed by the timeout ({len(hung)}): " + ", ".join(name.rpartition(".")[2] for name in hung))
    skipped = excluded()
    print(f"lines not mutated as equivalent (pragma): {len(skipped)}")
    for path, number, reason in skipped:
        print(f"  {path}:{number}: {reason}")
    left = sorted(
        name for name, status in found.items() if status not in ("killed", "timeout", "not checked")
    )
    if left:
        cache: dict[str, dict[str, str]] = {}
        kinds = {name: changes(name, cache) for name in left}
        kinds_count = Counter(kind for kind, _ in kinds.values())
        print(
            f"not killed ({len(left)}: {kinds_count['wording']} change only the wording of a text, "
            f"{kinds_count['split']} only the maxsplit of a split whose first piece is used)"
        )
        for name in left:
            kind, lines = kinds[name]
            print(f"  {found[name]:12} {kind:8} {name}")
            if kind == "logic":
                for line in lines:
                    print(f"        {line.strip()[:150]}")
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["--score"]:  # the score of the last run, without running again
        return report(results(), None)
    shutil.rmtree(MUTANTS, ignore_errors=True)
    mutmut = Path(sys.executable).with_name("mutmut")
    started = time.monotonic()
    MUTANTS.mkdir()
    log = MUTANTS / "run.log"
    print(f"mutmut run, {len(TARGETS)} target patterns; its output goes to {log}", flush=True)
    with log.open("w", encoding="utf-8") as out:
        code = subprocess.call([str(mutmut), "run", *TARGETS], stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if code != 0:
        print(f"mutmut run failed (exit {code}); see {log}")
        return code
    return report(results(), seconds)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
