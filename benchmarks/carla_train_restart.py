"""A real ``train.py`` run across a CARLA server crash and restart, on the stand-in server (run by hand, ~1-2 min).

Starts a stand-in server process (``tests/carla_standin_remote.py``), trains TD3 on ``CarlaScenario0-v0`` against it
through ``train.py`` (small buffer and batch, so it runs on a CPU), kills the server ``--kill-after`` seconds into
the run and starts it again ``--down-s`` later (as a container with ``--restart unless-stopped`` would). Checks that
the run finished all its steps with exit status 0, that one new worker took over, and that the server holds none of
the run's actors, has its settings back and no Traffic Manager left. Prints the trainer's lines about the loss.

    SDL_VIDEODRIVER=offscreen python benchmarks/carla_train_restart.py [--steps 600] [--kill-after 25] [--down-s 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.carla_standin_remote import StandinProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--kill-after", type=float, default=25.0)
    parser.add_argument("--down-s", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=27100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sb3av-carla-train-"))
    env = dict(
        os.environ,
        SB3_AV_CARLA_CLIENT_MODULE="tests.carla_standin_remote",
        SB3_AV_CARLA_LOCK_DIR=str(work / "locks"),
        SDL_VIDEODRIVER="offscreen",
    )
    cmd = [
        sys.executable, "train.py", "--algo", "td3", "--env", "CarlaScenario0-v0", "-n", str(args.steps),
        "--eval-freq", "-1", "-f", str(work / "logs"), "--no-progress", "--seed", "0",
        "-params", "learning_starts:100", "batch_size:32", "buffer_size:5000",
        "--env-kwargs", f"port:{args.port}", "npc_vehicles:3", "max_steps:150", "timeout_s:2.0", "server_wait_s:60",
    ]  # fmt: skip
    server = StandinProcess(args.port).start()
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(f"[{time.monotonic() - t0:6.1f} s] {line}")

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(args.kill_after)
        print(f"killing the server at {time.monotonic() - t0:.1f} s, back {args.down_s:g} s later", flush=True)
        server.restart_after(args.down_s)
        rc = proc.wait()
        reader.join()
        for line in lines:
            if any(k in line for k in ("CARLA", "worker", "total_timesteps", "Traceback", "Error")):
                print(line, end="")
        print(f"exit status {rc} after {time.monotonic() - t0:.1f} s")
        own, settings, tms = server.own_actors(), server.control("settings"), server.control("tms")
        print(f"after the run: actors of the run {own}, settings {settings}, Traffic Managers {tms}")
        assert rc == 0
        assert sum("A new CARLA worker is connected" in line for line in lines) == 1
        logged = [line.split("|")[2].strip() for line in lines if "total_timesteps" in line and line.count("|") >= 3]
        assert logged and logged[-1] == str(args.steps), logged  # every step was trained
        assert own == [] and settings["synchronous_mode"] is False and tms == {}
        print("OK: training went on across the server restart")
    finally:
        server.close()


if __name__ == "__main__":
    main()
