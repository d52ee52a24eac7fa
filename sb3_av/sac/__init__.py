"""SAC with per-group gradient clipping."""

from sb3_av.sac.sac import ClippedSAC, MultiInputPolicy

__all__ = ["ClippedSAC", "MultiInputPolicy"]
