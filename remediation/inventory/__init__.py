"""The inventory: which datasets use which gateway data sources (per dataset, or through the admin
scanner), and ``discover``, the read-only listing of what the identity can reach.
"""
