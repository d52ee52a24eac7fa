"""The cost of one worker process per CARLA env, on the stand-in server (run by hand; numbers go to the README).

Measures, against a stand-in server process on loopback (``tests/carla_standin_remote.py``; the client side is the
stand-in too, so the numbers are this package's overhead, not CARLA's):

- worker start: from building the env to its worker being connected (a fresh interpreter, imports, connect);
- per step: ``env.step`` as the training process sees it, the worker's own time for the step, the transport
  (the backend's round trip minus the worker's time: socket, one 84x84 frame through shared memory) and the
  hand-over (``env.step`` minus the worker's time: the transport plus the env contract's work, frame stack included);
- recovery: the server is killed and started again ``--down-s`` later (as a container with a restart policy);
  the time from the kill until the truncated step returns, and that minus the downtime.

    SDL_VIDEODRIVER=offscreen python benchmarks/carla_worker.py [--steps 2000] [--starts 5] [--down-s 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SB3_AV_CARLA_CLIENT_MODULE", "tests.carla_standin_remote")
os.environ.setdefault("SB3_AV_CARLA_LOCK_DIR", tempfile.mkdtemp(prefix="sb3av-bench-locks-"))

from sb3_av.envs.carla import make_carla_env  # noqa: E402
from tests.carla_standin_remote import StandinProcess  # noqa: E402

KWARGS = {"npc_vehicles": 20, "max_steps": 100000, "timeout_s": 2.0, "server_wait_s": 60.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--down-s", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=27000)
    args = parser.parse_args()
    server = StandinProcess(args.port).start()
    try:
        starts = []
        for _ in range(args.starts):
            t0 = time.perf_counter()
            env = make_carla_env("CarlaScenario0", port=args.port, **KWARGS)
            starts.append(time.perf_counter() - t0)
            env.close()
        print(f"worker start: median {statistics.median(starts):.2f} s (min {min(starts):.2f}, n={len(starts)})")

        env = make_carla_env("CarlaScenario0", port=args.port, **KWARGS)
        env.reset(seed=0)
        action = np.array([0.0, 0.2], np.float32)
        total, worker, round_trip = [], [], []
        backend_step = env.backend.step

        def timed_step(*a: float):  # the backend's round trip, as the env sees it
            t0 = time.perf_counter()
            frame = backend_step(*a)
            round_trip.append(1000.0 * (time.perf_counter() - t0))
            return frame

        env.backend.step = timed_step
        for _ in range(args.steps):
            t0 = time.perf_counter()
            _, _, terminated, truncated, info = env.step(action)
            total.append(1000.0 * (time.perf_counter() - t0))
            worker.append(info["backend"]["worker_ms"])
            if terminated or truncated:
                env.reset()
        transport = [r - w for r, w in zip(round_trip, worker, strict=True)]
        handover = [t - w for t, w in zip(total, worker, strict=True)]
        print(
            f"per step (ms, median over {args.steps}): env.step {statistics.median(total):.3f}, in the worker "
            f"{statistics.median(worker):.3f}, transport {statistics.median(transport):.3f} "
            f"(p90 {np.percentile(transport, 90):.3f}), hand-over {statistics.median(handover):.3f} "
            f"(p90 {np.percentile(handover, 90):.3f})"
        )

        t0 = time.perf_counter()
        server.restart_after(args.down_s)
        _, _, _, truncated, info = env.step(action)
        recovered = time.perf_counter() - t0
        assert truncated and info["termination"] == "backend_restarted", info["termination"]
        print(
            f"recovery from a server restart ({args.down_s:g} s down): {recovered:.1f} s from the kill to the "
            f"truncated step, {recovered - args.down_s:.1f} s after the server was back"
        )
        env.reset()
        env.close()
    finally:
        server.close()


if __name__ == "__main__":
    main()
