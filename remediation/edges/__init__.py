"""The edges: where the outside world meets the product. The operator's CLI, the service the
Functions app's triggers call (trigger -> command -> healer -> answer), and the runtime wiring that
builds one client per service, the ledger and the healer from the settings.

* :mod:`~remediation.edges.cli`: ``python -m remediation``: the parser and the commands;
* :mod:`~remediation.edges.render`: what the CLI prints (report tables, warning lines, history
  and figures, ``bindings check`` rows, ``discover``'s inventory);
* :mod:`~remediation.edges.service`: triggers -> commands -> healer -> answers, for any host (the
  work queue, inline runs, deadlines, event dedupe);
* :mod:`~remediation.edges.http_input`: what the HTTP endpoints accept, and their error answers;
* :mod:`~remediation.edges.runtime`: the wiring: one client per service, the ledger and the healer
  from the settings.
"""
