"""What the operator configures: the environment (:mod:`.settings`, read in one place) and the
bindings file (:mod:`.bindings`: which Key Vault secret feeds which data source, and how).
"""
