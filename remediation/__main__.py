"""``python -m remediation``: the operator CLI (see :mod:`remediation.cli`)."""

from remediation.cli import main

raise SystemExit(main())
