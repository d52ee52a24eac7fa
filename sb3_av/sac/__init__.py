"""SAC with per-group gradient clipping (one algorithm folder, as in Stable-Baselines3)."""

from sb3_av.sac.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_av.sac.sac import ClippedSAC

__all__ = ["ClippedSAC", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
