"""One client per service (Entra ID, Key Vault, Power BI, Fabric) over one HTTP pipeline: retries,
timeouts and the total deadline, the adaptive limiter, typed errors.
"""
