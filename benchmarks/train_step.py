"""Gradient steps per second of a TD3 step on driving images: SB3's default vs sb3-av's recommended config.

All configurations train on the same SB3 replay buffer of random 4x84x84 uint8 + 20-float observations,
interleaved in one process (round-robin, order rotated every round); the speedup is the median over rounds
of (SB3 time / config time) within the round, so drifts of a shared machine cancel.

- ``sb3_default``: SB3's ``TD3("MultiInputPolicy")`` with default settings (CombinedExtractor: NatureCNN over
  the image, separate actor and critic CNNs, net_arch [400, 300]).
- ``sb3av_separate``: ClippedTD3, same architecture as sb3-av's default (separate CNNs), clipping + monitor.
- ``sb3av_shared``: + one critic-trained encoder (DrQ-v2): each batch encoded once, next batch once.
- ``sb3av_shared_float32_cl``: + channels-last memory, float32 convolutions.
- ``sb3av_shared_bfloat16_cl``: + channels-last memory, bfloat16 convolutions (fast only where bfloat16 is native).
- ``sb3av_recommended``: the recommended configuration: channels-last and ``cnn_dtype="auto"``, which is one of the
  two above, as :func:`sb3_av.compute.resolve_cnn_dtype` picks for this CPU (printed in the header).

The header names the CPU capability torch dispatches to. The same machine can be measured as an AVX2-only CPU (no
native bfloat16) by capping torch's and oneDNN's instruction sets, which is what an AVX2 CPU runs:

    python benchmarks/train_step.py --rounds 10 --batch-size 64 --threads 1 [--profile]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/train_step.py --rounds 10 --batch-size 64 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch as th
from _common import driving_space, filled_buffer, model_on_buffer
from stable_baselines3 import TD3
from torch.profiler import ProfilerActivity, profile

from sb3_av.callbacks import GradientMonitorCallback
from sb3_av.compute import native_bfloat16, resolve_cnn_dtype
from sb3_av.td3 import ClippedTD3

CLIP = {"actor_cnn": 1.0, "critic_cnn": 10.0}


def _shared_policy(cnn_dtype: str) -> dict:
    return {"share_features_extractor": True, "features_extractor_kwargs": {"cnn_dtype": cnn_dtype, "channels_last": True}}


def _configs(buffer) -> dict[str, Callable[[], object]]:
    def clipped(policy_kwargs: dict, max_grad_norms: dict) -> object:
        model = model_on_buffer(
            ClippedTD3, "MultiInputPolicy", buffer, policy_kwargs=policy_kwargs, max_grad_norms=max_grad_norms
        )
        monitor = GradientMonitorCallback(dump_freq=10)
        monitor.init_callback(model)
        model._benchmark_monitor = monitor  # type: ignore[attr-defined]
        return model

    return {
        "sb3_default": lambda: model_on_buffer(TD3, "MultiInputPolicy", buffer),
        "sb3av_separate": lambda: clipped({}, CLIP),
        "sb3av_shared": lambda: clipped({"share_features_extractor": True}, {"critic_cnn": 10.0}),
        "sb3av_shared_float32_cl": lambda: clipped(_shared_policy("float32"), {"critic_cnn": 10.0}),
        "sb3av_shared_bfloat16_cl": lambda: clipped(_shared_policy("bfloat16"), {"critic_cnn": 10.0}),
        "sb3av_recommended": lambda: clipped(_shared_policy("auto"), {"critic_cnn": 10.0}),
    }


def _train(model, gradient_steps: int, batch_size: int) -> float:
    start = time.perf_counter()
    model.train(gradient_steps, batch_size)
    monitor = getattr(model, "_benchmark_monitor", None)
    if monitor is not None:
        monitor.on_step()
    return time.perf_counter() - start


def _profile(name: str, model, gradient_steps: int, batch_size: int) -> None:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model.train(gradient_steps, batch_size)
    print(f"\n### where {name}'s time goes ({gradient_steps} gradient steps, batch {batch_size}), top ops by self CPU time")
    print("```")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))
    print("```")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gradient-steps", type=int, default=2, help="per train() call (even: one actor update)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--buffer", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="also print a torch profile of SB3's and the recommended step")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads > 0:
        th.set_num_threads(args.threads)

    buffer = filled_buffer(driving_space(), args.buffer)
    models = {name: make() for name, make in _configs(buffer).items()}
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    speedups: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.warmup + args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        round_times = {
            name: _train(models[name], args.gradient_steps, args.batch_size) / args.gradient_steps for name in order
        }
        if round_index < args.warmup:
            continue
        for name in names:
            times[name].append(round_times[name])
            speedups[name].append(round_times["sb3_default"] / round_times[name])

    print(
        f"machine: {platform.machine()} {th.cpu.get_capabilities().get('cpu_name', '')}, torch CPU capability "
        f"{th.backends.cpu.get_cpu_capability()}, native bfloat16: {native_bfloat16('cpu')}, cnn_dtype auto -> "
        f"{str(resolve_cnn_dtype('auto')).removeprefix('torch.')}, {th.get_num_threads()} torch threads, "
        f"torch {th.__version__}"
    )
    print(f"batch {args.batch_size}, {args.gradient_steps} gradient steps per train(), {args.rounds} interleaved rounds\n")
    print("| configuration | median s / gradient step | gradient steps / s | speedup vs SB3 default (median, IQR) |")
    print("|---|---:|---:|---:|")
    for name in names:
        median = statistics.median(times[name])
        low, high = np.percentile(speedups[name], [25, 75])
        print(
            f"| {name} | {median:.4f} | {1 / median:.2f} | {statistics.median(speedups[name]):.2f}x ({low:.2f}..{high:.2f}) |"
        )
    if args.profile:
        _profile("sb3_default", models["sb3_default"], args.gradient_steps, args.batch_size)
        _profile("sb3av_recommended", models["sb3av_recommended"], args.gradient_steps, args.batch_size)


if __name__ == "__main__":
    main()
