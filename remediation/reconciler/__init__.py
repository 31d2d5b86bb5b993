"""The reconciler: observe, ask the safety core, act. In the order one Key Vault event meets them:

* :mod:`.healer`: the four entry points (secret, dataset, target, sweep; and ``adopt``'s move),
  the runs they start and finish, and which target is presented when (one probe at a time per
  account);
* :mod:`.resolver`: which targets a binding has, which binding a target belongs to, and where
  each signs in;
* :mod:`.accounts`: Key Vault's current secret for a run, and the account and locator each target
  signs in as;
* :mod:`.presenter`: presenting one target under its lease and its account's claim, asking the
  safety core at every step, and recording the verdict;
* :mod:`.targets`: one module per target kind behind one seam (gateway data sources, with their
  keys, settings and Take Over; Fabric connections);
* :mod:`.refresher`: the dataset flow (which datasets failed, heal their sources, refresh when the
  safety core allows), with :mod:`.dataset_sources` (the Fabric connections in a dataset's sources,
  and their bindings), :mod:`.refresh_evidence` (what a failed refresh proves, what the refresh
  gate asks) and :mod:`.refreshes` (starting and following refreshes, one dataset at a time per
  account);
* :mod:`.runs`: one run's state (what it learns, the targets it works on), with
  :mod:`.run_secrets` (its secrets masked in log records and escaping exceptions);
* :mod:`.report`: the actions a target or a dataset can end in, and the report of a run;
* :mod:`.adopt`: an operator's move of a Fabric connection onto a Key Vault reference (or back):
  what it would send, and why it is refused (the move itself is the presenter's).
"""
