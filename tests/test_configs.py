"""The shipped Lite TD3 config is the configuration the learning benchmark measured (one source of numbers)."""

from __future__ import annotations

from types import ModuleType

import pytest

from sb3_av.envs import scenario_ids
from sb3_av.zoo import get_algorithm
from sb3_av.zoo.config import default_config_file, load_config_file, validate_hyperparams
from tests.benchmark_scripts import load_benchmark


def _learning_benchmark() -> ModuleType:
    return load_benchmark("learning")


@pytest.mark.parametrize("env_id", scenario_ids("lite"))
def test_lite_td3_config_equals_the_benchmarked_recommended_config(env_id: str) -> None:
    bench = _learning_benchmark()
    recommended = bench.RECOMMENDED
    block = load_config_file(default_config_file("td3"))[env_id]
    checked = validate_hyperparams(block, get_algorithm("td3"), f"td3.yml [{env_id}]")
    for key in ("learning_rate", "batch_size", "learning_starts", "tau", "gamma", "policy_kwargs"):
        assert checked[key] == recommended[key], key
    assert checked["noise_type"] == "normal" and checked["noise_std"] == recommended["action_noise_sigma"]
    assert {k: v for k, v in checked["max_grad_norms"].items() if v is not None} == recommended["max_grad_norms"]
    repeat = {"action_repeat": recommended["action_repeat"]} if recommended["action_repeat"] != 1 else {}
    assert checked.get("env_kwargs", {}) == {**recommended["env_kwargs"], **repeat}
    assert checked.get("image_augmentation") == recommended["image_augmentation"]
    assert checked.get("smoothness_weight", 0.0) == recommended["smoothness_weight"]
    assert "replay_buffer_kwargs" not in checked and recommended["n_steps"] == 1
    teacher = {"controller": "pid", "weight": recommended["pid_teacher"], "q_filter": recommended["teacher_q_filter"]}
    teacher["clone"] = recommended["teacher_clone"]
    assert checked["teacher"] == teacher
    wrappers = [next(iter(entry.items())) for entry in checked["env_wrapper"]]
    assert wrappers == [
        ("OverspeedPenalty", {"weight": recommended["overspeed_penalty"]}),
        ("JerkPenalty", {"weight": recommended["jerk_penalty"]}),
        ("ScaleReward", {"scale": recommended["reward_scale"]}),
    ]
    parser = bench._parse([])  # the benchmark's default compute budget is the config's
    assert (checked["train_freq"], checked["gradient_steps"]) == (parser.train_freq, parser.gradient_steps)
