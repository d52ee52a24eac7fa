"""Replay memory of SB3's DictReplayBuffer vs sb3_av's FrameStackDictReplayBuffer, for a 4x84x84 uint8 stack + vector.

Each buffer is built and filled in its own subprocess (so the resident memory of one does not hide the other's):
``buffer_size`` transitions of episodes of ``--episode-len`` steps, whose reset stack is the first frame repeated
(the driving envs' convention). Reported per transition: the bytes of every array the buffer holds (``nbytes``, what
the buffer preallocates) and the growth of the process's resident memory (RSS) from before the buffer was built to
after it was filled, and the time of ``add()``. ``sample(batch_size)`` is timed in this process on two smaller
buffers filled with the same stream, calling them in turn so that both see the same machine load (and checking that
they return the same samples).

Run by hand (the results go to the README)::

    python benchmarks/replay_memory.py               # 50k transitions each, batch 256
    python benchmarks/replay_memory.py --transitions 20000 --episode-len 50 --n-envs 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import numpy as np

STACK, HEIGHT, WIDTH, N_VECTOR, ACTION_DIM = 4, 84, 84, 20, 2
BUFFERS = ("sb3", "framestack")
_LABELS = {"sb3": "SB3 `DictReplayBuffer`", "framestack": "sb3-av `FrameStackDictReplayBuffer`"}


def _rss_bytes() -> int:
    """Resident set size of this process (bytes), from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status: this benchmark measures memory on Linux only")


def _array_nbytes(buffer: Any) -> int:
    """Bytes of every numpy array attribute of a buffer (dicts of arrays included)."""
    total = 0
    for value in vars(buffer).values():
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, dict):
            total += sum(v.nbytes for v in value.values() if isinstance(v, np.ndarray))
    return total


def _spaces() -> tuple[Any, Any]:
    """The observation space (stacked image + vector) and the action space."""
    from gymnasium import spaces

    obs_space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (STACK, HEIGHT, WIDTH), np.uint8),
            "vector": spaces.Box(-np.inf, np.inf, (N_VECTOR,), np.float32),
        }
    )
    return obs_space, spaces.Box(-1, 1, (ACTION_DIM,), np.float32)


def _make_buffer(kind: str, transitions: int, n_envs: int) -> Any:
    """An empty buffer of the given kind (``"sb3"`` or ``"framestack"``)."""
    from stable_baselines3.common.buffers import DictReplayBuffer

    from sb3_av.buffers import FrameStackDictReplayBuffer

    obs_space, action_space = _spaces()
    buffer_class = DictReplayBuffer if kind == "sb3" else FrameStackDictReplayBuffer
    return buffer_class(transitions, obs_space, action_space, device="cpu", n_envs=n_envs)


def _fill(buffer: Any, episode_len: int) -> float:
    """Fill every row of ``buffer``; episodes staggered across envs, reset stack = first frame repeated.

    :return: mean seconds per ``add()`` call.
    """
    n_envs = buffer.n_envs
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (997, HEIGHT, WIDTH), dtype=np.uint8)  # frame t of env e: pool[(t + 131 e) % 997]
    vector = rng.normal(size=(n_envs, N_VECTOR)).astype(np.float32)
    action = rng.uniform(-1, 1, (n_envs, ACTION_DIM)).astype(np.float32)
    reward = rng.normal(size=n_envs).astype(np.float32)
    offsets = 131 * np.arange(n_envs)
    step_in_episode = (np.arange(n_envs) * episode_len) // n_envs
    stacks = np.stack([np.stack([pool[o % 997]] * STACK) for o in offsets])
    add_time = 0.0
    for t in range(1, buffer.buffer_size + 1):
        next_stacks = np.concatenate([stacks[:, 1:], pool[(t + offsets) % 997][:, None]], axis=1)
        step_in_episode += 1
        done = step_in_episode >= episode_len
        infos = [{"TimeLimit.truncated": bool(d)} for d in done]
        start = time.perf_counter()
        buffer.add(
            {"image": stacks, "vector": vector},
            {"image": next_stacks, "vector": vector},
            action,
            reward,
            done.astype(np.float32),
            infos,
        )
        add_time += time.perf_counter() - start
        stacks = next_stacks
        for env in np.flatnonzero(done):
            stacks[env] = pool[(t + 500 + offsets[env]) % 997]  # a new episode: its first frame, repeated
            step_in_episode[env] = 0
    return add_time / buffer.buffer_size


def _worker(kind: str, transitions: int, n_envs: int, episode_len: int) -> dict:
    """Build and fill one buffer in this (fresh) process; return its memory and ``add()`` time."""
    _make_buffer(kind, 2 * n_envs, n_envs)  # imports torch, SB3 and sb3_av before the baseline
    rss_before = _rss_bytes()
    buffer = _make_buffer(kind, transitions, n_envs)
    add_seconds = _fill(buffer, episode_len)
    rss_after = _rss_bytes()
    return {
        "kind": kind,
        "transitions": buffer.buffer_size * n_envs,
        "nbytes": _array_nbytes(buffer),
        "rss_growth": rss_after - rss_before,
        "add_us": 1e6 * add_seconds,
        "ring_growths": int(getattr(buffer, "n_ring_growths", 0)),
    }


def _sample_times(args: argparse.Namespace) -> dict[str, float]:
    """Median ``sample()`` time (ms) of both buffers, calls interleaved so that both see the same machine load.

    Also checks that both return the same samples for the same seed.
    """
    import torch as th

    th.set_num_threads(1)
    buffers = {kind: _make_buffer(kind, args.sample_transitions, args.n_envs) for kind in BUFFERS}
    for buffer in buffers.values():
        _fill(buffer, args.episode_len)
    times: dict[str, list[float]] = {kind: [] for kind in BUFFERS}
    for repeat in range(args.repeats + 5):
        samples = {}
        for kind, buffer in buffers.items():
            np.random.seed(repeat)
            start = time.perf_counter()
            samples[kind] = buffer.sample(args.batch_size)
            if repeat >= 5:  # warm-up
                times[kind].append(time.perf_counter() - start)
        for key in samples["sb3"].observations:
            same = th.equal(samples["sb3"].observations[key], samples["framestack"].observations[key])
            same &= th.equal(samples["sb3"].next_observations[key], samples["framestack"].next_observations[key])
            if not same:
                raise AssertionError(f"the buffers returned different {key!r} samples")
    return {kind: 1e3 * float(np.median(values)) for kind, values in times.items()}


def _table(results: list[dict], sample_ms: dict[str, float], args: argparse.Namespace) -> str:
    n = results[0]["transitions"]
    lines = [
        f"`{STACK}x{HEIGHT}x{WIDTH}` uint8 stack + {N_VECTOR}-float vector, {ACTION_DIM}-D float32 action; "
        f"{n:,} transitions per buffer ({args.n_envs} env(s), episodes of {args.episode_len} steps); "
        f"`sample({args.batch_size})` on the CPU, median of {args.repeats} calls interleaved between the two buffers "
        f"({args.sample_transitions:,} transitions each; same samples checked).",
        "",
        "| buffer | array bytes / transition | RSS growth / transition | 1M transitions (arrays) "
        f"| `add()` (all envs) | `sample({args.batch_size})` |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {_LABELS[r['kind']]} | {r['nbytes'] / n:,.0f} B | {r['rss_growth'] / n:,.0f} B "
            f"| {r['nbytes'] / n * 1e6 / 1e9:.1f} GB | {r['add_us']:.0f} µs | {sample_ms[r['kind']]:.2f} ms |"
        )
    ratio = results[0]["nbytes"] / results[1]["nbytes"]
    lines += [
        "",
        f"The frame-stack buffer's arrays are {ratio:.1f}x smaller (frame-ring growths during the run: "
        f"{results[1]['ring_growths']}).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transitions", type=int, default=50_000, help="memory runs: buffer size (all envs), filled")
    parser.add_argument("--n-envs", type=int, default=1)
    parser.add_argument("--episode-len", type=int, default=100, help="steps per episode (one extra frame per episode)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=100, help="timed sample() calls per buffer (median reported)")
    parser.add_argument("--sample-transitions", type=int, default=20_000, help="buffer size of the sample() timing")
    parser.add_argument("--worker", choices=BUFFERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.transitions, args.n_envs, args.episode_len)))
        return
    results = []
    for kind in BUFFERS:
        command = [sys.executable, __file__, "--worker", kind, *(argv if argv is not None else sys.argv[1:])]
        completed = subprocess.run(command, check=True, capture_output=True, text=True)
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    print(_table(results, _sample_times(args), args))


if __name__ == "__main__":
    main()
