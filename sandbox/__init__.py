"""Local stand-ins for Entra ID, Key Vault, Power BI and Application Insights, over real HTTPS."""

from sandbox.clock import Clock, ManualClock
from sandbox.world import Sandbox

__all__ = ["Clock", "ManualClock", "Sandbox"]
