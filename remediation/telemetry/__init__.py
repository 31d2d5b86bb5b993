"""What goes out: outcomes as Application Insights events (no secret ever), and figures from the
ledger's outcomes.
"""
