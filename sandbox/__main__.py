"""``python -m sandbox``: start the sandbox with the demo world and print how to point at it.

The printed ``export`` lines set the product's environment (DESIGN.md contract); in another
shell, ``python -m remediation sweep --dry-run`` then talks to this sandbox. Ctrl-C stops it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading

from sandbox.demo_world import build_demo_world
from sandbox.world import Sandbox


def main() -> int:
    directory = tempfile.mkdtemp(prefix="pbi-sandbox-")
    with Sandbox(tls_dir=directory) as sb:
        world = build_demo_world(sb)
        bindings = os.path.join(directory, "bindings.json")
        with open(bindings, "w", encoding="utf-8") as fh:
            fh.write(world.bindings_json())
        print("# The sandbox is serving Entra ID, Key Vault, Power BI and App Insights ingestion at", sb.url)
        print("# Paste these lines into another shell, then try: python -m remediation bindings check")
        print(sb.shell_exports())
        print(f"export REMEDIATION_BINDINGS='{bindings}'")
        print(f"export REMEDIATION_STATE_PATH='{os.path.join(directory, 'ledger.sqlite')}'")
        print("# Ctrl-C stops the sandbox.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
