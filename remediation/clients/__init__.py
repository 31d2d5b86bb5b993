"""One client per service (Entra ID, Key Vault, Power BI, Fabric) over one HTTP pipeline: retries,
timeouts and the total deadline, the adaptive limiter, typed errors.

The clients:

* :mod:`~remediation.clients.identity`: who the product is, and its tokens (Entra ID).
* :mod:`~remediation.clients.keyvault`: Key Vault secrets (through the Azure SDK, under the retry loop).
* :mod:`~remediation.clients.powerbi`: the Power BI REST operations and their typed errors;
  :mod:`~remediation.clients.powerbi_models`: the models they return, read and validated.
* :mod:`~remediation.clients.fabric`: the Fabric REST API (connections, gateways, operations).

What they share:

* :mod:`~remediation.clients.http`: the HTTP pipeline (one session per service, timeouts, which
  outcomes are retried, error answers turned into typed errors).
* :mod:`~remediation.clients.retry`: the retry policy, the one retry loop, ``Retry-After`` and the
  run's deadline for throttling waits.
* :mod:`~remediation.clients.answer_deadline`: the total deadline of one attempt, and the watchdog
  that cuts its connections.
* :mod:`~remediation.clients.limiter`: adaptive concurrency (AIMD) and the shared throttling pause.
* :mod:`~remediation.clients.stats`: the call statistics of a run.
* :mod:`~remediation.clients.api_errors`: the typed errors (:class:`~remediation.clients.api_errors.ApiError`
  and its kin) and the parsing of services' error bodies.
* :mod:`~remediation.clients.storage_errors`: secret-free descriptions of Azure Storage errors.
"""
