"""Shared fixtures: a running sandbox per test, and the product's environment pointing at it; the
Hypothesis profiles; and the checks that no test leaves telemetry exporters behind."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from remediation.telemetry import appinsights as telemetry
from sandbox import Sandbox, world
from tests.support import layers, leftovers
from tests.support.azurite import Azurite, start_azurite

# Property tests (Hypothesis). "deterministic", the default: the same examples every run
# (derandomized: the seed comes from the test's own code), no example database (nothing written to
# .hypothesis/). "long" (HYPOTHESIS_PROFILE=long): more examples, new random ones each run; a
# failure prints the @reproduce_failure line that replays it.
settings.register_profile("deterministic", derandomize=True, max_examples=60, print_blob=True)
settings.register_profile("long", max_examples=1000, database=None, print_blob=True)
# "mutation" (make mutate passes --hypothesis-profile=mutation): the deterministic examples with no
# deadline and no too-slow health check, so a mutant is killed by a wrong answer, never by the load
# of the mutation run (docs/testing.md, "Mutation testing").
settings.register_profile(
    "mutation",
    parent=settings.get_profile("deterministic"),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


# Port 443 (msal's user-realm discovery) can be bound by one process at a time, and `make test`
# runs two (pytest-xdist). So a sandbox serves it only in the tests marked `user_realm` (or using
# the `port_443` fixture), and those run one after another in one process (xdist group "port-443").
world.SERVE_USER_REALM = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``standin`` the tests that check a stand-in, not the product (tests/support/layers.py);
    mark ``user_realm`` the tests that use the ``port_443`` fixture, and keep all of those in one
    process."""
    root = config.rootpath
    for item in items:
        path = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        function = getattr(item, "originalname", item.name)
        if layers.is_standin(path, function):
            item.add_marker(pytest.mark.standin)
        if "port_443" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.user_realm)
        if item.get_closest_marker("user_realm") is not None:
            item.add_marker(pytest.mark.xdist_group("port-443"))


@pytest.fixture(autouse=True)
def _port_443_where_needed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandboxes of a test marked ``user_realm`` serve port 443; no other test's do."""
    if request.node.get_closest_marker("user_realm") is not None:
        monkeypatch.setattr(world, "SERVE_USER_REALM", True)


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """The run fails (an error at the last test's teardown) if new Azure Monitor storage folders
    appeared in the system temp directory or exporter threads are still running at its end
    (see :mod:`tests.support.leftovers`)."""
    before = leftovers.storage_folders()
    yield
    found = leftovers.problems(before)
    if found:
        pytest.fail("the tests left telemetry behind: " + "; ".join(found), pytrace=False)


@pytest.fixture(autouse=True)
def _no_exporter_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The product configuring the real Azure Monitor distro in the pytest process fails the test
    (a test that replaces the distro's ``configure_azure_monitor`` with a fake may call it)."""
    configure = telemetry._configure_azure_monitor

    def guarded(*args: object, **kwargs: object) -> None:
        import azure.monitor.opentelemetry as distro
        from azure.monitor.opentelemetry._configure import configure_azure_monitor as real

        if distro.configure_azure_monitor is real:
            pytest.fail(leftovers.IN_PROCESS, pytrace=False)
        configure(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(telemetry, "_configure_azure_monitor", guarded)


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    """A started sandbox (HTTPS on a free 127.0.0.1 port), stopped after the test."""
    sandbox = Sandbox()
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def sandbox_env(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Apply ``sb.env()`` to ``os.environ`` for this test (CA trust included) and return it."""
    env = sb.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def azurite() -> Iterator[Azurite]:
    """Azurite's Table service on a free loopback port, in memory, stopped after the test."""
    server = start_azurite()
    try:
        yield server
    finally:
        server.stop()
