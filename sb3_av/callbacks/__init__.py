"""Callbacks of sb3-av: gradient monitor, driving metrics, checkpoints that survive interrupts, progress, a
moving average of the policy's weights."""

from sb3_av.callbacks.checkpoint import InterruptibleCheckpointCallback
from sb3_av.callbacks.driving_metrics import DrivingEvalCallback, DrivingMetricsCallback, EpisodeMetrics
from sb3_av.callbacks.grad_monitor import GradientMonitorCallback
from sb3_av.callbacks.progress import ProgressCallback
from sb3_av.callbacks.weight_average import PolicyWeightAverage

__all__ = [
    "DrivingEvalCallback",
    "DrivingMetricsCallback",
    "EpisodeMetrics",
    "GradientMonitorCallback",
    "InterruptibleCheckpointCallback",
    "PolicyWeightAverage",
    "ProgressCallback",
]
