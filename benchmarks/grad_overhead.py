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

import numpy as np
import torch as th
from stable_baselines3 import TD3

from _common import driving_space, filled_buffer, model_on_buffer

from sb3_av.callbacks import GradientMonitorCallback
from sb3_av.td3 import ClippedTD3, MultiInputPolicy


def _isolated_clip_cost(model: ClippedTD3, repeats: int = 50) -> float:
    """Median seconds of measuring and clipping one critic step and one actor step, gradients in place.

    Timed on one thread: on a shared machine a parallel region can wait a whole scheduler slice for its second
    thread, which would time the machine's load rather than the work.
    """
    threads = th.get_num_threads()
    th.set_num_threads(1)
    times = []
    for _ in range(repeats):
        # fresh gradients each time: clipping the same ones again would shrink them into (slow) denormals
        for network in (model.critic, model.actor):
            for param in network.parameters():
                param.grad = th.randn_like(param)
        start = time.perf_counter()
        for clipper in (model._critic_clipper, model._actor_clipper):
            before = clipper.measure()
            th.isfinite(before).all()
            clipper.clip_(before)
        model._flush_train_stats([], [], {})  # nothing to flush: the per-call sync is timed in the rounds
        times.append(time.perf_counter() - start)
    th.set_num_threads(threads)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gradient-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--buffer", type=int, default=2000, help="transitions in the shared replay buffer")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads > 0:
        th.set_num_threads(args.threads)

    buffer = filled_buffer(driving_space(), args.buffer)
    baseline = model_on_buffer(TD3, MultiInputPolicy, buffer)
    clipped = model_on_buffer(ClippedTD3, MultiInputPolicy, buffer, max_grad_norms={"actor_cnn": 1.0, "critic_cnn": 10.0})
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

    isolated = _isolated_clip_cost(clipped)
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
    step = statistics.median(base_times)
    print(
        "isolated cost of measuring + clipping (one critic step + one actor step, 1 thread, median of 50): "
        f"{1e3 * isolated:.2f} ms "
        f"= {100 * isolated / step:.2f}% of SB3's median gradient step"
    )


if __name__ == "__main__":
    main()
