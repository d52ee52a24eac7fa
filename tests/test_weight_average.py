"""PolicyWeightAverage: the average against an EMA recomputed from every step's weights, swapping, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from stable_baselines3 import TD3
from stable_baselines3.common.callbacks import BaseCallback

from sb3_av.callbacks import PolicyWeightAverage

TINY = {"net_arch": [8]}


class _RecordWeights(BaseCallback):
    """A copy of the policy's weights at the start, after every step and at the end of training (float64)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[int, dict[str, np.ndarray]]] = []

    def _record(self) -> None:
        state = {k: v.detach().cpu().numpy().astype(np.float64) for k, v in self.model.policy.state_dict().items()}
        self.steps.append((int(self.num_timesteps), state))

    def _on_training_start(self) -> None:
        self._record()

    def _on_step(self) -> bool:
        self._record()
        return True

    def _on_training_end(self) -> None:
        self._record()


def _model(learning_starts: int = 10) -> TD3:
    return TD3("MlpPolicy", "Pendulum-v1", learning_starts=learning_starts, policy_kwargs=TINY, seed=0, device="cpu")


@pytest.mark.parametrize("start", [0, 10])
def test_the_average_is_the_ema_of_every_steps_weights_with_the_decay_warm_up(start):
    model = _model()
    decay = 0.9
    average, record = PolicyWeightAverage(decay, start=start), _RecordWeights()
    model.learn(40, callback=[average, record])
    expected, n_updates = None, 0
    for step, state in record.steps:  # an independent EMA in float64 numpy
        if step <= start or expected is None:
            expected = state
            continue
        d = min(decay, (1 + n_updates) / (10 + n_updates))
        expected = {k: d * expected[k] + (1 - d) * state[k] for k in state}
        n_updates += 1
    assert average.n_updates == n_updates == 40 - start + 1  # every step past start, and the end of training
    averaged = average.state_dict()
    last = record.steps[-1][1]
    moved = 0
    for name, value in averaged.items():
        np.testing.assert_allclose(value.numpy(), expected[name], rtol=1e-5, atol=1e-6)
        moved += not np.allclose(value.numpy(), last[name])
    assert moved > 0  # training changed the weights after learning_starts, and the average lags behind


def test_decay_zero_follows_the_policy_and_swapped_in_restores_its_weights():
    model = _model()
    average = PolicyWeightAverage(0.0)
    model.learn(30, callback=average)
    for name, value in model.policy.state_dict().items():
        assert th.equal(average.state_dict()[name], value)

    slow = PolicyWeightAverage(0.99)
    model.learn(30, callback=slow, reset_num_timesteps=False)
    own = {k: v.clone() for k, v in model.policy.state_dict().items()}
    obs = np.zeros((1, 3), np.float32)
    with slow.swapped_in():
        inside = model.predict(obs, deterministic=True)[0]
        for name, value in model.policy.state_dict().items():
            assert th.equal(value, slow.state_dict()[name])
    for name, value in model.policy.state_dict().items():
        assert th.equal(value, own[name])
    assert not np.allclose(inside, model.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize("decay", [1.0, -0.1, float("nan"), True, "0.9"])
def test_bad_decay_is_refused(decay):
    with pytest.raises(ValueError, match="decay must be a number in \\[0, 1\\)"):
        PolicyWeightAverage(decay)


@pytest.mark.parametrize("start", [-1, 1.5, True])
def test_bad_start_is_refused(start):
    with pytest.raises(ValueError, match="start must be an integer >= 0"):
        PolicyWeightAverage(0.9, start=start)


def test_no_average_before_learning_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"starts with model\.learn\(\)"):
        PolicyWeightAverage(0.9).state_dict()
