"""Callbacks of sb3-av: gradient monitor, driving metrics, checkpoints that survive interrupts."""

from sb3_av.callbacks.grad_monitor import GradientMonitorCallback

__all__ = ["GradientMonitorCallback"]
