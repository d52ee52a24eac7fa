"""DrivingEnv: the driving env contract (ENV_CONTRACT.md), built from a backend's per-step :class:`Frame`.

Every rule lives here so the CARLA and the embedded backend obey the same contract by construction:
spaces, frame stacking, vector features, named reward terms, termination/truncation and info keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_av._checks import is_finite_number, is_int, non_negative_number, positive_number
from sb3_av.envs.backend import DrivingBackend, Frame
from sb3_av.envs.route import Projection, Route, wrap_angle
from sb3_av.envs.scenarios import RewardWeights, Scenario, get_scenario

__all__ = [
    "BACKEND_SHARED_KEYS",
    "ROUTE_POINT_SCALE_M",
    "VECTOR_FEATURES",
    "DrivingEnv",
    "EnvConfig",
    "make_driving_env",
    "vector_feature_names",
]

#: Env-contract keys that are also handed to the backend factory (in the backend config dict).
BACKEND_SHARED_KEYS: tuple[str, ...] = ("camera_size", "npc_vehicles", "seed", "dt")

#: The fixed head of the vector observation; the K look-ahead points (x, y) follow.
VECTOR_FEATURES: tuple[str, ...] = ("speed", "lateral_offset", "heading_error", "prev_steer", "prev_throttle_brake")

_IDLE_SPEED_MS = 0.5  # below this speed the idle penalty applies (after idle_grace_s)
_STUCK_SPEED_MS = 0.1  # below this speed the stuck timer runs
_GOAL_TOLERANCE_M = 1.0  # the route counts as completed within this arc length of its end
#: Route points in the observation are divided by this (m).
ROUTE_POINT_SCALE_M = 50.0
_LANE_TERM_MIN = -2.0  # the lane term is bounded below
_MAX_NOISE_STD = 255.0  # grey levels: beyond the image's range the noise is all there is
_CAMERA_STREAM = 0xCA3E7A  # second word of the camera-fault generator's seed (the first is the episode seed)


@dataclass(frozen=True)
class EnvConfig:
    """The env-contract settings of one :class:`DrivingEnv` (every field is an env kwarg).

    :param max_steps: limit of simulation steps; reaching it truncates the episode (never terminal).
    :param frame_stack: number of stacked camera frames, newest last.
    :param camera_size: camera image height = width (pixels).
    :param n_route_points: K, the number of look-ahead route points in the vector observation.
    :param route_point_spacing_m: arc-length spacing (m) of the look-ahead points.
    :param target_speed_ms: target speed (m/s) for the speed term and the speed feature.
    :param dt: simulation step (s), handed to the backend.
    :param npc_vehicles: number of NPC vehicles, handed to the backend.
    :param seed: seed of the first reset when ``reset`` gets none (later resets continue the sequence).
    :param stuck_time_s: terminate when the speed stays below 0.1 m/s this long (s).
    :param idle_grace_s: the idle penalty starts after this much simulation time (s).
    :param off_road_margin_m: off road when ``|lateral offset| > half lane width + margin`` (m).
    :param reward_progress: weight of the ``progress`` term (see :class:`RewardWeights`, same for all ``reward_*``).
    :param render_mode: None or ``"rgb_array"`` (the newest camera frame as RGB).
    :param action_repeat: simulation steps per ``step()`` (the agent's control period is ``action_repeat * dt``):
        the action is applied for this many steps, the reward terms are summed over them, the episode ends at the
        first one that ends it, and only the last one's camera frame enters the frame stack (so a stack spans
        ``frame_stack`` agent steps, as in DrQ). 1 (the contract's default) is one simulation step per ``step()``.
    :param camera_noise_std: standard deviation (grey levels) of Gaussian pixel noise added to each camera frame that
        enters the observation (rounded, clipped to [0, 255]); 0 (default): no noise. Faults touch the observation only:
        ``render()``, the reward and ``info`` see the clean world.
    :param frame_drop_prob: probability (per ``step()``) that the camera delivers nothing new, so the newest stack
        entry repeats the previous one (bytes, noise included); 0 (default): never. The reset frame is never dropped.
        Both faults draw from a per-episode generator seeded by the episode seed, so an episode is reproducible and
        the traffic of seed ``s`` is the same with and without faults.
    """

    max_steps: int = 1000
    frame_stack: int = 4
    camera_size: int = 84
    n_route_points: int = 10
    route_point_spacing_m: float = 5.0
    target_speed_ms: float = 8.0
    dt: float = 0.05
    npc_vehicles: int = 20
    seed: int | None = None
    stuck_time_s: float = 5.0
    idle_grace_s: float = 1.0
    off_road_margin_m: float = 1.0
    reward_progress: float = 1.0
    reward_speed: float = 0.1
    reward_lane: float = 0.2
    reward_comfort: float = 0.1
    reward_idle: float = 0.5
    reward_collision: float = 50.0
    reward_off_road: float = 50.0
    reward_goal: float = 50.0
    render_mode: str | None = None
    action_repeat: int = 1
    camera_noise_std: float = 0.0
    frame_drop_prob: float = 0.0

    _POSITIVE_INT: ClassVar[tuple[str, ...]] = (
        "max_steps",
        "frame_stack",
        "camera_size",
        "n_route_points",
        "action_repeat",
    )
    _POSITIVE_FLOAT: ClassVar[tuple[str, ...]] = ("route_point_spacing_m", "target_speed_ms", "dt", "stuck_time_s")

    def __post_init__(self) -> None:
        for name in self._POSITIVE_INT:
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"Env kwarg {name} must be a positive integer, got {value!r}")
        if self.camera_size < 16:
            raise ValueError(f"Env kwarg camera_size must be >= 16 pixels, got {self.camera_size}")
        for name in self._POSITIVE_FLOAT:
            positive_number(f"Env kwarg {name}", getattr(self, name))
        for name in ("idle_grace_s", "off_road_margin_m", *(f"reward_{t}" for t in RewardWeights.names())):
            non_negative_number(f"Env kwarg {name}", getattr(self, name))
        if not is_int(self.npc_vehicles) or self.npc_vehicles < 0:
            raise ValueError(f"Env kwarg npc_vehicles must be an integer >= 0, got {self.npc_vehicles!r}")
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise ValueError(f"Env kwarg seed must be None or an integer >= 0, got {self.seed!r}")
        if not is_finite_number(self.camera_noise_std) or not 0 <= self.camera_noise_std <= _MAX_NOISE_STD:
            raise ValueError(
                f"Env kwarg camera_noise_std must be a number of grey levels in [0, {_MAX_NOISE_STD:g}], "
                f"got {self.camera_noise_std!r}"
            )
        if not is_finite_number(self.frame_drop_prob) or not 0 <= self.frame_drop_prob <= 1:
            raise ValueError(f"Env kwarg frame_drop_prob must be a probability in [0, 1], got {self.frame_drop_prob!r}")
        if self.render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {self.render_mode!r}")

    @classmethod
    def from_scenario(cls, scenario: Scenario, **overrides: Any) -> EnvConfig:
        """The scenario's defaults, with overrides (validated).

        :param scenario: a row of the scenario table.
        :param overrides: env-contract keys (see the class fields).
        """
        base = cls(
            max_steps=scenario.max_steps,
            target_speed_ms=scenario.target_speed_ms,
            dt=scenario.dt,
            npc_vehicles=scenario.npc_vehicles,
            **{f"reward_{k}": v for k, v in asdict(scenario.reward).items()},
        )
        return replace(base, **overrides)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every env-contract key."""
        return tuple(f.name for f in fields(cls))

    @property
    def reward_weights(self) -> RewardWeights:
        """The reward weights as a :class:`RewardWeights`."""
        return RewardWeights(**{k: getattr(self, f"reward_{k}") for k in RewardWeights.names()})


def vector_feature_names(n_route_points: int = 10) -> list[str]:
    """The names of the vector observation's entries, in order.

    :param n_route_points: K.
    """
    names = list(VECTOR_FEATURES)
    for k in range(1, n_route_points + 1):
        names += [f"route_x{k}", f"route_y{k}"]
    return names


class DrivingEnv(gym.Env):
    """The driving env contract on top of a :class:`DrivingBackend` (see ENV_CONTRACT.md).

    Observation ``Dict``: ``image`` ``(frame_stack, H, W)`` uint8 (newest frame last, the first frame
    repeated on reset) and ``vector`` ``(5 + 2K,)`` float32 = speed / target speed, lateral offset / half
    lane width, heading error / pi, previous steer, previous throttle_brake, then K route points
    ``(x forward, y left) / 50 m`` in the ego frame. Action ``Box(-1, 1, (2,))`` = ``[steer, throttle_brake]``.
    The camera-fault kwargs (``camera_noise_std``, ``frame_drop_prob``; see :class:`EnvConfig`) alter only ``image``.

    :param backend: the simulator; the env owns it and closes it.
    :param config: env-contract settings.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, backend: DrivingBackend, config: EnvConfig | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.config = config or EnvConfig()
        self.render_mode = self.config.render_mode
        self._weights = self.config.reward_weights
        c = self.config
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (c.frame_stack, c.camera_size, c.camera_size), np.uint8),
                "vector": spaces.Box(-np.inf, np.inf, (len(VECTOR_FEATURES) + 2 * c.n_route_points,), np.float32),
            }
        )
        self._stack = np.zeros((c.frame_stack, c.camera_size, c.camera_size), dtype=np.uint8)
        self._route: Route | None = None
        self._frame: Frame | None = None
        self._proj: Projection | None = None
        self._prev_action = np.zeros(2, dtype=np.float64)
        self._steps = 0
        self._s_max = 0.0
        self._distance_m = 0.0
        self._stuck_s = 0.0
        self._done = True
        self._termination: str | None = None  # why the episode ended (None: it did not, or by the time limit)
        self._events = {"collision": False, "off_road": False, "success": False}  # of the last simulation step
        self._first_reset = True
        self._camera_rng: np.random.Generator | None = None  # camera faults of the episode (None: no faults)

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """Start an episode; the backend episode seed is drawn from the env's seeded generator.

        :param seed: seeds the env (and so every later episode); the ``seed`` kwarg is used when None on the first reset.
        :param options: unused.
        """
        if seed is None and self._first_reset:
            seed = self.config.seed
        self._first_reset = False
        super().reset(seed=seed)
        episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        frame = self.backend.reset(seed=episode_seed)
        faults = self.config.camera_noise_std > 0 or self.config.frame_drop_prob > 0
        self._camera_rng = np.random.default_rng([episode_seed, _CAMERA_STREAM]) if faults else None
        self._start_episode(frame)
        info = self._info(frame, dict.fromkeys(RewardWeights.names(), 0.0), collision=False, off_road=False, success=False)
        info["termination"] = None
        return self._obs(), info

    def _start_episode(self, frame: Frame) -> None:
        """Reset the episode's bookkeeping to the first frame of a backend episode."""
        spec = self.backend.route
        self._route = Route(spec.points, spec.half_lane_width_m)
        self._check_frame(frame)
        self._frame = frame
        self._proj = self._route.project(frame.x, frame.y)
        self._s_max = self._proj.s
        self._prev_action = np.zeros(2, dtype=np.float64)
        self._steps = 0
        self._distance_m = 0.0
        self._stuck_s = 0.0
        self._done = False
        self._termination = None
        self._stack[:] = self._camera_image(frame.image)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        """Apply ``[steer, throttle_brake]`` for ``action_repeat`` simulation steps (one by default).

        :param action: ``(2,)`` in [-1, 1]; out-of-range values are clipped.
        :raises ValueError: the action has the wrong size or a non-finite value (never sent to the simulator).
        :raises RuntimeError: ``step`` called before ``reset`` or after the episode ended.
        """
        if self._done or self._route is None or self._proj is None:
            raise RuntimeError("DrivingEnv.step() called before reset() or after the episode ended; call reset() first")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,):
            raise ValueError(f"The action must have 2 values [steer, throttle_brake], got shape {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"Non-finite action {a.tolist()}: the policy produced NaN/Inf; it was not sent to the simulator")
        a = np.clip(a, -1.0, 1.0)
        terms = dict.fromkeys(RewardWeights.names(), 0.0)
        steer, throttle, brake = float(a[0]), max(float(a[1]), 0.0), max(-float(a[1]), 0.0)
        for _ in range(self.config.action_repeat):
            frame = self.backend.step(steer, throttle, brake)
            if frame.extra.get("episode_restarted"):
                return self._restarted(frame)
            self._advance(frame, a, terms)
            if self._done:
                break
        reward = float(sum(terms.values()))
        delivered = self._camera_delivers()
        self._stack[:-1] = self._stack[1:]  # the newest entry stays: a dropped frame repeats it
        if delivered:
            self._stack[-1] = self._camera_image(frame.image)
        info = self._info(frame, terms, **self._events)
        truncated = self._done and self._termination is None
        info["termination"] = "time_limit" if truncated else self._termination
        return self._obs(), reward, self._termination is not None, truncated, info

    def _advance(self, frame: Frame, a: np.ndarray, terms: dict[str, float]) -> None:
        """Account for one simulation step that applied action ``a`` and produced ``frame``.

        Adds the step's weighted reward terms to ``terms`` and updates the episode state (``_done``,
        ``_termination``, route position, distance, stuck timer, previous action).
        """
        assert self._route is not None and self._proj is not None
        prev_frame = self._frame
        self._check_frame(frame)
        self._steps += 1
        route = self._route
        proj = route.project(frame.x, frame.y, s_hint=self._proj.s)
        progress = proj.s - self._proj.s
        self._s_max = max(self._s_max, proj.s)
        if prev_frame is not None:
            self._distance_m += math.hypot(frame.x - prev_frame.x, frame.y - prev_frame.y)
        heading_error = wrap_angle(frame.yaw - proj.tangent_yaw)
        hw = route.half_lane_width_m

        collision = bool(frame.collision)
        off_road = (not frame.on_driving_lane) or abs(proj.lateral) > hw + self.config.off_road_margin_m
        completed = proj.s >= route.length_m - _GOAL_TOLERANCE_M and not collision and not off_road
        if completed:
            self._s_max = route.length_m
        step_s = frame.sim_time_s - (prev_frame.sim_time_s if prev_frame is not None else 0.0)
        self._stuck_s = self._stuck_s + step_s if frame.speed_ms < _STUCK_SPEED_MS else 0.0
        stuck = self._stuck_s >= self.config.stuck_time_s

        raw = {
            "progress": progress,
            "speed": float(np.clip(frame.speed_ms * math.cos(heading_error) / self.config.target_speed_ms, -1.0, 1.0)),
            "lane": max(-abs(proj.lateral) / hw, _LANE_TERM_MIN),
            "comfort": -float(np.abs(a - self._prev_action).sum()) / 4.0,
            "idle": -1.0 if (frame.speed_ms < _IDLE_SPEED_MS and frame.sim_time_s > self.config.idle_grace_s) else 0.0,
            "collision": -1.0 if collision else 0.0,
            "off_road": -1.0 if off_road else 0.0,
            "goal": 1.0 if completed else 0.0,
        }
        for k, v in raw.items():
            terms[k] += float(getattr(self._weights, k) * v)
        self._events = {"collision": collision, "off_road": off_road, "success": completed}

        self._termination = None
        for reason, flag in (
            ("collision", collision),
            ("off_road", off_road),
            ("route_completed", completed),
            ("stuck", stuck),
        ):
            if flag:
                self._termination = reason
                break
        self._done = self._termination is not None or self._steps >= self.config.max_steps
        self._frame = frame
        self._proj = proj
        self._prev_action = a

    def _restarted(self, frame: Frame) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        """The backend lost its world and started a new episode (a reconnect): truncate, with no reward.

        The step is not terminal (nothing the agent did ended it), so it is reported as truncated with
        ``termination = "backend_restarted"`` and zero reward terms. The observation is the last one of the episode
        that ended, so that a learner bootstrapping the truncated step's value reads a state of that episode (the
        new episode's frame is discarded: the next ``reset()`` starts a clean one).
        """
        assert self._frame is not None
        info = self._info(
            self._frame, dict.fromkeys(RewardWeights.names(), 0.0), collision=False, off_road=False, success=False
        )
        info["termination"] = "backend_restarted"
        info["backend"] = dict(frame.extra)
        self._done = True
        return self._obs(), 0.0, False, True, info

    def render(self) -> np.ndarray | None:
        """The newest camera frame as an ``(H, W, 3)`` uint8 RGB array (``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array" or self._frame is None:
            return None
        return np.repeat(self._frame.image[:, :, None], 3, axis=2)

    def close(self) -> None:
        """Close the backend (idempotent)."""
        self.backend.close()
        super().close()

    # ------------------------------------------------------------------ helpers
    @property
    def route(self) -> Route | None:
        """The current episode's route geometry (after reset)."""
        return self._route

    def _camera_delivers(self) -> bool:
        """Whether the camera delivers a new frame this step (False with probability ``frame_drop_prob``)."""
        p = self.config.frame_drop_prob
        return self._camera_rng is None or p == 0 or not self._camera_rng.random() < p

    def _camera_image(self, image: np.ndarray) -> np.ndarray:
        """The frame as observed: ``image`` plus rounded Gaussian noise of ``camera_noise_std`` grey levels, clipped."""
        std = self.config.camera_noise_std
        if self._camera_rng is None or std == 0:
            return image
        noisy = np.rint(image + self._camera_rng.normal(0.0, std, image.shape))
        return np.clip(noisy, 0, 255).astype(np.uint8)

    def _check_frame(self, frame: Frame) -> None:
        size = self.config.camera_size
        if frame.image.shape != (size, size) or frame.image.dtype != np.uint8:
            raise RuntimeError(
                f"Backend {type(self.backend).__name__} returned a {frame.image.dtype} image of shape {frame.image.shape}; "
                f"the env contract needs uint8 ({size}, {size}). Pass camera_size to the backend."
            )

    def _obs(self) -> dict[str, np.ndarray]:
        assert self._frame is not None and self._proj is not None and self._route is not None
        f, p, r, c = self._frame, self._proj, self._route, self.config
        head = np.array(
            [
                f.speed_ms / c.target_speed_ms,
                p.lateral / r.half_lane_width_m,
                wrap_angle(f.yaw - p.tangent_yaw) / math.pi,
                self._prev_action[0],
                self._prev_action[1],
            ]
        )
        points = r.lookahead_ego(f.x, f.y, f.yaw, p.s, c.n_route_points, c.route_point_spacing_m) / ROUTE_POINT_SCALE_M
        vector = np.concatenate((head, points.reshape(-1))).astype(np.float32)
        return {"image": self._stack.copy(), "vector": vector}

    def _info(self, frame: Frame, terms: dict[str, float], *, collision: bool, off_road: bool, success: bool) -> dict:
        assert self._proj is not None and self._route is not None
        return {
            "is_success": bool(success),
            "collision": bool(collision),
            "off_road": bool(off_road),
            "route_completion": float(min(self._s_max / self._route.length_m, 1.0)),
            "distance_m": float(self._distance_m),
            "speed_ms": float(frame.speed_ms),
            "lateral_offset_m": float(self._proj.lateral),
            "heading_error_rad": float(wrap_angle(frame.yaw - self._proj.tangent_yaw)),
            "sim_time_s": float(frame.sim_time_s),
            "reward_terms": terms,
            "backend": dict(frame.extra),
        }


def make_driving_env(
    scenario_id: str,
    backend_factory: Callable[[dict[str, Any]], DrivingBackend],
    backend_defaults: dict[str, Any],
    **kwargs: Any,
) -> DrivingEnv:
    """Build a :class:`DrivingEnv` for a scenario, splitting kwargs between the env contract and the backend.

    The env-contract keys are the fields of :class:`EnvConfig` (defaults from the scenario table); the
    backend keys are the keys of ``backend_defaults``. ``backend_factory`` receives ``backend_defaults``
    updated with the env's :data:`BACKEND_SHARED_KEYS` (camera_size, npc_vehicles, seed, dt) and the
    backend kwargs the user gave.

    :param scenario_id: scenario name or env id (``"LiteScenario0"`` / ``"LiteScenario0-v0"``).
    :param backend_factory: builds the backend from its merged config dict.
    :param backend_defaults: every key the backend accepts, with its default.
    :param kwargs: env kwargs.
    :raises ValueError: an unknown key (the message lists the valid keys) or a bad value.
    """
    scenario = get_scenario(scenario_id)
    env_keys = set(EnvConfig.keys())
    valid = sorted(env_keys | set(backend_defaults))
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"Unknown env kwarg(s) {', '.join(unknown)} for {scenario.env_id}; valid keys: {', '.join(valid)}")
    config = EnvConfig.from_scenario(scenario, **{k: v for k, v in kwargs.items() if k in env_keys})
    backend_config = dict(backend_defaults)
    backend_config.update({k: v for k, v in kwargs.items() if k not in env_keys})
    backend_config.update({k: getattr(config, k) for k in BACKEND_SHARED_KEYS})
    backend = backend_factory(backend_config)
    try:
        return DrivingEnv(backend, config)
    except Exception:
        backend.close()
        raise
