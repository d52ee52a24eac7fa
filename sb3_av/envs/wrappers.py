"""Training-time reward wrappers for the driving envs (opt-in; the env contract itself is unchanged).

The contract's ``speed`` term, ``clip(v cos(e) / v_target, -1, 1)``, stops paying at the target speed but never
charges for going faster, and ``progress`` pays per metre, so a learner that has not yet learned to see and
brake for the vehicle ahead drives as fast as the car goes (16-17 m/s on the Lite road, twice the 8 m/s
target) and rear-ends slower traffic. :class:`OverspeedPenalty` adds the missing half of a speed reward that
peaks at the target speed, as its own named term so that ``info["reward_terms"]`` still sums to the reward.
:class:`JerkPenalty` charges the longitudinal jerk the evaluation reports (``mean_abs_jerk_ms3``): the
contract's ``comfort`` term (weight 0.1, at most 0.1 a step) is too weak to stop a deterministic policy from
flipping between throttle and brake (|jerk| of 60-70 m/s^3 against a comfort bound of 2).
:class:`HeadwayPenalty` charges following closer than a time headway (the 1.5 s that the NPCs' IDM and the PID
baseline keep): an agent that tailgates leaves no room when a neighbour cuts in, and a smoothed (slow) brake needs
that room.
:class:`ClearancePenalty` charges near misses (an NPC's box within a metre of the ego's): the steps before a
side contact, which the single terminal collision penalty teaches only rarely.
:class:`ScenarioCycle` trains one agent on several scenarios, one episode each in turn.
:class:`ScaleReward` multiplies the reward (TD3's critic learns faster on rewards of order 0.1 per step).

Evaluate on the plain env: success, route completion and collisions do not depend on the reward.
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium as gym

from sb3_av._checks import is_int, non_negative_number, positive_number

__all__ = ["ClearancePenalty", "HeadwayPenalty", "JerkPenalty", "OverspeedPenalty", "ScaleReward", "ScenarioCycle"]


def _target_speed_ms(env: gym.Env) -> float:
    config = getattr(env.unwrapped, "config", None)
    target = getattr(config, "target_speed_ms", None)
    if target is None:
        raise TypeError(
            f"OverspeedPenalty needs a driving env (sb3-av DrivingEnv with config.target_speed_ms), got {env.unwrapped!r}"
        )
    return float(target)


def _backend_value(info: dict[str, Any], key: str, need: str) -> Any:
    """``info["backend"][key]``; a clear error (``need``, the key, the keys there are) when the backend lacks it."""
    backend = info.get("backend", {})
    if key not in backend:
        raise ValueError(
            f"{need} in info['backend'][{key!r}], which this backend does not report (the Lite and CARLA backends do); "
            f"backend info keys: {sorted(backend)}"
        )
    return backend[key]


def _shortfall(value: float, threshold: float) -> float:
    """How far ``value`` falls short of ``threshold``, as a share of it: ``clip(1 - value / threshold, 0, 1)``."""
    return min(max(1.0 - value / threshold, 0.0), 1.0)


class _PenaltyTerm(gym.Wrapper):
    """A reward term of its own: ``step`` adds :meth:`term` (of the step's ``info``) to the reward and to
    ``info["reward_terms"]`` under :attr:`term_name`, so the terms still sum to the reward.

    The term is charged for each simulation step of the agent's step, :attr:`steps_per_action` (the env's
    ``action_repeat``) times the per-step value, as the env sums its own terms over those steps: a weight means the
    same per second of driving at every control rate. (Charged once per agent step, a penalty would weigh half as
    much against ``progress`` at ``action_repeat: 2``.)

    :param env: the env.
    :param weight: weight of the term (>= 0), checked here for every subclass.
    """

    term_name: str = ""

    def __init__(self, env: gym.Env, weight: float) -> None:
        super().__init__(env)
        self.weight = non_negative_number(f"{type(self).__name__} weight", weight)
        #: simulation steps per agent step: the env's ``action_repeat`` (1 for an env without one)
        self.steps_per_action = int(getattr(getattr(env.unwrapped, "config", None), "action_repeat", 1))

    def term(self, info: dict[str, Any]) -> float:
        """The weighted term (<= 0) of one simulation step, from the ``info`` of the agent step's last one."""
        raise NotImplementedError

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env and add the weighted term, times :attr:`steps_per_action`, to the reward and the terms."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        term = self.term(info) * self.steps_per_action
        info["reward_terms"] = {**info.get("reward_terms", {}), self.term_name: term}
        return obs, float(reward) + term, terminated, truncated, info


class OverspeedPenalty(_PenaltyTerm):
    """Charge ``weight * min((v - v_target) / v_target - tolerance, 1)`` per step while faster than the target.

    The term ``overspeed = -clip((v - v_target) / v_target - tolerance, 0, 1)`` is added to the reward and to
    ``info["reward_terms"]`` (weighted, like the env's own terms), so the terms still sum to the reward.
    With the default progress weight (1 per metre, 0.05 s steps) a weight above ``0.05 * v_target`` makes the
    target speed the most rewarding speed; the default 1.0 makes it clearly so, up to 28 m/s for the 8 m/s target
    (the term saturates at ``(2 + tolerance) * v_target``, beyond which progress pays again). Charged per simulation
    step, like every term here (:class:`_PenaltyTerm`).

    :param env: a driving env (its ``unwrapped.config.target_speed_ms`` is the target speed; ``info["speed_ms"]``
        the speed).
    :param weight: weight of the term (>= 0).
    :param tolerance: free margin above the target, as a fraction of it (>= 0).
    """

    term_name = "overspeed"

    def __init__(self, env: gym.Env, weight: float = 1.0, tolerance: float = 0.1) -> None:
        super().__init__(env, weight)
        self.tolerance = non_negative_number("OverspeedPenalty tolerance", tolerance)
        self.target_speed_ms = _target_speed_ms(env)

    def term(self, info: dict[str, Any]) -> float:
        """``-weight * clip((v - v_target) / v_target - tolerance, 0, 1)``."""
        excess = (float(info["speed_ms"]) - self.target_speed_ms) / self.target_speed_ms - self.tolerance
        return -self.weight * min(max(excess, 0.0), 1.0) if math.isfinite(excess) else -self.weight


class ScaleReward(gym.RewardWrapper):
    """Multiply every reward by ``scale`` (a YAML-friendly ``TransformReward``); ``info`` is left as it is.

    :param env: any env.
    :param scale: the factor (finite, > 0).
    """

    def __init__(self, env: gym.Env, scale: float = 0.1) -> None:
        super().__init__(env)
        self.scale = positive_number("ScaleReward scale", scale)

    def reward(self, reward: SupportsFloat) -> float:
        """The scaled reward."""
        return self.scale * float(reward)


class JerkPenalty(_PenaltyTerm):
    """Charge ``weight * min(|jerk| / reference_jerk_ms3, 1)`` per step, jerk measured as the evaluation does.

    The longitudinal jerk is the second difference of ``info["speed_ms"]`` over ``info["sim_time_s"]``
    (:class:`sb3_av.evaluation.EpisodeMetrics`), so the term charges exactly what ``mean_abs_jerk_ms3`` reports:
    nothing for the first two steps of an episode. It is added to the reward and to ``info["reward_terms"]`` as
    ``jerk``. The default reference (100 m/s^3, about a full throttle-to-brake flip in 0.05 s) keeps the term in
    [-weight, 0] per simulation step; a 2 m/s^3 comfort-level jerk costs ``0.02 * weight``.

    :param env: a driving env (``info`` has ``speed_ms`` and ``sim_time_s``).
    :param weight: weight of the term (>= 0).
    :param reference_jerk_ms3: the |jerk| (m/s^3) that costs the full weight (> 0).
    """

    term_name = "jerk"

    def __init__(self, env: gym.Env, weight: float = 1.0, reference_jerk_ms3: float = 100.0) -> None:
        super().__init__(env, weight)
        self.reference_jerk_ms3 = positive_number("JerkPenalty reference_jerk_ms3", reference_jerk_ms3)
        self._last: tuple[float, float] | None = None  # (time, speed) of the previous step
        self._accel: float | None = None  # acceleration over the previous step

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Reset the env and the speed history."""
        obs, info = self.env.reset(**kwargs)
        self._last = (float(info["sim_time_s"]), float(info["speed_ms"])) if "speed_ms" in info else None
        self._accel = None
        return obs, info

    def term(self, info: dict[str, Any]) -> float:
        """``-weight * min(|jerk| / reference, 1)`` from this step's and the two previous speeds (0 until then)."""
        now, speed = float(info["sim_time_s"]), float(info["speed_ms"])
        term = 0.0
        if self._last is not None and now > self._last[0]:
            dt = now - self._last[0]
            accel = (speed - self._last[1]) / dt
            if self._accel is not None:
                jerk = abs(accel - self._accel) / dt
                term = -self.weight * min(jerk / self.reference_jerk_ms3, 1.0) if math.isfinite(jerk) else -self.weight
            self._accel = accel
        self._last = (now, speed)
        return term


class HeadwayPenalty(_PenaltyTerm):
    """Charge ``weight * (1 - headway / min_headway_s)`` per step while the time headway is below ``min_headway_s``.

    The time headway is the bumper-to-bumper gap to the vehicle ahead on the route lane over the ego's speed
    (``info["backend"]["lead_distance_m"] / info["speed_ms"]``, what ``benchmarks/traffic_difficulty.py`` counts);
    no leader, or a speed below 0.5 m/s, costs nothing. The term is in ``[-weight, 0]`` per simulation step: 0 at
    ``min_headway_s`` and beyond, ``-weight`` at a zero gap. Following a leader at its speed costs no progress at
    any gap, so the term moves where the agent follows, not whether it drives. The backend must report the gap (Lite does).

    :param env: a driving env whose backend reports ``lead_distance_m``.
    :param weight: weight of the term (>= 0).
    :param min_headway_s: the time headway (s) below which the term charges (> 0).
    :raises ValueError: at the first step, when the backend does not report ``lead_distance_m``.
    """

    term_name = "headway"

    def __init__(self, env: gym.Env, weight: float = 0.5, min_headway_s: float = 1.5) -> None:
        super().__init__(env, weight)
        self.min_headway_s = positive_number("HeadwayPenalty min_headway_s", min_headway_s)

    def term(self, info: dict[str, Any]) -> float:
        """``-weight * clip(1 - headway / min_headway_s, 0, 1)`` behind a leader, else 0."""
        gap = _backend_value(info, "lead_distance_m", "HeadwayPenalty needs the gap to the vehicle ahead")
        speed = float(info["speed_ms"])
        term = 0.0
        if gap is not None and speed >= _HEADWAY_MIN_SPEED_MS:
            term = -self.weight * _shortfall(float(gap) / speed, self.min_headway_s)
        return term


_HEADWAY_MIN_SPEED_MS = 0.5  # HeadwayPenalty: below this speed the headway is not charged


class ClearancePenalty(_PenaltyTerm):
    """Charge near misses: ``weight * (1 - clearance / min_clearance_m)`` per step while the nearest NPC's box is
    closer than ``min_clearance_m`` to the ego's box.

    The clearance is ``info["backend"]["clearance_m"]`` (the Lite backend reports the box-to-box distance to the
    nearest NPC, 0 at contact; None when no NPC is near). A collision is a single terminal event that the critic
    meets rarely; the steps before it, when an NPC passes within a metre of the ego's side or its bumper, are
    frequent, and this term charges them. An NPC centred in the next lane with the ego centred in its own is 2 m
    away on 4 m lanes, and the PID baseline's following gap is 5 m or more, so ordinary driving costs nothing.

    :param env: a driving env whose backend reports ``clearance_m``.
    :param weight: weight of the term (>= 0): the charge at contact.
    :param min_clearance_m: the clearance (m) below which the term charges (> 0).
    :raises ValueError: at the first step, when the backend does not report ``clearance_m``.
    """

    term_name = "clearance"

    def __init__(self, env: gym.Env, weight: float = 1.0, min_clearance_m: float = 1.0) -> None:
        super().__init__(env, weight)
        self.min_clearance_m = positive_number("ClearancePenalty min_clearance_m", min_clearance_m)

    def term(self, info: dict[str, Any]) -> float:
        """``-weight * clip(1 - clearance / min_clearance_m, 0, 1)`` with an NPC near, else 0."""
        clearance = _backend_value(info, "clearance_m", "ClearancePenalty needs the distance to the nearest NPC")
        if clearance is None:
            return 0.0
        return -self.weight * _shortfall(float(clearance), self.min_clearance_m)


class ScenarioCycle(gym.Wrapper):
    """Train on several scenarios: each reset moves to the next env of ``[env, *env_ids]``, in turn.

    One agent sees the easy and the dense traffic alike (an agent trained only on dense traffic never drives a free
    road), or one scenario on several roads (another route lane, lane width: an entry with its own env kwargs). The
    envs must share the observation and action spaces. The first seeded reset seeds every env (env ``i`` with
    ``seed + 1000 * i``), so a run is reproducible; later resets continue each env's own sequence.

    :param env: the first scenario (the env the trainer made).
    :param env_ids: the other scenarios: a gymnasium id, or ``{"env_id": id, "env_kwargs": {...}}`` for a scenario
        with env kwargs of its own (on top of ``env_kwargs``), e.g. ``{"env_id": "LiteScenario2-v0", "env_kwargs":
        {"route_lane": 0}}``.
    :param env_kwargs: env kwargs of every other env (e.g. the same ``action_repeat`` as ``env``).
    :param first_env_steps: a curriculum: every episode is ``env``'s until this many steps (``step()`` calls of this
        wrapper, i.e. agent steps) have been taken; the cycle starts at the first reset after them. 0: from the start.
    """

    def __init__(
        self,
        env: gym.Env,
        env_ids: list[str | dict[str, Any]],
        env_kwargs: dict[str, Any] | None = None,
        first_env_steps: int = 0,
    ) -> None:
        super().__init__(env)
        if not isinstance(env_ids, list | tuple) or not env_ids:
            raise ValueError(f"ScenarioCycle env_ids must be a non-empty list of env ids, got {env_ids!r}")
        if not is_int(first_env_steps) or first_env_steps < 0:
            raise ValueError(f"ScenarioCycle first_env_steps must be an integer >= 0, got {first_env_steps!r}")
        self.first_env_steps: int = int(first_env_steps)
        #: steps taken so far, over all envs
        self.steps: int = 0
        self._envs: list[gym.Env] = [env]
        for entry in env_ids:
            env_id, own_kwargs = cycle_entry(entry)
            other = gym.make(env_id, **{**(env_kwargs or {}), **own_kwargs})
            self._envs.append(other)
            if other.observation_space != env.observation_space or other.action_space != env.action_space:
                self.close()
                raise ValueError(f"ScenarioCycle: {env_id} has other spaces than {env.spec.id if env.spec else env}")
        self._index: int = -1
        self._seeded: bool = False

    @property
    def env_index(self) -> int:
        """Index (in ``[env, *env_ids]``) of the env of the current episode."""
        return self._index

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the current env (and count the step for ``first_env_steps``)."""
        self.steps += 1
        return self.env.step(action)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Move to the next env and reset it (the first seeded reset seeds all of them).

        Before ``first_env_steps`` steps, the "next" env is ``env`` again; the first reset after them moves to the
        second env, so the cycle starts where the curriculum ends.
        """
        curriculum = self.steps < self.first_env_steps
        self._index = 0 if curriculum else (self._index + 1) % len(self._envs)
        self.env = self._envs[self._index]
        if seed is not None and not self._seeded:
            self._seeded = True
            for i, env in enumerate(self._envs):
                if i != self._index:
                    env.reset(seed=seed + 1000 * i)
            return self.env.reset(seed=seed + 1000 * self._index, options=options)
        return self.env.reset(seed=seed, options=options)

    def close(self) -> None:
        """Close every env."""
        for env in self._envs:
            env.close()


def cycle_entry(entry: Any) -> tuple[str, dict[str, Any]]:
    """A :class:`ScenarioCycle` entry as ``(env id, its own env kwargs)``; a clear error for anything else."""
    if isinstance(entry, str):
        return entry, {}
    if (
        isinstance(entry, dict)
        and isinstance(entry.get("env_id"), str)
        and set(entry) <= {"env_id", "env_kwargs"}
        and isinstance(entry.get("env_kwargs", {}), dict)
    ):
        return entry["env_id"], dict(entry.get("env_kwargs", {}))
    raise ValueError(
        f"ScenarioCycle env_ids entries must be an env id or {{'env_id': id, 'env_kwargs': {{...}}}}, got {entry!r}"
    )
