"""A classical controller as a teacher: a behaviour-cloning term in the actor loss (TD3+BC, Q-filtered).

An image-based TD3 on a road with traffic spends its first 10,000-20,000 simulation steps rear-ending the first slow
leader, and later swings between good and bad snapshots (README, Learning). Off-policy data of good driving alone
does not fix that (a PID warm-up, :mod:`sb3_av.warmup`, was tried). With a teacher, every transition the learner
collects also records what a classical controller with privileged inputs (:class:`~sb3_av.baselines.PIDPurePursuit`
reads the route and the leader's gap from ``info``; the learner sees only the camera and the vector observation)
would have done in that state, a DAgger-style label on the learner's own states. The actor loss becomes TD3+BC's
(Fujimoto & Gu 2021, "A Minimalist Approach to Offline Reinforcement Learning"):

``loss = -mean(Q(s, pi(s))) / mean(|Q(s, pi(s))|) + weight * mean(mask * mean_j (pi(s)_j - a_teacher(s)_j)^2)``

(TD3+BC's ``alpha`` is ``1 / weight``; the Q term is normalised so that ``weight`` means the same whatever the
reward's scale). With the Q-filter (Nair et al. 2018, "Overcoming Exploration in Reinforcement Learning with
Demonstrations") ``mask`` keeps only the samples where the critic rates the teacher's action above the policy's,
so the learner may do better than the teacher where its critic says so; without it, ``mask`` is 1 wherever a
teacher action was stored. The teacher only labels: it never acts (a warm-up controller may, for the first steps).

With a policy that smooths its actions (``action_smoothing``: the action is ``(1 - beta) * head + beta * previous
action``), ``clone`` chooses what the term pulls towards the teacher's action: ``"action"`` (TD3+BC), the action the
env executes, or ``"head"``, the actor head's output before the smoothing. On the smoothed action the term weighs the
head's output only by ``(1 - beta)^2`` (0.0049 at the recipe's throttle beta of 0.93) and pulls it towards
``(a_teacher - beta * previous) / (1 - beta)``, which amplifies every difference between the teacher's action and the
previous one ``1 / (1 - beta)`` times: it leaves the head free to jitter, the jitter the smoothing then passes on as
jerk. On the head, the head follows the teacher's (smooth) action itself and the executed action is its low-pass.

The teacher runs on the env's observation and its last ``info`` like a warm-up controller (one copy per env, reset
at each episode end: :class:`~sb3_av.warmup.ControllerWarmup`). Use it through
:meth:`sb3_av.common.off_policy.ClippedOffPolicyMixin.set_teacher`; the labels live in the replay buffer
(:meth:`sb3_av.buffers.FrameStackDictReplayBuffer.keep_teacher_actions`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch as th

__all__ = ["CLONE_TARGETS", "TeacherLoss", "clone_target", "teacher_actor_loss"]

#: What the behaviour-cloning term pulls towards the teacher's action: the executed action or the actor head's output.
CLONE_TARGETS = ("action", "head")


def clone_target(what: str, value: object) -> str:
    """Check a clone target (one of :data:`CLONE_TARGETS`) and return it.

    :param what: the name the user set it by, for the message (e.g. ``"teacher clone"`` for the YAML entry,
        ``"teacher_clone"`` for ``learning.py --set``, which adds its own ``--set:`` prefix).
    :param value: the value to check.
    :raises ValueError: when ``value`` is not one of :data:`CLONE_TARGETS`.
    """
    if isinstance(value, str) and value in CLONE_TARGETS:
        return value
    raise ValueError(f"{what} must be one of {', '.join(map(repr, CLONE_TARGETS))}, got {value!r}")


class TeacherLoss(NamedTuple):
    """The actor loss with a teacher, and its parts (0-d tensors on the loss's device).

    :param loss: the loss to minimise.
    :param bc: the behaviour-cloning term before its weight (the masked mean squared error).
    :param cloned_share: the share of the batch the term applies to (the Q-filter's pass rate among labelled samples
        times the labelled share).
    """

    loss: th.Tensor
    bc: th.Tensor
    cloned_share: th.Tensor


def teacher_actor_loss(
    q_policy: th.Tensor,
    policy_actions: th.Tensor,
    teacher_actions: th.Tensor,
    q_teacher: th.Tensor | None,
    weight: float,
) -> TeacherLoss:
    """TD3+BC's actor loss with the teacher's actions as the behaviour to clone (see the module docstring).

    :param q_policy: ``(batch, 1)`` the first critic's Q-values of the policy's actions (with gradient to the actor).
    :param policy_actions: ``(batch, action_dim)`` the policy's actions in [-1, 1] (with gradient).
    :param teacher_actions: ``(batch, action_dim)`` the teacher's actions in [-1, 1]; a row with a NaN has no label.
    :param q_teacher: ``(batch, 1)`` the first critic's Q-values of the teacher's actions (no gradient needed) for the
        Q-filter, or None for no filter.
    :param weight: the weight of the behaviour-cloning term (TD3+BC's ``1 / alpha``), >= 0.
    """
    labelled = ~th.isnan(teacher_actions).any(dim=1)
    targets = th.where(labelled[:, None], teacher_actions, th.zeros_like(teacher_actions))
    mask = labelled
    if q_teacher is not None:
        mask = mask & (q_teacher.detach() > q_policy.detach()).squeeze(1)
    squared = ((policy_actions - targets) ** 2).mean(dim=1)  # TD3+BC's mean over the action's elements
    bc = (squared * mask.to(squared.dtype)).mean()
    scale = q_policy.detach().abs().mean().clamp_min(1e-6)
    loss = -q_policy.mean() / scale + weight * bc
    return TeacherLoss(loss, bc.detach(), mask.to(th.float32).mean())
