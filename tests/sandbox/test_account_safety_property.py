"""The per-account rule under random interleavings (hypothesis), through the sandbox.

Each example is a random sequence of what happens in production: rotations source-first and
vault-first (with delays shorter and longer than the settle time), wrong values in Key Vault,
answers lost or turned into 5xx after the source tested the value, time passing, heals and
sweeps on two instances sharing one ledger, and two runs at the same moment. After every
example:

* **the rule**: no presented value cost the account more than one failed sign-in;
* **convergence**: after a proper rotation, every data source holds the new value, with no
  failed sign-in.

The account never locks here (no threshold), so a long sequence cannot hide a second failure
behind a lock. Power BI's own scheduled refreshes are left out: they sign in with whatever is
stored, which is not the healer's doing.

Which examples run is the Hypothesis profile that ``tests/conftest.py`` loads: by default the same
60 every run (derandomized, so CI never draws different cases); ``HYPOTHESIS_PROFILE=long`` draws
1 000 new ones (a failure prints the ``@reproduce_failure`` line that replays it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remediation.healer import Action
from remediation.runtime import Runtime, build_healer
from remediation.settings import Settings
from sandbox import Sandbox
from sandbox.clock import ManualClock
from tests.support.clock import Sleeps
from tests.support.world import World, build_world

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

SETTLE = 60

Step = tuple[Any, ...]
steps = st.one_of(
    st.just(("rotate", "source-first", 0)),
    st.tuples(st.just("rotate"), st.just("vault-first"), st.sampled_from([5, 30, 120])),
    st.just(("wrong",)),
    st.tuples(st.just("fault"), st.sampled_from(["drop", "503", "before-503"])),
    st.tuples(st.just("advance"), st.sampled_from([10, SETTLE + 1, 3600])),
    st.tuples(st.just("heal"), st.integers(0, 1)),
    st.tuples(st.just("sweep"), st.integers(0, 1)),
    st.just(("concurrent",)),
)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _apply(step: Step, w: World, clock: ManualClock, instances: list[Runtime]) -> None:
    sb = w.sb
    match step:
        case ("rotate", order, delay):
            w.rotate(order=order, delay=float(delay))
        case ("wrong",):
            w.put_in_vault("Wrong#" + secrets.token_urlsafe(6))
        case ("fault", "drop"):
            sb.faults.add("powerbi.update_datasource", after=True, drop=True)
        case ("fault", "503"):
            sb.faults.add("powerbi.update_datasource", after=True, status=503)
        case ("fault", "before-503"):
            sb.faults.add("powerbi.update_datasource", status=503)
        case ("advance", seconds):
            clock.advance(float(seconds))
        case ("heal", i):
            instances[i].healer.heal_secret(w.secret_name)
        case ("sweep", i):
            instances[i].healer.sweep()
        case ("concurrent",):
            # .result() re-raises what a run raised: a crash in either thread fails the example.
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="property-run") as pool:
                runs = [
                    pool.submit(instances[0].healer.heal_secret, w.secret_name),
                    pool.submit(instances[1].healer.sweep),
                ]
                for run in runs:
                    run.result(timeout=120)


# How many examples and which: the profile tests/conftest.py loads (a fixed set by default,
# HYPOTHESIS_PROFILE=long for a longer random run); about 0.2 s an example.
@pytest.mark.timeout(120 + settings().max_examples)
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(steps, min_size=1, max_size=7))
def test_any_interleaving_costs_an_account_at_most_one_failed_sign_in_per_value_and_converges(
    history: list[Step],
) -> None:
    clock = ManualClock()
    with (
        tempfile.TemporaryDirectory(prefix="healer-property-") as tmp,
        Sandbox(clock=clock, serve_user_realm=False) as sb,
    ):
        state = Path(tmp)
        # The SDKs cache tokens by the wall clock; this world's clock jumps hours ahead.
        sb.entra.token_lifetime = 30 * 86400.0
        w = build_world(sb, sources=3, lockout_threshold=None)
        env = w.env(
            state / "ledger.db",
            REMEDIATION_SETTLE_SECONDS=str(SETTLE),
            REMEDIATION_MAX_ATTEMPTS="10",
            REMEDIATION_HTTP_TIMEOUT="5",
        )
        env.pop("APPLICATIONINSIGHTS_CONNECTION_STRING", None)
        with _environment(env):
            instances = [
                build_healer(Settings.from_env(env), clock=clock.now, sleep=Sleeps(), poll_interval=0.01)
                for _ in range(2)
            ]
            try:
                # Whatever happened, later runs on both instances try again: that is where a
                # careless healer would present a rejected or in-doubt value a second time.
                tail: list[Step] = [("advance", SETTLE + 1), ("heal", 0), ("sweep", 1), ("heal", 1)]
                for step in [*history, *tail]:
                    _apply(step, w, clock, instances)
                    assert w.worst_repeat() <= 1, (step, w.account.failures_by_fingerprint())
                sb.faults.clear()
                clock.advance(3600)  # every rotation still under way has reached its source

                w.rotate()
                clock.advance(SETTLE + 1)
                report = instances[0].healer.heal_secret(w.secret_name)
            finally:
                for runtime in instances:
                    runtime.close()

        assert w.worst_repeat() <= 1, w.account.failures_by_fingerprint()
        assert {o.action for o in report.targets()} <= {Action.UPDATED, Action.CURRENT}, report.to_dict()
        assert all(w.stored_secret(d) == w.secret for d in w.datasources)
        assert w.account.failures_of(w.secret) == 0
