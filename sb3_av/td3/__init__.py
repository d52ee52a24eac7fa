"""TD3 and DDPG with per-group gradient clipping (one algorithm folder, as in Stable-Baselines3)."""

from sb3_av.td3.policies import CnnPolicy, MlpPolicy, MultiInputPolicy, TD3Policy
from sb3_av.td3.td3 import ClippedDDPG, ClippedTD3

__all__ = ["ClippedDDPG", "ClippedTD3", "CnnPolicy", "MlpPolicy", "MultiInputPolicy", "TD3Policy"]
