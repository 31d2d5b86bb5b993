"""``python -m remediation``: the operator CLI (see :mod:`remediation.edges.cli`)."""

from remediation.edges.cli import main

raise SystemExit(main())
