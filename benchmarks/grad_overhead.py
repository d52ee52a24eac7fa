"""Overhead of sb3-av's gradient clipping and monitoring on a TD3 gradient step (run by hand).

ClippedTD3 (all four groups measured, actor CNN and critic CNN clipped, GradientMonitorCallback on) against
SB3's TD3 with the same policy, on the same replay buffer of driving-shaped Dict observations
(4x84x84 uint8 image + 20-float vector), interleaved in one process: each round times one ``train()`` call of
each, in alternating order, and the ratio is taken per round so that drifts of the machine cancel.

    python benchmarks/grad_overhead.py --rounds 30 --gradient-steps 4 --batch-size 256
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.logger import configure

from sb3_av.callbacks import GradientMonitorCallback
from sb3_av.td3 import ClippedTD3, MultiInputPolicy


def _make_space(stack: int, size: int, vector: int) -> spaces.Dict:
    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, (stack, size, size), np.uint8),
            "vector": spaces.Box(-np.inf, np.inf, (vector,), np.float32),
        }
    )


def _filled_buffer(space: spaces.Dict, action_space: spaces.Box, n: int, seed: int) -> DictReplayBuffer:
    rng = np.random.default_rng(seed)
    buffer = DictReplayBuffer(n, space, action_space, device="cpu", n_envs=1)
    for _ in range(n):
        obs = {
            key: rng.integers(0, 256, (1, *s.shape), dtype=np.uint8)
            if key == "image"
            else rng.standard_normal((1, *s.shape)).astype(np.float32)
            for key, s in space.spaces.items()
        }
        next_obs = {key: value.copy() for key, value in obs.items()}
        action = rng.uniform(-1, 1, (1, 2)).astype(np.float32)
        buffer.add(obs, next_obs, action, rng.standard_normal(1).astype(np.float32), np.array([False]), [{}])
    return buffer


class _SpacesEnv(gym.Env):
    """Only the spaces SB3 needs to build a model: the benchmark times ``train()`` on a filled buffer."""

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Box) -> None:
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        return self.observation_space.sample(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        return self.observation_space.sample(), 0.0, False, False, {}


def _model(cls: type, space: spaces.Dict, action_space: spaces.Box, buffer: DictReplayBuffer, **kwargs) -> TD3:
    env = _SpacesEnv(space, action_space)
    model = cls(MultiInputPolicy, env, buffer_size=1, learning_starts=0, seed=0, device="cpu", **kwargs)
    model.replay_buffer = buffer
    model.set_logger(configure(None, []))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gradient-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--buffer", type=int, default=2000, help="transitions in the shared replay buffer")
    args = parser.parse_args()

    space = _make_space(4, 84, 20)
    action_space = spaces.Box(-1, 1, (2,), np.float32)
    buffer = _filled_buffer(space, action_space, args.buffer, seed=0)
    baseline = _model(TD3, space, action_space, buffer)
    clipped = _model(ClippedTD3, space, action_space, buffer, max_grad_norms={"actor_cnn": 1.0, "critic_cnn": 10.0})
    monitor = GradientMonitorCallback(dump_freq=10)
    monitor.init_callback(clipped)

    def run_baseline() -> float:
        start = time.perf_counter()
        baseline.train(args.gradient_steps, args.batch_size)
        return time.perf_counter() - start

    def run_clipped() -> float:
        start = time.perf_counter()
        clipped.train(args.gradient_steps, args.batch_size)
        monitor.on_step()  # the monitor's per-step work (alert check; a window dump every dump_freq calls)
        return time.perf_counter() - start

    ratios, base_times, clip_times = [], [], []
    for round_index in range(args.warmup + args.rounds):
        order = (run_baseline, run_clipped) if round_index % 2 == 0 else (run_clipped, run_baseline)
        times = {fn.__name__: fn() for fn in order}
        if round_index >= args.warmup:
            base_times.append(times["run_baseline"] / args.gradient_steps)
            clip_times.append(times["run_clipped"] / args.gradient_steps)
            ratios.append(times["run_clipped"] / times["run_baseline"])

    median_ratio = statistics.median(ratios)
    print(f"machine: {platform.processor() or platform.machine()}, torch {th.__version__}, threads {th.get_num_threads()}")
    print(f"batch {args.batch_size}, {args.gradient_steps} gradient steps per train(), {args.rounds} interleaved rounds")
    print("| algorithm | median s / gradient step | ratio to SB3 TD3 (median of per-round ratios) |")
    print("|---|---|---|")
    print(f"| SB3 TD3 | {statistics.median(base_times):.4f} | 1.000 |")
    print(
        f"| sb3-av ClippedTD3 (4 groups measured, 2 clipped, monitor on) | {statistics.median(clip_times):.4f} | "
        f"{median_ratio:.3f} |"
    )
    print(
        f"overhead: {100 * (median_ratio - 1):+.2f}% (per-round ratio IQR "
        f"{np.percentile(ratios, 25):.3f}..{np.percentile(ratios, 75):.3f})"
    )


if __name__ == "__main__":
    main()
