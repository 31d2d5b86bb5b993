"""What goes out: outcomes as Application Insights events (no secret ever), and figures from the
ledger's outcomes.

* :mod:`~remediation.telemetry.appinsights`: the Azure Monitor exporter, configured once per
  process, and ``Telemetry`` / ``LiveOutcomes``, which send the events through it;
* :mod:`~remediation.telemetry.outcomes`: what an event says (the ``CredentialRemediation``
  properties of an outcome, its one-line text, custom event values); pure;
* :mod:`~remediation.telemetry.redaction`: the redactor, the log filter and the OpenTelemetry
  processors no secret gets past;
* :mod:`~remediation.telemetry.figures`: figures per binding, account and day, and rotation to a
  healed refresh, from the ledger's outcomes; pure.
"""
