"""sb3-av: image-based driving agents for CARLA on Stable-Baselines3, with gradient diagnostics you can trust.

Importing the package registers every driving env id with gymnasium (``LiteScenario{0,1,2}-v0``,
``CarlaScenario{0,1,2}-v0``); ``gym.make("sb3_av:LiteScenario0-v0")`` imports it on demand.
"""

from sb3_av.callbacks import GradientMonitorCallback
from sb3_av.envs import DrivingEnv, register_envs
from sb3_av.grad_clip import GROUP_NAMES
from sb3_av.sac import ClippedSAC
from sb3_av.td3 import ClippedDDPG, ClippedTD3
from sb3_av.torch_layers import MultiInputExtractor
from sb3_av.tqc import ClippedTQC

__version__ = "0.1.0"

__all__ = [
    "GROUP_NAMES",
    "ClippedDDPG",
    "ClippedSAC",
    "ClippedTD3",
    "ClippedTQC",
    "DrivingEnv",
    "GradientMonitorCallback",
    "MultiInputExtractor",
    "register_envs",
]

register_envs()
