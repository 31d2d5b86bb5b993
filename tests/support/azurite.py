"""Start Azurite's Table service, and on request its Queue service (npm package ``azurite``,
installed by ``make test``), for a test.

It listens on a free 127.0.0.1 port with in-memory persistence and its telemetry off, and is
stopped by whoever started it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AZURITE_TABLE = ROOT / "node_modules" / ".bin" / "azurite-table"
AZURITE_QUEUE = ROOT / "node_modules" / ".bin" / "azurite-queue"

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Azurite:
    port: int
    process: subprocess.Popen[bytes]
    queue_port: int | None = None
    queue_process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        queue = (
            "" if self.queue_port is None else f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};"
        )
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};{queue}"
        )

    def stop(self) -> None:
        for process in (self.process, self.queue_process):
            if process is None:
                continue
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(binary: Path, service: str, timeout: float) -> tuple[int, subprocess.Popen[bytes]]:
    """Start ``azurite-{service}`` on a free loopback port and wait until it accepts connections."""
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run `make test` (it runs `npm install`).")
    port = _free_port()
    process = subprocess.Popen(
        [
            str(binary),
            f"--{service}Host",
            "127.0.0.1",
            f"--{service}Port",
            str(port),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--silent",
            "--skipApiVersionCheck",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"azurite-{service} exited with {process.returncode}: {err[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return port, process
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait(timeout=5)
    raise RuntimeError(f"azurite-{service} did not start in time")


def start_azurite(timeout: float = 30.0, *, queue: bool = False) -> Azurite:
    """Start ``azurite-table`` (and ``azurite-queue`` when ``queue``) and wait until they accept
    connections; the connection string then names both endpoints."""
    port, process = _start(AZURITE_TABLE, "table", timeout)
    server = Azurite(port, process)
    if queue:
        try:
            server.queue_port, server.queue_process = _start(AZURITE_QUEUE, "queue", timeout)
        except BaseException:
            server.stop()
            raise
    return server
