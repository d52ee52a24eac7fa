"""Per-group gradient norms, clipping and the non-finite guard (pure torch: no Stable-Baselines3 import).

The norm of a group is the *global* L2 norm over every gradient element of its parameters,
``sqrt(sum_i ||g_i||^2)``, the value :func:`torch.nn.utils.get_total_norm` returns. It is never the sum of
per-tensor norms, which over-reports by a factor that grows with the number of tensors (the "~2x inflated"
bug of hand-rolled logging).

All groups of one optimizer step are measured with a single fused :func:`torch._foreach_norm` call, then reduced
per group on the device; clipping uses :func:`torch.nn.utils.clip_grads_with_norm_` with that precomputed norm,
so nothing is read back to the host per parameter or per group.

Two private torch APIs make this fast, each behind a capability check with a public fallback (tests/test_grad_clip.py
fails if a torch release changes them, and checks that the fallbacks give the same norms and steps):
``torch._foreach_norm`` (fallback: one :func:`torch.linalg.vector_norm` a tensor) and the ``found_inf`` attribute
that fused optimizers read to skip a step on the device, as under :class:`torch.amp.GradScaler` (fallback: one
boolean read of the device, then a plain conditional ``step()``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch as th
from torch import nn

from sb3_av._checks import is_finite_number

__all__ = [
    "CLIP_EPS",
    "GROUP_NAMES",
    "HAS_FOREACH_NORM",
    "GroupClipper",
    "StepNorms",
    "global_grad_norm",
    "skips_on_found_inf",
    "validate_max_grad_norms",
]

#: The four parameter groups of an actor-critic image agent.
GROUP_NAMES: tuple[str, ...] = ("actor_cnn", "actor_mlp", "critic_cnn", "critic_mlp")

#: The epsilon of torch's clip coefficient ``max_norm / (norm + eps)``.
CLIP_EPS = 1e-6

#: Whether this torch has the fused per-tensor norm ``torch._foreach_norm`` (private; torch 2.13 has it).
HAS_FOREACH_NORM: bool = callable(getattr(th, "_foreach_norm", None))

# (optimizer class, device type) -> whether its step() honours ``found_inf`` (probed once, see skips_on_found_inf)
_FOUND_INF_HONOURED: dict[tuple[type, str], bool] = {}


def validate_max_grad_norms(max_grad_norms: Mapping[str, float | None] | None) -> dict[str, float | None]:
    """Check a ``max_grad_norms`` mapping and return it completed with ``None`` for the missing groups.

    :param max_grad_norms: group name -> max global L2 norm (a finite number > 0), or None to measure only.
    :return: a dict with exactly the keys of :data:`GROUP_NAMES`.
    :raises ValueError: for an unknown group name or a value that is not a finite positive number or None.
    """
    given = dict(max_grad_norms or {})
    unknown = sorted(set(given) - set(GROUP_NAMES))
    if unknown:
        raise ValueError(f"Unknown gradient group(s) {unknown} in max_grad_norms; valid groups are {list(GROUP_NAMES)}")
    result: dict[str, float | None] = {}
    for name in GROUP_NAMES:
        value = given.get(name)
        if value is not None:
            if not is_finite_number(value) or value <= 0:
                raise ValueError(f"max_grad_norms[{name!r}] must be a finite number > 0 or None, got {value!r}")
            value = float(value)
        result[name] = value
    return result


def global_grad_norm(parameters: Iterable[nn.Parameter]) -> th.Tensor:
    """The global L2 norm of the gradients of ``parameters`` (0 when none has a gradient).

    :param parameters: parameters whose ``.grad`` are measured.
    :return: a 0-d float32 tensor on the parameters' device.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return th.zeros(())
    return th.nn.utils.get_total_norm(grads, norm_type=2.0)


@dataclass(frozen=True)
class StepNorms:
    """The norms of one optimizer step, all on the device.

    :param before: ``(n_groups,)`` global L2 norm of each group before clipping.
    :param after: ``(n_groups,)`` the same after clipping (= before where the group is not clipped).
    :param finite: 0-d bool, False when any gradient element of any group is NaN or +-Inf; then the optimizer
        step was skipped.
    """

    before: th.Tensor
    after: th.Tensor
    finite: th.Tensor

    @property
    def total_before(self) -> th.Tensor:
        """Global L2 norm of the whole network before clipping (0-d)."""
        return self.before.square().sum().sqrt()

    @property
    def total_after(self) -> th.Tensor:
        """Global L2 norm of the whole network after clipping (0-d)."""
        return self.after.square().sum().sqrt()


class GroupClipper:
    """Measure, clip and apply one optimizer's gradients, group by group.

    :param groups: group name -> the parameters of that group; a parameter belongs to one group at most.
        Groups may be empty (e.g. the CNN of an MLP policy); their norm is 0.
    :param max_norms: group name -> max global L2 norm, or None to measure only. Names not in ``groups``
        are ignored.
    """

    def __init__(self, groups: Mapping[str, Sequence[nn.Parameter]], max_norms: Mapping[str, float | None]) -> None:
        self.names: tuple[str, ...] = tuple(groups)
        self.max_norms: tuple[float | None, ...] = tuple(max_norms.get(name) for name in self.names)
        seen: set[int] = set()
        self._group_params: list[list[nn.Parameter]] = []
        self._params: list[nn.Parameter] = []
        self._param_group: list[int] = []
        for index, name in enumerate(self.names):
            params = list(groups[name])
            for param in params:
                if id(param) in seen:
                    raise ValueError(f"A parameter of group {name!r} already belongs to another group")
                seen.add(id(param))
            self._group_params.append(params)
            self._params.extend(params)
            self._param_group.extend([index] * len(params))
        self._index_cache: dict[tuple[int, ...], th.Tensor] = {}
        self._limits: th.Tensor | None = None

    @property
    def clips_anything(self) -> bool:
        """Whether at least one group has a max_norm."""
        return any(limit is not None for limit in self.max_norms)

    def group_parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters of one group."""
        return list(self._group_params[self.names.index(name)])

    def measure(self) -> th.Tensor:
        """Global L2 norm of each group's current gradients, in one fused pass.

        :return: ``(n_groups,)`` float32 tensor on the parameters' device (NaN/Inf propagate).
        """
        present = [i for i, p in enumerate(self._params) if p.grad is not None]
        device = self._params[0].device if self._params else th.device("cpu")
        sums = th.zeros(len(self.names), dtype=th.float32, device=device)
        if not present:
            return sums
        grads = [g for g in (self._params[i].grad for i in present) if g is not None]
        key = tuple(present)
        index = self._index_cache.get(key)
        if index is None:
            index = th.tensor([self._param_group[i] for i in present], dtype=th.long, device=device)
            self._index_cache[key] = index
        per_tensor = th.stack(_tensor_norms(grads)).to(th.float32)
        return sums.index_add_(0, index, per_tensor.square()).sqrt()

    def _limit_tensor(self, like: th.Tensor) -> th.Tensor:
        if self._limits is None or self._limits.device != like.device:
            self._limits = th.tensor(
                [math.inf if limit is None else limit for limit in self.max_norms], dtype=like.dtype, device=like.device
            )
        return self._limits

    def clip_(self, before: th.Tensor) -> th.Tensor:
        """Scale each clipped group's gradients in place so that its norm is at most its max_norm.

        :param before: the norms returned by :meth:`measure` for the current gradients.
        :return: the norms after clipping, ``before * min(1, max_norm / (before + eps))`` for clipped groups.
        """
        if not self.clips_anything:
            return before
        for index, limit in enumerate(self.max_norms):
            if limit is not None:
                grads = [p for p in self._group_params[index] if p.grad is not None]
                if grads:
                    th.nn.utils.clip_grads_with_norm_(grads, limit, before[index])
        limits = self._limit_tensor(before)
        return th.where(th.isinf(limits), before, before * th.clamp(limits / (before + CLIP_EPS), max=1.0))

    def step(self, optimizer: th.optim.Optimizer) -> StepNorms:
        """Measure and clip the gradients, then take the optimizer step unless a gradient is non-finite.

        Fused optimizers (``optimizer_kwargs=dict(fused=True)``) skip a non-finite step on the device, as
        under :class:`torch.amp.GradScaler`; others need one boolean read of the device (as GradScaler does
        for them), which costs nothing on the CPU.

        :param optimizer: the optimizer over (at least) these parameters; its gradients are already computed.
        :return: the step's norms; ``finite`` is False when the step was skipped.
        """
        before = self.measure()
        finite = th.isfinite(before).all()
        after = self.clip_(before)
        _step_if_finite(optimizer, finite)
        return StepNorms(before=before, after=after, finite=finite)


def _tensor_norms(grads: list[th.Tensor]) -> list[th.Tensor]:
    """The L2 norm of each tensor: one fused ``torch._foreach_norm`` call where torch has it, else one public
    :func:`torch.linalg.vector_norm` a tensor."""
    if HAS_FOREACH_NORM:
        return list(th._foreach_norm(grads, 2.0))
    return [th.linalg.vector_norm(g, 2.0) for g in grads]


def skips_on_found_inf(optimizer: th.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` skips its update on the device when ``optimizer.found_inf`` is 1.

    That is the private protocol between :class:`torch.amp.GradScaler` and the fused optimizers (those with
    ``_step_supports_amp_scaling``). A torch release may change it, so it is checked once per optimizer class and
    device, on a one-parameter optimizer with the same settings: a NaN gradient with ``found_inf = 1`` must leave the
    parameter and the step count as they were.

    :param optimizer: an optimizer with at least one parameter.
    """
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return False
    device = optimizer.param_groups[0]["params"][0].device
    key = (type(optimizer), device.type)
    if key not in _FOUND_INF_HONOURED:
        _FOUND_INF_HONOURED[key] = _probe_found_inf(type(optimizer), dict(optimizer.defaults), device)
    return _FOUND_INF_HONOURED[key]


def _probe_found_inf(cls: type[th.optim.Optimizer], defaults: dict, device: th.device) -> bool:
    """Run one skipped and one taken step of ``cls(**defaults)`` on a one-element parameter; True when both behave."""
    param = nn.Parameter(th.ones(1, device=device))
    try:
        accepted = inspect.signature(cls).parameters  # e.g. AdamW's defaults hold a setting its constructor fixes
        probe = cls([param], **{key: value for key, value in defaults.items() if key in accepted})
        param.grad = th.full_like(param, math.nan)
        probe.found_inf = th.ones((), device=device)  # type: ignore[attr-defined]
        probe.step()
        skipped = bool(th.equal(param.detach(), th.ones_like(param))) and not _step_counts(probe)
        param.grad = th.ones_like(param)
        probe.found_inf = th.zeros((), device=device)  # type: ignore[attr-defined]
        probe.step()
        return skipped and bool(th.isfinite(param).all()) and not th.equal(param.detach(), th.ones_like(param))
    except Exception:  # an optimizer that cannot be rebuilt from its defaults: the plain conditional step
        return False


def _step_counts(optimizer: th.optim.Optimizer) -> bool:
    """Whether any parameter state of ``optimizer`` has a non-zero ``step``."""
    return any(float(state.get("step", 0)) != 0 for state in optimizer.state.values())


def _step_if_finite(optimizer: th.optim.Optimizer, finite: th.Tensor) -> None:
    """Take ``optimizer.step()`` only when ``finite`` is True, leaving weights and optimizer state untouched otherwise."""
    if skips_on_found_inf(optimizer):
        # Fused Adam/AdamW/SGD read ``found_inf`` and skip the update (and undo the step count) on the device.
        optimizer.found_inf = (~finite).to(th.float32)  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
    elif bool(finite):
        optimizer.step()
