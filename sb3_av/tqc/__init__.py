"""TQC with per-group gradient clipping (one algorithm folder, as in sb3-contrib)."""

from sb3_av.tqc.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_av.tqc.tqc import ClippedTQC

__all__ = ["ClippedTQC", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
