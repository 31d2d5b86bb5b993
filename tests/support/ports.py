"""Port 443, which msal's user-realm discovery always calls (see ``sandbox/entra/service.py``).

In the tests marked ``user_realm`` (or using the ``port_443`` fixture) the sandbox serves its
routes on 443 too when it can bind it; no other test's sandbox binds it, so two test processes
can run at once (tests/conftest.py). The caller-identity tests (the password grant, the lockout
of an Entra user) need it: without it they are skipped, and under
``CI=true`` they fail instead, saying what to do, so a CI result never hides them.

    python -m tests.support.ports    # one line: can this machine's tests bind 443 now?
"""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sandbox import Sandbox

PORT = 443


def advice() -> str:
    python = os.path.realpath(sys.executable)
    return (
        "run the tests as root, or let this Python bind low ports "
        f"(sudo setcap cap_net_bind_service=+ep {python}), "
        "and do not run two test runs at once (the sandbox of a test marked user_realm holds 443 "
        "while it runs)"
    )


def bind_problem(port: int = PORT, host: str = "127.0.0.1") -> str | None:
    """None when ``port`` can be bound on ``host`` now; else why not (the OS's words)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the sandbox's servers do
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _not_served(sb: Sandbox) -> str | None:
    """None when ``sb`` serves port 443; else why not and what to do."""
    if PORT in sb.http.extra_ports_bound:
        return None
    why = bind_problem() or "in use when the sandbox started"
    return f"port {PORT} could not be bound ({why}); msal's user-realm discovery needs it: {advice()}"


def _fail_in_ci(message: str) -> None:
    if in_ci():
        pytest.fail(f"{message}. (Under CI=true this fails instead of skipping.)", pytrace=False)


def user_realm_port_served(sb: Sandbox) -> bool:
    """True when ``sb`` serves port 443; False when it does not (under ``CI=true`` the test fails
    here instead, with the reason and what to do)."""
    message = _not_served(sb)
    if message is not None:
        _fail_in_ci(message)
    return message is None


def require_user_realm_port(sb: Sandbox) -> None:
    """Skip the test when ``sb`` does not serve port 443 (under ``CI=true``: fail it)."""
    message = _not_served(sb)
    if message is not None:
        _fail_in_ci(message)
        pytest.skip(message)


def main() -> int:
    why = bind_problem()
    if why is None:
        print(f"port {PORT}: can bind (the caller-identity tests will run)")
    else:
        print(
            f"port {PORT}: cannot bind ({why}); the caller-identity tests will be skipped, "
            f"and fail under CI=true: {advice()}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
