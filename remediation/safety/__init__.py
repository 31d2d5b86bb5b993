"""The safety core: the only place that decides what is safe for an account (pure, no I/O).

Per account and secret version the healer causes at most one failed sign-in, and never starts a
refresh or turns a schedule back on while a dataset's credentials are known bad or unknown. Three
decisions carry that promise, each one module, each a set of pure functions over the ledger's
evidence (with times) and the services' answers; every path of the product asks them and none
decides for itself:

1. :mod:`remediation.safety.answers` - what an answer to a presentation means (accepted,
   rejected, in doubt, not presented), failing closed: only the answers in its table prove the
   source was not contacted. :mod:`remediation.rules.signins` recognises a refused sign-in in
   the shapes the services use.
2. :mod:`remediation.safety.presenting` - may version V be presented to target T of account A now
   (idempotence, one probe per account, licences that expire and yield to later evidence, the
   operator's one-shot "present again").
3. :mod:`remediation.safety.refreshing` - may dataset D be refreshed or its schedule turned on.
"""
