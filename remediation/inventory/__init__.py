"""The inventory: which datasets use which gateway data sources (per dataset, or through the admin
scanner), and ``discover``, the read-only listing of what the identity can reach.

* :mod:`~remediation.inventory.inventory`: which datasets use which gateway data sources, kept in
  the ledger and brought up to date once per sweep;
* :mod:`~remediation.inventory.scanner`: the admin scanner path of it (whole workspaces at once);
* :mod:`~remediation.inventory.discover`: ``discover``'s gathering (GET requests only): every data
  source and Fabric connection the identity can reach, the datasets using them, the binding that
  covers each;
* :mod:`~remediation.inventory.rendering`: what ``discover`` prints: ``--json``, ``--csv``, the
  table (pure);
* :mod:`~remediation.inventory.proposal`: ``discover --propose``, draft bindings for what no
  binding covers (pure).
"""
