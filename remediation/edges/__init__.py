"""The edges: where the outside world meets the product. The operator's CLI, the service the
Functions app's triggers call (trigger -> command -> healer -> answer), and the runtime wiring that
builds one client per service, the ledger and the healer from the settings.
"""
