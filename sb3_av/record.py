"""``sb3-av record`` (and ``enjoy.py --video``): evaluation episodes of a model, a run folder or the baseline as
an MP4 and a GIF.

Each video frame shows, side by side, a larger view of the scene and the agent's own observation (its stack of
84x84 grayscale frames, newest last, scaled up), above a text panel with the step, the speed, the action (steer,
throttle/brake), the weighted reward terms of that step and the gradient-norm alerts that the run logged up to
the model's training step. The last frames of an episode say how it ended. The view is

- for the embedded simulator (Lite), a top-down view of the road (the route in yellow, NPC vehicles in red, the
  ego in green; ``view_px`` pixels at ``view_ppm`` pixels per metre, heading up), drawn from its state;
- for CARLA, the image of a chase camera behind and above the ego (the env kwarg ``chase_camera_size``, which
  :func:`record_target` turns on: ``view_px`` high, 4:3), of the same ticked frame as the agent's camera.

Frames are encoded by imageio (FFmpeg through imageio-ffmpeg for the MP4, Pillow for the GIF), headless.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sb3_av.baselines import PIDPurePursuit
from sb3_av.envs.core import DrivingEnv

__all__ = [
    "Alert",
    "RecordError",
    "StepOverlay",
    "add_record_arguments",
    "alerts_line",
    "compose_frame",
    "read_alerts",
    "record_episodes",
    "record_target",
    "run_record_command",
    "write_video",
]

#: Grayscale values of the Lite camera (sb3_av.envs.lite.render) -> colours of the recording's view.
_PALETTE_ENTRIES = {0: (34, 70, 40), 90: (85, 85, 90), 200: (235, 235, 235), 255: (220, 60, 60), 150: (60, 200, 90)}
_ROAD_GRAYS = (90, 200)  # road surface and lane lines: where the route is drawn
_ROUTE_RGB = (250, 210, 40)
_PANEL_RGB = (18, 18, 22)
_TEXT_RGB = (235, 235, 235)
_ALERT_RGB = (255, 120, 90)
_PANEL_LINES = 5
_LINE_PX = 18
_FONT_PX = 14
_GAP_PX = 8
_MACRO_BLOCK = 16  # H.264 encodes frames whose sides are multiples of 16 without resizing them


class RecordError(ValueError):
    """What the user asked for cannot be recorded (unsupported env, bad output path, ...)."""


@dataclass(frozen=True)
class Alert:
    """A gradient-norm explosion alert logged by a run (``alerts/gradient_explosion_{level}`` in TensorBoard).

    :param step: training step (env steps) it was raised at.
    :param level: ``"warning"`` or ``"critical"``.
    :param norm: the offending before-clip global L2 norm (inf for a non-finite gradient).
    """

    step: int
    level: str
    norm: float


@dataclass(frozen=True)
class StepOverlay:
    """What the text panel says about one step.

    :param title: first line (env id, episode, seed).
    :param step: agent steps since the episode started.
    :param sim_time_s: simulation time (s).
    :param speed_ms: ego speed (m/s).
    :param action: ``[steer, throttle_brake]`` applied at this step.
    :param reward_terms: weighted reward terms of this step.
    :param alerts: the line about gradient alerts ("" when the run logged none or this is not a run).
    :param ending: how the episode ended, on its last frames ("" before).
    """

    title: str
    step: int
    sim_time_s: float
    speed_ms: float
    action: np.ndarray
    reward_terms: dict[str, float]
    alerts: str = ""
    ending: str = ""

    def lines(self) -> list[str]:
        """The panel's text lines."""
        steer, pedal = float(self.action[0]), float(self.action[1])
        terms = "  ".join(f"{name} {value:+.2f}" for name, value in self.reward_terms.items() if value != 0.0)
        return [
            self.title,
            f"step {self.step}  t {self.sim_time_s:5.2f} s  speed {self.speed_ms:4.1f} m/s  "
            f"steer {steer:+.2f}  throttle {max(pedal, 0.0):.2f}  brake {max(-pedal, 0.0):.2f}",
            f"reward {sum(self.reward_terms.values()):+.3f}: {terms or '-'}",
            self.alerts,
            self.ending,
        ]


def _palette() -> np.ndarray:
    table = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    for gray, rgb in _PALETTE_ENTRIES.items():
        table[gray] = rgb
    return table


class _LiteView:
    """A larger, coloured top-down view of the embedded simulator around the ego, with the route drawn in.

    :param backend: the env's :class:`~sb3_av.envs.lite.backend.LiteBackend`.
    :param view_px: side of the view (pixels).
    :param view_ppm: scale (pixels per metre).
    """

    _EGO_ROW = 0.7

    def __init__(self, backend: Any, view_px: int, view_ppm: float) -> None:
        from sb3_av.envs.lite.render import TopDownCamera

        self.backend = backend
        self.size = int(view_px)
        self.ppm = float(view_ppm)
        self.camera = TopDownCamera(backend.road, size=self.size, pixels_per_m=self.ppm, ego_row_fraction=self._EGO_ROW)
        self.palette = _palette()

    def render(self) -> Image.Image:
        """The view of the current simulation state."""
        route_points = np.asarray(self.backend.route.points)
        ego = self.backend.ego
        npcs = self.backend.npcs
        boxes = np.array([[n.position[0], n.position[1], n.heading, n.LENGTH, n.WIDTH] for n in npcs]).reshape(-1, 5)
        x, y, yaw = float(ego.position[0]), float(ego.position[1]), float(ego.heading)
        gray = self.camera.render(x, y, yaw, boxes, (ego.LENGTH, ego.WIDTH))
        rgb = self.palette[gray]
        # The route goes under the vehicles: drawn as a mask, then painted on road pixels only.
        mask = Image.new("L", (self.size, self.size), 0)
        ImageDraw.Draw(mask).line([tuple(p) for p in self._to_pixels(route_points, x, y, yaw)], fill=255, width=2)
        rgb[(np.asarray(mask) > 0) & np.isin(gray, _ROAD_GRAYS)] = _ROUTE_RGB
        return Image.fromarray(rgb)

    def _to_pixels(self, points: np.ndarray, x: float, y: float, yaw: float) -> np.ndarray:
        """World points -> view pixels (the camera's transform: view centre ahead of the ego, heading up)."""
        c, s = math.cos(yaw), math.sin(yaw)
        ahead = (self._EGO_ROW - 0.5) * self.size / self.ppm
        dx = points[:, 0] - (x + ahead * c)
        dy = points[:, 1] - (y + ahead * s)
        forward, left = c * dx + s * dy, -s * dx + c * dy
        centre = self.size / 2
        return np.stack([centre - left * self.ppm, centre - forward * self.ppm], axis=1)


class _ChaseView:
    """The CARLA chase camera's image of the latest frame, scaled to ``view_px`` high (aspect kept).

    :param backend: the env's CARLA backend (in-process or worker), built with ``chase_camera_size``.
    :param view_px: height of the view (pixels).
    """

    def __init__(self, backend: Any, view_px: int) -> None:
        self.backend = backend
        self.height = int(view_px)

    def render(self) -> Image.Image:
        """The chase camera's image of the frame the env returned last."""
        rgb = self.backend.chase_image
        if rgb is None:
            raise RecordError(
                "this CARLA env has no chase camera: build it with the env kwarg chase_camera_size=(width, height) "
                "(sb3-av record does)"
            )
        image = Image.fromarray(rgb)
        if image.height != self.height:
            width = max(round(image.width * self.height / image.height), 1)
            image = image.resize((width, self.height), Image.Resampling.BILINEAR)
        return image


def _view_for(env: gym.Env, view_px: int, view_ppm: float) -> _LiteView | _ChaseView:
    """The recording's view of ``env``: Lite's top-down view or CARLA's chase camera.

    :raises RecordError: ``env`` is neither, or a CARLA env without its chase camera.
    """
    backend = getattr(env.unwrapped, "backend", None)
    if backend is not None and all(hasattr(backend, name) for name in ("road", "ego", "npcs")):
        return _LiteView(backend, view_px, view_ppm)
    if backend is not None and hasattr(backend, "chase_image"):
        if getattr(backend.config, "chase_camera_size", None) is None:
            raise RecordError(
                f"recording {env.spec.id if env.spec else 'a CARLA env'} needs its chase camera: build the env with "
                "the env kwarg chase_camera_size=(width, height) (sb3-av record does)"
            )
        return _ChaseView(backend, view_px)
    raise RecordError(
        "recording needs a driving env: a LiteScenario env, or a CarlaScenario env with chase_camera_size; "
        f"got {env.spec.id if env.spec else env}"
    )


def compose_frame(view: Image.Image, agent_stack: np.ndarray, overlay: StepOverlay, font: Any = None) -> np.ndarray:
    """One video frame: the view, the agent's frames in a grid beside it, the text panel below.

    :param view: the scene (RGB): Lite's top-down view (square) or CARLA's chase camera image (any width).
    :param agent_stack: ``(stack, H, W)`` uint8, the agent's observation image (newest last).
    :param overlay: the panel's content.
    :param font: a PIL font (default: Pillow's built-in font at 14 px).
    :return: ``(height, width, 3)`` uint8 RGB, both sides multiples of 16.
    """
    font = font or ImageFont.load_default(size=_FONT_PX)
    view_width, side = view.size
    n_frames = agent_stack.shape[0]
    cols = math.ceil(math.sqrt(n_frames))
    rows = math.ceil(n_frames / cols)
    tile = (side - _GAP_PX * (rows - 1)) // rows
    width = _round_up(view_width + _GAP_PX + cols * tile + _GAP_PX * (cols - 1), _MACRO_BLOCK)
    height = _round_up(side + _PANEL_LINES * _LINE_PX + _GAP_PX, _MACRO_BLOCK)
    canvas = Image.new("RGB", (width, height), _PANEL_RGB)
    canvas.paste(view, (0, 0))
    for k in range(n_frames):
        frame = Image.fromarray(agent_stack[k]).convert("RGB").resize((tile, tile), Image.Resampling.NEAREST)
        row, col = divmod(k, cols)
        canvas.paste(frame, (view_width + _GAP_PX + col * (tile + _GAP_PX), row * (tile + _GAP_PX)))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(overlay.lines()):
        colour = _ALERT_RGB if line and line in (overlay.alerts, overlay.ending) else _TEXT_RGB
        draw.text((_GAP_PX, side + _GAP_PX // 2 + i * _LINE_PX), line, fill=colour, font=font)
    return np.asarray(canvas)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def alerts_line(alerts: Sequence[Alert], training_step: int | None) -> str:
    """The panel's alert line: the run's alerts up to ``training_step`` (all when None)."""
    seen = [a for a in alerts if training_step is None or a.step <= training_step]
    if not seen:
        return ""
    counts = {level: sum(a.level == level for a in seen) for level in ("warning", "critical")}
    last = max(seen, key=lambda a: a.step)
    return (
        f"gradient alerts up to training step {training_step if training_step is not None else last.step}: "
        f"{counts['warning']} warning, {counts['critical']} critical; last: {last.level} at step {last.step} "
        f"(norm {last.norm:.3g})"
    )


def record_episodes(
    agent: Any,
    env: gym.Env,
    n_episodes: int,
    seed: int | None = None,
    title: str = "",
    alerts: str = "",
    view_px: int = 352,
    view_ppm: float = 5.0,
    hold_last_s: float = 1.0,
) -> Iterator[np.ndarray]:
    """Run deterministic evaluation episodes and yield their video frames (one per agent step).

    :param agent: a model with ``predict`` (SB3 style) or a :class:`~sb3_av.baselines.PIDPurePursuit`.
    :param env: a driving env (wrappers are fine): Lite (``gym.make("LiteScenario0-v0", ...)``) or CARLA built with
        its chase camera (``gym.make("CarlaScenario0-v0", chase_camera_size=(480, 352), ...)``).
    :param n_episodes: episodes to record.
    :param seed: seed of the first episode; episode k uses ``seed + k`` (as :func:`sb3_av.evaluation.evaluate`).
    :param title: first text line (episode and seed are appended).
    :param alerts: the alert line (see :func:`alerts_line`).
    :param view_px: side of the top-down view, or height of the chase camera view (pixels).
    :param view_ppm: the top-down view's scale (pixels per metre).
    :param hold_last_s: the last frame of each episode is repeated for this long (simulation seconds).
    :raises RecordError: the env is neither a Lite env nor a CARLA env with its chase camera.
    """
    view = _view_for(env, view_px, view_ppm)
    font = ImageFont.load_default(size=_FONT_PX)
    controller = isinstance(agent, PIDPurePursuit)
    for episode in range(n_episodes):
        episode_seed = None if seed is None else seed + episode
        obs, info = env.reset(seed=episode_seed)
        if controller:
            agent.reset()
        heading = f"{title}  episode {episode + 1}/{n_episodes}" + (
            f"  seed {episode_seed}" if episode_seed is not None else ""
        )
        step, done, frame = 0, False, None
        while not done:
            action = agent.act(obs, info) if controller else agent.predict(obs, deterministic=True)[0]
            obs, _, terminated, truncated, info = env.step(action)
            step += 1
            done = terminated or truncated
            ending = _ending(info, truncated) if done else ""
            overlay = StepOverlay(
                heading, step, info["sim_time_s"], info["speed_ms"], np.asarray(action), info["reward_terms"], alerts, ending
            )
            frame = compose_frame(view.render(), obs["image"], overlay, font)
            yield frame
        assert frame is not None  # an episode has at least one step
        dt = float(info["sim_time_s"]) / step
        for _ in range(round(hold_last_s / dt) if dt > 0 else 0):
            yield frame


def _ending(info: dict[str, Any], truncated: bool) -> str:
    if info.get("is_success"):
        outcome = "success: route completed"
    elif truncated and info.get("termination") in (None, "time_limit"):
        outcome = "time limit"
    else:
        outcome = f"ended: {info.get('termination')}"
    return f"{outcome} (route {100 * float(info['route_completion']):.0f}%, {float(info['distance_m']):.0f} m)"


def write_video(
    frames: Iterator[np.ndarray],
    mp4_path: Path | None,
    gif_path: Path | None,
    fps: float,
    gif_every: int = 2,
    gif_scale: float = 0.5,
) -> int:
    """Encode frames to an MP4 (H.264) and/or a GIF, streaming (frames are not kept in memory for the MP4).

    :param frames: RGB frames of one size.
    :param mp4_path: where to write the MP4 (None: none).
    :param gif_path: where to write the GIF (None: none).
    :param fps: frames per second of the MP4 (the env's control rate for real time).
    :param gif_every: keep every n-th frame in the GIF (its rate is ``fps / gif_every``).
    :param gif_scale: size of the GIF relative to the MP4.
    :return: the number of frames.
    """
    import imageio.v2 as imageio

    if mp4_path is None and gif_path is None:
        raise RecordError("nothing to write: give an MP4 path, a GIF path or both")
    writer = (
        imageio.get_writer(mp4_path, fps=fps, codec="libx264", quality=7, macro_block_size=_MACRO_BLOCK) if mp4_path else None
    )
    gif_frames: list[Any] = []
    count = 0
    try:
        for count, frame in enumerate(frames, start=1):
            if writer is not None:
                writer.append_data(frame)
            if gif_path is not None and (count - 1) % gif_every == 0:
                image = Image.fromarray(frame)
                size = (round(image.width * gif_scale), round(image.height * gif_scale))
                gif_frames.append(np.asarray(image.resize(size, Image.Resampling.BILINEAR)))
    finally:
        if writer is not None:
            writer.close()
    if gif_path is not None and gif_frames:
        imageio.mimsave(gif_path, gif_frames, duration=1000.0 * gif_every / fps, loop=0)
    return count


# ---------------------------------------------------------------------------------------------- command line
def read_alerts(log_dir: Path) -> list[Alert]:
    """The gradient-norm alerts in the TensorBoard events under ``log_dir`` (a run's or its ``-tb`` folder).

    :return: every ``alerts/gradient_explosion_{warning,critical}`` event, sorted by step (none: an empty list).
    """
    from sb3_av.log_check import find_event_dirs, load_scalars

    alerts = []
    for event_dir in find_event_dirs(log_dir):
        scalars = load_scalars(event_dir)
        for level in ("warning", "critical"):
            alerts += [
                Alert(int(step), level, float(norm)) for step, norm in scalars.get(f"alerts/gradient_explosion_{level}", [])
            ]
    return sorted(alerts, key=lambda alert: alert.step)


def record_target(
    model: Any,
    target: Any,
    env_id: str,
    out: Path,
    n_episodes: int,
    seed: int,
    log_dir: Path | None = None,
    gif: tuple[int, float] | None = (2, 0.5),
    view_px: int = 352,
) -> list[Path]:
    """Record ``n_episodes`` of a model (or the baseline when ``model`` is None) on ``env_id`` to ``out`` (MP4) and,
    with ``gif`` = (keep every n-th frame, scale), a GIF of the same name beside it.

    :param model: the loaded model, or None for the PID + pure-pursuit baseline.
    :param target: the :class:`sb3_av.zoo.enjoy.Target` it came from (env kwargs, run folder).
    :param log_dir: where the run's TensorBoard events are (default: the run folder), for the alert line.
    :return: the files written.
    :raises RecordError: the output is not an ``.mp4`` path, or the env is not a driving env.
    """
    from sb3_av.zoo.enjoy import make_env_for

    if out.suffix.lower() != ".mp4":
        raise RecordError(f"the video path must end in .mp4 (a .gif is written beside it), got {out}")
    if _is_carla(env_id) and "chase_camera_size" not in target.env_kwargs:  # the view: a chase camera, view_px high
        chase = (_round_up(round(view_px * 4 / 3), _MACRO_BLOCK), view_px)
        target = dataclasses.replace(target, env_kwargs={**target.env_kwargs, "chase_camera_size": chase})
    out.parent.mkdir(parents=True, exist_ok=True)
    events = log_dir or target.run_dir
    alerts = alerts_line(read_alerts(events), int(model.num_timesteps)) if model is not None and events else ""
    who = f"{target.algo} {target.model_path}" if model is not None else "PID + pure-pursuit baseline"
    env = make_env_for(env_id, model, target)
    try:
        agent = model if model is not None else PIDPurePursuit.from_env(env)
        driving_env = env.unwrapped
        assert isinstance(driving_env, DrivingEnv)  # every id make_env_for accepts is a driving env
        config = driving_env.config  # real time: one frame per control period
        fps = 1.0 / (config.dt * config.action_repeat)
        frames = record_episodes(agent, env, n_episodes, seed, title=f"{env_id}  {who}", alerts=alerts, view_px=view_px)
        gif_path = out.with_suffix(".gif") if gif else None
        gif_every, gif_scale = gif or (1, 1.0)
        count = write_video(frames, out, gif_path, fps=fps, gif_every=gif_every, gif_scale=gif_scale)
    finally:
        env.close()
    written = [out] + ([gif_path] if gif_path is not None else [])
    print(f"Recorded {n_episodes} episode(s) of {who} on {env_id}: {count} frames -> {', '.join(map(str, written))}")
    return written


def _is_carla(env_id: str) -> bool:
    """Whether ``env_id`` is registered as a CARLA driving env."""
    from sb3_av.envs import ENTRY_POINTS

    try:
        return gym.spec(env_id).entry_point == ENTRY_POINTS["carla"]
    except gym.error.Error:
        return False


def add_record_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sb3-av record``: what to run (as ``sb3-av evaluate``), where to write, how many episodes."""
    from sb3_av.zoo.enjoy import add_target_arguments

    add_target_arguments(parser)
    parser.add_argument("-n", "--n-episodes", type=int, default=1, help="episodes to record (default: 1)")
    parser.add_argument("-o", "--out", type=Path, help="the MP4 to write (default: videos/<env id>_<run or baseline>.mp4)")
    parser.add_argument("--no-gif", action="store_true", help="write only the MP4 (default: also a GIF beside it)")
    parser.add_argument("--gif-every", type=int, default=2, help="keep every n-th frame in the GIF (default: 2)")
    parser.add_argument("--gif-scale", type=float, default=0.5, help="GIF size relative to the MP4 (default: 0.5)")
    parser.add_argument(
        "--tb-log", type=Path, help="the run's TensorBoard folder, for the alert line (default: the run folder)"
    )
    parser.add_argument(
        "--view-px",
        type=int,
        default=352,
        help="side of the top-down view (Lite), height of the chase camera view (CARLA), in pixels (default: 352)",
    )


def run_record_command(args: argparse.Namespace) -> int:
    """``sb3-av record``: record evaluation episodes; 0, or 2 with one line on stderr for any failure."""
    from sb3_av.zoo.enjoy import run_user_command

    return run_user_command(_run_record, args, default_prog="sb3-av record")


def _run_record(args: argparse.Namespace) -> int:
    from sb3_av.compute import set_torch_threads
    from sb3_av.zoo.enjoy import load_model, resolve_target

    if args.n_episodes < 1:
        raise ValueError(f"-n must be >= 1, got {args.n_episodes}")
    if args.view_px < 64:
        raise ValueError(f"--view-px must be >= 64, got {args.view_px}")
    if args.gif_every < 1 or not 0.05 <= args.gif_scale <= 1.0:
        raise ValueError(f"--gif-every must be >= 1 and --gif-scale in [0.05, 1], got {args.gif_every} and {args.gif_scale}")
    target = resolve_target(args)
    if args.tb_log is not None and not args.tb_log.is_dir():
        raise FileNotFoundError(f"--tb-log {args.tb_log} is not a folder")
    set_torch_threads()
    model = load_model(target, args.device)
    for env_id in target.env_ids:
        name = target.run_dir.name if target.run_dir else (target.model_path.stem if target.model_path else "baseline")
        out = args.out or Path("videos") / f"{env_id}_{name}.mp4"
        if args.out is not None and len(target.env_ids) > 1:
            out = args.out.with_name(f"{args.out.stem}_{env_id}{args.out.suffix}")
        gif = None if args.no_gif else (args.gif_every, args.gif_scale)
        record_target(model, target, env_id, out, args.n_episodes, args.seed, args.tb_log, gif, args.view_px)
    return 0
