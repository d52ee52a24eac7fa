"""benchmarks/robustness.py on two tiny saved models: its numbers against independent ``evaluate()`` calls."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

import sb3_av  # noqa: F401  (registers the envs)
from sb3_av.baselines import PIDPurePursuit
from sb3_av.evaluation import evaluate
from sb3_av.td3 import ClippedTD3
from tests.benchmark_scripts import load_benchmark

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"
ENV_ID = "LiteScenario0-v0"
KEYS = ("success_rate", "route_completion", "collisions_per_km", "mean_speed_ms", "mean_abs_jerk_ms3", "collisions")


@pytest.fixture(scope="module")
def robustness() -> Any:
    return load_benchmark("robustness")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two untrained tiny TD3 models (two seeds) saved as .zip."""
    folder = tmp_path_factory.mktemp("models")
    env = gym.make(ENV_ID)
    paths = []
    for seed in (0, 1):
        model = ClippedTD3("MultiInputPolicy", env, buffer_size=10, policy_kwargs={"net_arch": [8]}, seed=seed, device="cpu")
        paths.append(folder / f"m{seed}.zip")
        model.save(paths[-1])
    env.close()
    return paths


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_numbers_equal_independent_evaluations(robustness: Any, models: list[Path], tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "rob.json"
    argv = [*map(str, models), "--env", ENV_ID, "-n", "1", "--variations", "scenario", "camera_noise_16"]
    robustness.main([*argv, "--add", 'unknown={"no_such_kwarg": 1}', "--threads", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["env_id"] == ENV_ID and result["seed"] == 20000 and result["n_episodes"] == 1
    rows = {row["name"]: row for row in result["rows"]}
    assert list(rows) == ["scenario", "camera_noise_16", "unknown"]
    assert "Unknown env kwarg(s) no_such_kwarg" in rows["unknown"]["skipped"]
    for name, variation in (("scenario", {}), ("camera_noise_16", {"camera_noise_std": 16.0})):
        row = rows[name]
        assert row["env_kwargs"] == variation
        env = gym.make(ENV_ID, **variation)
        pid = evaluate(PIDPurePursuit.from_env(env), env, 1, seed=20000)
        per_model = [evaluate(ClippedTD3.load(path, device="cpu"), env, 1, seed=20000) for path in models]
        env.close()
        assert [e["seed"] for e in row["pid"]["episodes"]] == [20000]
        for key in KEYS:
            assert _same(row["pid"][key], pid[key]), (name, "pid", key)
            for got, want in zip(row["models"], per_model, strict=True):
                assert _same(got[key], want[key]), (name, "model", key)
        successes = [m["success_rate"] for m in per_model]
        assert row["model"]["success_rate"] == pytest.approx(sum(successes) / 2)
        assert row["model"]["success_rate_min"] == min(successes)
        assert row["model"]["mean_speed_ms"] == pytest.approx(
            (per_model[0]["mean_speed_ms"] + per_model[1]["mean_speed_ms"]) / 2
        )
        # The PID completes the route on both; untrained models do not, so the variation is marked.
        assert pid["success_rate"] == 1.0 and max(successes) == 0.0
        assert row["holds_up"] is False
    table = capsys.readouterr().out
    assert "| scenario | (base) | 0.00 (0.00) | 1.00 |" in table
    assert table.count("**NO**") == 2
    assert "| unknown | no_such_kwarg=1 | skipped: Unknown env kwarg(s) no_such_kwarg" in table


def test_every_named_variation_is_accepted_or_rejected_by_the_env(robustness: Any) -> None:
    """Each named variation either builds and resets (seed 20000) or is rejected with the env's own message."""
    for name, variation in robustness.VARIATIONS.items():
        reason = robustness._rejection(ENV_ID, variation, 20000)
        assert reason is None or "Unknown env kwarg" in reason, (name, reason)
    assert robustness._rejection(ENV_ID, {"npc_vehicles": 400}, 20000).startswith("npc_vehicles=400 do not fit")


def test_pid_alone_table(robustness: Any, capsys: Any) -> None:
    rows = [
        {
            "name": "a",
            "env_kwargs": {"npc_vehicles": 35},
            "pid": {"success_rate": 0.95, "collisions_per_km": 0.0, "mean_speed_ms": 7.5, "mean_abs_jerk_ms3": 0.25},
        },
    ]
    assert robustness.format_table(rows).splitlines()[-1] == "| a | npc_vehicles=35 | 0.95 | 0.00 | 7.50 | 0.25 |"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", ENV_ID, "--variations", "nope"], "unknown variation(s) nope; known: scenario"),
        (["--env", ENV_ID, "--add", "x=[1]"], "is not NAME={JSON object of env kwargs}"),
        (["--env", ENV_ID, "--add", "x={bad"], "the part after = is not JSON"),
        ([], "give run folders or .zip files, or --env"),
        (["/no/such/model.zip", "--env", ENV_ID], "model file /no/such/model.zip not found"),
        (["--env", ENV_ID, "-n", "0"], "-n must be >= 1"),
    ],
)
def test_bad_arguments(robustness: Any, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=None) as info:
        robustness.main(argv)
    assert message in str(info.value)


def test_merge_equals_one_run_of_all_models(robustness: Any, models: list[Path], tmp_path: Path, capsys: Any) -> None:
    """Files of one model each merge into the result of one run with both models (same rows, same numbers)."""
    common = ["--env", ENV_ID, "-n", "1", "--threads", "1", "--variations", "scenario"]
    outs = [tmp_path / f"{name}.json" for name in ("m0", "m1", "both")]
    for paths, out in ((models[:1], outs[0]), (models[1:], outs[1]), (models, outs[2])):
        robustness.main([*map(str, paths), *common, "--add", 'unknown={"no_such_kwarg": 1}', "--out", str(out)])
    capsys.readouterr()
    merged_path = tmp_path / "merged.json"
    rows = robustness.main(["--merge", str(outs[0]), str(outs[1]), "--out", str(merged_path)])
    table = capsys.readouterr().out
    both = json.loads(outs[2].read_text())
    merged = json.loads(merged_path.read_text())
    assert merged["models"] == both["models"] and merged["merged_from"] == [str(outs[0]), str(outs[1])]
    assert [row["name"] for row in rows] == ["scenario", "unknown"] and "skipped" in rows[1]
    row, want = merged["rows"][0], both["rows"][0]
    assert row["model_paths"] == [str(p) for p in models]
    assert row["pid"] == want["pid"] and row["models"] == want["models"]
    assert row["model"] == want["model"] and row["holds_up"] == want["holds_up"] is False
    assert robustness.format_table(both["rows"]) in table

    # A merged file merges again: a row counts the models that ran it, not every model of its file.
    partial = json.loads(merged_path.read_text())
    partial["rows"][0] = {**partial["rows"][0], "models": row["models"][:1], "model_paths": [str(models[0])]}
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    remerged = robustness.main(["--merge", str(tmp_path / "partial.json"), str(outs[1])])
    assert remerged[0]["model_paths"] == [str(p) for p in models] and remerged[0]["models"] == want["models"]
    assert "2 model(s)" in capsys.readouterr().out  # each model once, though two files ran models[1]

    # Not the same episodes, or a PID that ended an episode otherwise: refused with the file's name.
    other = json.loads(outs[1].read_text())
    (tmp_path / "n2.json").write_text(json.dumps({**other, "n_episodes": 2}))
    other["rows"][0]["pid"]["episodes"][0]["termination"] = "collision"
    (tmp_path / "pid.json").write_text(json.dumps(other))
    for name, message in (("n2.json", "has n_episodes=2"), ("pid.json", "the PID's episodes of 'scenario' ended otherwise")):
        with pytest.raises(SystemExit) as info:
            robustness.main(["--merge", str(outs[0]), str(tmp_path / name)])
        assert message in str(info.value) and name in str(info.value)
    with pytest.raises(SystemExit, match="--merge takes result files, not models"):
        robustness.main([str(models[0]), "--merge", str(outs[0])])
    with pytest.raises(SystemExit, match=r"no_such\.json"):
        robustness.main(["--merge", str(tmp_path / "no_such.json")])
