"""Power BI credential healer: re-applies rotated passwords to gateway data sources."""
