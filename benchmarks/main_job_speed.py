"""Steps per second of the main job (the recommended TD3 on LiteScenario0), quiet and next to a busy process.

The main job is what ``python train.py --algo td3 --env LiteScenario0-v0`` trains: the ``LiteScenario*`` block of
the TD3 config (:data:`benchmarks.learning.RECOMMENDED`, which ``tests/test_configs.py`` keeps equal to it), one env
step and one gradient step of batch 64 per step. Each measurement is a fresh process (torch's thread pool is set
once per process): ``--warmup`` random steps fill the replay buffer (``learning_starts``), then ``--steps`` training
steps are timed.

Settings measured, each quiet and with one competing busy process (a Python spin loop, standing in for a CARLA
server or an env worker on the same cores):

- threads: sb3-av's default (:func:`sb3_av.compute.default_torch_threads`, half the cores) and torch's default
  (every core);
- CPU kind: this CPU as it is, and the same CPU restricted to AVX2 (``ATEN_CPU_CAPABILITY=avx2``,
  ``ONEDNN_MAX_CPU_ISA=AVX2``: no native bfloat16, so ``cnn_dtype: auto`` runs float32), the other kind of machine
  users have.

Runs are interleaved round by round so that drifts of a shared machine spread over all settings.

    python benchmarks/main_job_speed.py --rounds 2 --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
_BUSY_LOOP = "while True: pass"


def _child(args: argparse.Namespace) -> None:
    """Measure one setting in this process and print one JSON line."""
    import gymnasium as gym
    import torch as th

    import sb3_av
    from sb3_av.compute import resolve_cnn_dtype
    from sb3_av.envs.wrappers import OverspeedPenalty

    sys.path.insert(0, str(Path(__file__).parent))
    from learning import RECOMMENDED, _recommended

    if args.threads > 0:
        th.set_num_threads(args.threads)
    budget = 20_000
    settings = argparse.Namespace(budget=budget, train_freq=1, gradient_steps=1, batch_size=0, tiny=False, overrides={})
    env = OverspeedPenalty(gym.make("LiteScenario0-v0"), weight=RECOMMENDED["overspeed_penalty"])
    model = _recommended(env, seed=0, args=settings)
    warmup = model.learning_starts
    model.learn(warmup)
    start = time.perf_counter()
    model.learn(args.steps, reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    result = {
        "steps_per_s": args.steps / elapsed,
        "threads": th.get_num_threads(),
        "capability": th.backends.cpu.get_cpu_capability(),
        "cnn_dtype": str(resolve_cnn_dtype("auto")).removeprefix("torch."),
        "sb3_av": sb3_av.__version__,
    }
    print(json.dumps(result), flush=True)


def _measure(threads: int, cpu_env: dict[str, str], busy: bool, steps: int) -> dict[str, Any]:
    env = {**os.environ, **cpu_env}
    competitor = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP]) if busy else None
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--threads", str(threads), "--steps", str(steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300, help="timed training steps per measurement")
    parser.add_argument("--threads", type=int, default=0, help="(child) torch threads; 0: torch's default")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    from sb3_av.compute import available_cores, default_torch_threads

    cores = available_cores()
    thread_settings = {f"sb3-av default ({default_torch_threads()})": default_torch_threads(), f"torch default ({cores})": 0}
    cpu_kinds = {"native": {}, "AVX2 only": AVX2_ENV}
    settings = [(kind, label, busy) for kind in cpu_kinds for label in thread_settings for busy in (False, True)]
    samples: dict[tuple[str, str, bool], list[float]] = {s: [] for s in settings}
    info: dict[str, dict[str, Any]] = {}
    for round_index in range(args.rounds):
        shift = round_index % len(settings)
        for setting in settings[shift:] + settings[:shift]:
            kind, label, busy = setting
            result = _measure(thread_settings[label], cpu_kinds[kind], busy, args.steps)
            samples[setting].append(result["steps_per_s"])
            info[kind] = {"capability": result["capability"], "cnn_dtype": result["cnn_dtype"]}
            print(
                f"  round {round_index}: {kind}, {label}, {'busy' if busy else 'quiet'}: {result['steps_per_s']:.2f} steps/s",
                flush=True,
            )

    print(f"\n{cores} cores, {args.steps} timed steps after the warm-up, median of {args.rounds} rounds\n")
    print("| CPU (torch capability, cnn_dtype auto) | torch threads | quiet steps/s | with a busy process | slowdown |")
    print("|---|---|---:|---:|---:|")
    rows = []
    for kind in cpu_kinds:
        for label in thread_settings:
            quiet = statistics.median(samples[(kind, label, False)])
            loaded = statistics.median(samples[(kind, label, True)])
            rows.append({"cpu": kind, **info[kind], "threads": label, "quiet": quiet, "busy": loaded})
            print(
                f"| {kind} ({info[kind]['capability']}, {info[kind]['cnn_dtype']}) | {label} | {quiet:.1f} | {loaded:.1f} "
                f"| {quiet / loaded:.2f}x |"
            )
    if args.out is not None:
        args.out.write_text(json.dumps({"cores": cores, "steps": args.steps, "rounds": args.rounds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
