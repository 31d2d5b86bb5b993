"""Pure rules (no I/O): who a credential signs in as and where, what a refused sign-in looks like,
why a refresh failed (and what Power BI's error documents say), the credential payloads, gateway
encryption, the correspondence of data sources and Fabric connections, and redaction.
"""
