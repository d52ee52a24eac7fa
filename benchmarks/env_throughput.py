"""Steps per second of each Lite scenario with image observations, in one process, and where the time goes.

Run by hand: ``python benchmarks/env_throughput.py [--steps 3000] [--profile] [--json out.json]``.

Wall-clock steps/s depend on what else runs on the machine; steps per CPU-second (``time.process_time``)
do much less. The ego is driven by the PID + pure-pursuit baseline so episodes look like real driving (the controller's
own time is excluded); ``env.step`` of ``gym.make(id)`` is timed, resets are timed separately.
With ``--profile`` a cProfile run of each scenario splits a step into: NPC IDM control, NPC kinematics,
leader search, ego collision check, camera rendering and the env contract (observation, reward, info).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from sb3_av.baselines import PIDPurePursuit
from sb3_av.envs import register_envs


def _parts() -> dict[str, tuple[Callable[..., Any], ...]]:
    """label -> the functions whose cumulative time makes up that part of a step."""
    from sb3_av.envs.core import DrivingEnv
    from sb3_av.envs.lite.backend import LiteBackend, _Ego, _Npc
    from sb3_av.envs.lite.render import TopDownCamera

    return {
        "NPC IDM + lane keeping (highway-env controller)": (_Npc.act_idm,),
        "NPC kinematics + lane tracking": (_Npc.step, _Npc.update_chain_position),
        "leader search (sort per lane)": (LiteBackend._leaders,),
        "ego dynamics + collision check": (_Ego.step, LiteBackend._ego_collides),
        "camera render (pygame)": (TopDownCamera.render,),
        "backend step total": (LiteBackend.step,),
        "env step total": (DrivingEnv.step,),
    }


def _drive(env: gym.Env, steps: int, seed: int) -> tuple[float, float, float, int]:
    """Drive ``steps`` steps; return (wall s in env.step, CPU s in env.step, wall s in env.reset, resets)."""
    controller = PIDPurePursuit.from_env(env)
    t0 = time.perf_counter()
    obs, info = env.reset(seed=seed)
    reset_s, resets, step_s, step_cpu = time.perf_counter() - t0, 1, 0.0, 0.0
    for _ in range(steps):
        action = controller.act(obs, info)
        t0, c0 = time.perf_counter(), time.process_time()
        obs, _, terminated, truncated, info = env.step(action)
        step_s += time.perf_counter() - t0
        step_cpu += time.process_time() - c0
        if terminated or truncated:
            t0 = time.perf_counter()
            obs, info = env.reset()
            controller.reset()
            reset_s += time.perf_counter() - t0
            resets += 1
    return step_s, step_cpu, reset_s, resets


def _profile(env: gym.Env, steps: int, seed: int) -> dict[str, float]:
    profiler = cProfile.Profile()
    profiler.enable()
    _drive(env, steps, seed)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    cumulative = {
        label: sum(stats.get(_key(f), (0, 0, 0, 0.0))[3] for f in functions) for label, functions in _parts().items()
    }
    env_total = cumulative["env step total"]
    return {label: 100.0 * value / env_total for label, value in cumulative.items()}


def _key(function: Callable[..., Any]) -> tuple[str, int, str]:
    code = function.__code__
    return (code.co_filename, code.co_firstlineno, code.co_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="timed steps per scenario (default: 3000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env", nargs="+", default=["LiteScenario0-v0", "LiteScenario1-v0", "LiteScenario2-v0"])
    parser.add_argument("--profile", action="store_true", help="also profile each scenario (cProfile)")
    parser.add_argument("--json", help="write the results as JSON")
    args = parser.parse_args(argv)
    register_envs()
    results: list[dict[str, Any]] = []
    print(f"# env throughput, one process, {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"# load average before: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")
    print("| env | NPCs | steps/s (wall) | steps per CPU-s | ms/step | reset ms | resets |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for env_id in args.env:
        env = gym.make(env_id)
        _drive(env, 50, args.seed)  # warm-up
        step_s, step_cpu, reset_s, resets = _drive(env, args.steps, args.seed)
        row: dict[str, Any] = {
            "env_id": env_id,
            "npc_vehicles": env.get_wrapper_attr("config").npc_vehicles,
            "steps_per_s": args.steps / step_s,
            "steps_per_cpu_s": args.steps / step_cpu,
            "ms_per_step": 1000.0 * step_s / args.steps,
            "reset_ms": 1000.0 * reset_s / resets,
            "resets": resets,
        }
        if args.profile:
            row["profile_percent_of_env_step"] = _profile(env, min(args.steps, 2000), args.seed)
        env.close()
        results.append(row)
        print(
            f"| {env_id} | {row['npc_vehicles']} | {row['steps_per_s']:.0f} | {row['steps_per_cpu_s']:.0f} | "
            f"{row['ms_per_step']:.2f} | "
            f"{row['reset_ms']:.1f} | {resets} |"
        )
    if args.profile:
        print("\n# share of env.step time (cProfile, %; profiling inflates Python-heavy parts)")
        print("| part | " + " | ".join(r["env_id"] for r in results) + " |")
        print("|---|" + "---:|" * len(results))
        for label in _parts():
            cells = " | ".join(f"{r['profile_percent_of_env_step'].get(label, 0.0):.0f}" for r in results)
            print(f"| {label} | {cells} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
