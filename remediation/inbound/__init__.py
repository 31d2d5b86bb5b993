"""What comes in: Event Grid and CloudEvents payloads (Key Vault versions, refresh failures), and
the work queue that carries deferred and large work between the Functions app's triggers.
"""
