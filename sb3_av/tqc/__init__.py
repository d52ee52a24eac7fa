"""TQC with per-group gradient clipping."""

from sb3_av.tqc.tqc import ClippedTQC, MultiInputPolicy

__all__ = ["ClippedTQC", "MultiInputPolicy"]
