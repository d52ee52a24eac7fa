"""sb3-av: image-based driving agents for CARLA on Stable-Baselines3."""

__version__ = "0.1.0"
