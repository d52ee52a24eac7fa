"""Unit tests of the pure-torch clipping module: norms, clipping, the non-finite guard."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from torch import nn

from sb3_av import grad_clip
from sb3_av.grad_clip import GroupClipper, global_grad_norm, skips_on_found_inf, validate_max_grad_norms
from sb3_av.grad_stats import GradNormWindow


def _two_group_net(seed: int = 0) -> tuple[nn.Module, dict[str, list[nn.Parameter]]]:
    th.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.ReLU(), nn.Linear(3, 1))
    groups = {"critic_cnn": list(net[0].parameters()), "critic_mlp": [*net[2].parameters(), *net[4].parameters()]}
    return net, groups


def _backward(net: nn.Module, scale: float = 1.0) -> None:
    net.zero_grad()
    x = th.randn(16, 5)
    (net(x).square().mean() * scale).backward()


def _independent_norm(params: list[nn.Parameter]) -> float:
    return float(th.linalg.vector_norm(th.cat([p.grad.detach().flatten().double() for p in params])))


def test_measure_is_global_l2_norm_not_sum_of_tensor_norms() -> None:
    net, groups = _two_group_net()
    _backward(net)
    clipper = GroupClipper(groups, {})
    norms = clipper.measure()
    for index, (name, params) in enumerate(groups.items()):
        expected = _independent_norm(params)
        assert norms[index].item() == pytest.approx(expected, rel=1e-5), name
        per_tensor_sum = sum(float(p.grad.norm()) for p in params)
        assert per_tensor_sum > expected * 1.05  # the bug this module exists to avoid would be visible here
    assert float(global_grad_norm(net.parameters())) == pytest.approx(_independent_norm(list(net.parameters())), rel=1e-5)


def test_clip_scales_only_groups_over_their_limit() -> None:
    net, groups = _two_group_net()
    _backward(net, scale=100.0)
    clipper = GroupClipper(groups, {"critic_cnn": 1e-3, "critic_mlp": 1e9})
    grads_before = {id(p): p.grad.clone() for p in net.parameters()}
    before = clipper.measure()
    after = clipper.clip_(before)
    cnn_after = _independent_norm(groups["critic_cnn"])
    assert before[0].item() > 1e-3
    assert cnn_after == pytest.approx(1e-3, rel=1e-4)
    assert after[0].item() == pytest.approx(cnn_after, rel=1e-4)
    coef = 1e-3 / (before[0].item() + 1e-6)
    for p in groups["critic_cnn"]:  # same direction, scaled by the clip coefficient
        th.testing.assert_close(p.grad, grads_before[id(p)] * coef, rtol=1e-5, atol=1e-9)
    for p in groups["critic_mlp"]:  # under its limit: untouched
        assert th.equal(p.grad, grads_before[id(p)])
    assert after[1].item() == pytest.approx(before[1].item())


def test_nonfinite_gradient_skips_the_step_and_keeps_weights() -> None:
    net, groups = _two_group_net()
    optimizer = th.optim.Adam(net.parameters(), lr=0.1)
    clipper = GroupClipper(groups, {"critic_cnn": 1.0})
    _backward(net)
    clipper.step(optimizer)  # one good step so that Adam has state
    weights = [p.detach().clone() for p in net.parameters()]
    state_steps = [optimizer.state[p]["step"].clone() for p in net.parameters()]
    _backward(net)
    groups["critic_mlp"][0].grad[0, 0] = float("nan")
    norms = clipper.step(optimizer)
    assert not bool(norms.finite)
    assert math.isnan(norms.before[1].item())
    for p, w, s in zip(net.parameters(), weights, state_steps, strict=True):
        assert th.equal(p.detach(), w)
        assert th.equal(optimizer.state[p]["step"], s)


def test_fused_optimizer_skips_nonfinite_step_on_device() -> None:
    net, groups = _two_group_net()
    optimizer = th.optim.Adam(net.parameters(), lr=0.1, fused=True)
    clipper = GroupClipper(groups, {})
    _backward(net)
    assert bool(clipper.step(optimizer).finite)
    weights = [p.detach().clone() for p in net.parameters()]
    _backward(net)
    groups["critic_cnn"][0].grad.fill_(float("inf"))
    assert not bool(clipper.step(optimizer).finite)
    for p, w in zip(net.parameters(), weights, strict=True):
        assert th.equal(p.detach(), w)
    _backward(net)
    assert bool(clipper.step(optimizer).finite)
    assert not all(th.equal(p.detach(), w) for p, w in zip(net.parameters(), weights, strict=True))


def test_torch_still_has_the_private_apis_grad_clip_uses() -> None:
    """Fails when a torch release drops or changes ``_foreach_norm`` or the fused optimizers' ``found_inf``: the
    clipper then runs on its (slower, equally correct) public fallbacks; check the speed before moving on."""
    assert grad_clip.HAS_FOREACH_NORM, f"torch {th.__version__} has no torch._foreach_norm: measure() uses its fallback"
    grads = [th.randn(3, 4), th.randn(7), th.zeros(2)]
    for fused, plain in zip(th._foreach_norm(grads, 2.0), (th.linalg.vector_norm(g) for g in grads), strict=True):
        assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    for optimizer_class in (th.optim.Adam, th.optim.AdamW, th.optim.SGD):
        optimizer = optimizer_class(nn.Linear(2, 2).parameters(), lr=0.1, fused=True)
        assert skips_on_found_inf(optimizer), f"torch {th.__version__}: fused {optimizer_class.__name__} ignores found_inf"
    assert not skips_on_found_inf(th.optim.Adam(nn.Linear(2, 2).parameters(), lr=0.1))  # not fused: no protocol


def _three_steps(optimizer_kwargs: dict) -> tuple[list[th.Tensor], list[th.Tensor]]:
    """Norms and final weights of a good step, a step with an Inf gradient (skipped) and another good step."""
    net, groups = _two_group_net()
    optimizer = th.optim.Adam(net.parameters(), lr=0.1, **optimizer_kwargs)
    clipper = GroupClipper(groups, {"critic_cnn": 0.05})
    norms = []
    for bad in (False, True, False):
        th.manual_seed(len(norms))
        _backward(net)
        if bad:
            groups["critic_cnn"][0].grad[0, 0] = float("inf")
        step = clipper.step(optimizer)
        norms.append(th.cat([step.before, step.after, step.finite.reshape(1).float()]))
    return norms, [p.detach().clone() for p in net.parameters()]


def test_public_fallbacks_give_the_same_norms_and_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    norms, weights = _three_steps({"fused": True})
    assert norms[1][-1] == 0.0 and norms[0][-1] == norms[2][-1] == 1.0
    monkeypatch.setattr(grad_clip, "HAS_FOREACH_NORM", False)
    monkeypatch.setattr(grad_clip, "skips_on_found_inf", lambda optimizer: False)
    fallback_norms, fallback_weights = _three_steps({"fused": True})
    for fast, slow in zip([*norms, *weights], [*fallback_norms, *fallback_weights], strict=True):
        th.testing.assert_close(slow, fast, rtol=1e-6, atol=0.0, equal_nan=True)
    net, groups = _two_group_net()
    _backward(net)
    for index, params in enumerate(groups.values()):  # the fallback measure is torch's public total norm
        expected = th.nn.utils.get_total_norm([p.grad for p in params])
        assert GroupClipper(groups, {}).measure()[index].item() == pytest.approx(expected.item(), rel=1e-6)


def test_found_inf_probe_rejects_an_optimizer_that_ignores_it() -> None:
    class IgnoresFoundInf(th.optim.SGD):
        _step_supports_amp_scaling = True  # claims the protocol, but its step never reads found_inf

    optimizer = IgnoresFoundInf(nn.Linear(2, 2).parameters(), lr=0.1)
    assert not skips_on_found_inf(optimizer)
    net, groups = _two_group_net()
    optimizer = IgnoresFoundInf(net.parameters(), lr=0.1)
    weights = [p.detach().clone() for p in net.parameters()]
    _backward(net)
    groups["critic_mlp"][0].grad.fill_(float("nan"))
    assert not bool(GroupClipper(groups, {}).step(optimizer).finite)
    assert all(th.equal(p.detach(), w) for p, w in zip(net.parameters(), weights, strict=True)), "skipped by the fallback"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"actor_cnnn": 1.0}, "Unknown gradient group"),
        ({"actor_cnn": 0.0}, "finite number > 0"),
        ({"critic_mlp": float("nan")}, "finite number > 0"),
        ({"critic_mlp": "10"}, "finite number > 0"),
        ({"critic_mlp": True}, "finite number > 0"),
    ],
)
def test_validate_max_grad_norms_rejects_bad_input(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_max_grad_norms(bad)


def test_validate_max_grad_norms_completes_groups() -> None:
    assert validate_max_grad_norms({"actor_cnn": 1}) == {
        "actor_cnn": 1.0,
        "actor_mlp": None,
        "critic_cnn": None,
        "critic_mlp": None,
    }
    # numpy numbers (a value computed with numpy, e.g. in an Optuna sampler) are numbers too, kept as Python floats
    norms = validate_max_grad_norms({"critic_cnn": np.float32(10.0), "actor_mlp": np.int64(2)})
    assert norms["critic_cnn"] == 10.0 and type(norms["critic_cnn"]) is float and norms["actor_mlp"] == 2.0


def test_window_reductions_and_independent_alert_stream() -> None:
    window = GradNormWindow({"critic": ("critic_cnn", "critic_mlp")}, {"critic_cnn": 1.0, "critic_mlp": None})
    before = np.array([[2.0, 3.0], [0.5, 4.0], [np.nan, 1.0]])
    after = np.array([[1.0, 3.0], [0.5, 4.0], [np.nan, 1.0]])
    window.add("critic", np.array([1, 2, 3]), before, after)
    alert = window.pop_alert()["critic"]
    dump = window.pop_dump()["critic"]
    for summary in (alert, dump):
        np.testing.assert_allclose(summary.max_before, [2.0, 4.0])
        np.testing.assert_array_equal(summary.max_before_update, [1, 2])
        np.testing.assert_allclose(summary.max_after, [1.0, 4.0])
        np.testing.assert_allclose(summary.ratio_mean, [0.75, 1.0])
        assert summary.total_max_before == pytest.approx(math.sqrt(0.25 + 16.0))
        assert summary.nonfinite_steps == 1
        np.testing.assert_array_equal(summary.nonfinite_groups, [1, 0])
        assert summary.first_nonfinite_update == 3
    assert window.pop_dump() == {}
    assert window.nonfinite_total == {"critic": 1}
