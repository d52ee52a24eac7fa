"""The hyperparameter YAML of the trainer: loaded as data, checked key by key, then turned into objects.

rl-zoo's format is kept (one file per algorithm, keyed by env id, with a ``default:`` block), but where rl-zoo
``eval``\\s strings (``policy_kwargs: "dict(net_arch=[64])"``, ``normalize: "dict(...)"``, ``-params`` values)
or imports module paths built from strings (``callback``, ``env_wrapper``, ``policy``), this module parses
data (YAML mappings, or a Python literal / ``dict(...)`` call read with :mod:`ast`) and maps names to classes
through explicit dicts. Every mistake raises :class:`ConfigError` naming the file, the block and the key.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from torch import nn

from sb3_av._checks import is_finite_number, positive_number
from sb3_av.envs.wrappers import (
    ClearancePenalty,
    HeadwayPenalty,
    JerkPenalty,
    OverspeedPenalty,
    ScaleReward,
    ScenarioCycle,
)
from sb3_av.grad_clip import GROUP_NAMES, validate_max_grad_norms
from sb3_av.teacher import CLONE_TARGETS, clone_target

__all__ = [
    "ACTIVATIONS",
    "CALLBACKS",
    "CONFIG_DIR",
    "ENV_WRAPPERS",
    "GRAD_GROUPS",
    "NOISE_TYPES",
    "REPLAY_BUFFERS",
    "TEACHERS",
    "ZOO_KEYS",
    "ConfigError",
    "default_config_file",
    "load_config_file",
    "parse_override_value",
    "resolve_callbacks",
    "resolve_env_wrapper",
    "resolve_policy_kwargs",
    "resolve_replay_buffer_class",
    "select_env_block",
    "validate_hyperparams",
]


class ConfigError(ValueError):
    """A hyperparameter file, block, key or value the user wrote is wrong; the message says which and why."""


#: The hyperparameter files shipped inside the package (``sb3_av/configs/<algo>.yml``, package data of the wheel).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def default_config_file(algo: str) -> Path:
    """The shipped hyperparameter file of an ``--algo`` name (``-conf`` / ``--conf-file`` picks another).

    :param algo: td3, ddpg, sac or tqc.
    :raises ConfigError: when the package has no file for it.
    """
    path = CONFIG_DIR / f"{algo}.yml"
    if not path.is_file():
        shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yml"))
        raise ConfigError(f"no hyperparameter file for {algo!r} in {CONFIG_DIR} (shipped: {shipped}); pass -conf FILE.yml")
    return path


#: Keys rl-zoo reads itself (everything else must be a constructor argument of the algorithm).
ZOO_KEYS: dict[str, str] = {
    "n_timesteps": "total environment steps of the run (a positive integer; -n overrides it)",
    "policy": "policy name, e.g. MultiInputPolicy",
    "n_envs": "number of parallel training envs",
    "normalize": "VecNormalize: true/false or a mapping of VecNormalize arguments",
    "env_kwargs": "keyword arguments of the env constructor (--env-kwargs overrides them)",
    "env_wrapper": "gymnasium wrapper name(s) from sb3_av.zoo.config.ENV_WRAPPERS",
    "callback": "callback name(s) from sb3_av.zoo.config.CALLBACKS, optionally {Name: {kwargs}}",
    "noise_type": "exploration noise: normal, ornstein-uhlenbeck or null",
    "noise_std": "standard deviation of the exploration noise (action units)",
    "teacher": "a controller whose actions the actor also learns to clone (TD3/DDPG, sb3_av.teacher): "
    "{controller: pid, weight: number > 0, q_filter: true/false, clone: action/head}",
}


def _pid_from_env(env: gym.Env) -> Any:
    from sb3_av.baselines import PIDPurePursuit

    return PIDPurePursuit.from_env(env)


#: Controller names usable in a config's ``teacher:`` entry -> a function building it for a training env.
TEACHERS: dict[str, Callable[[gym.Env], Any]] = {"pid": _pid_from_env}
_TEACHER_KEYS = frozenset({"controller", "weight", "q_filter", "clone"})


#: Constructor arguments the trainer sets itself; a config must not set them.
_MANAGED_KEYS = frozenset({"self", "env", "tensorboard_log", "seed", "verbose", "device", "_init_setup_model", "action_noise"})

#: The gradient groups of ``max_grad_norms`` (:data:`sb3_av.grad_clip.GROUP_NAMES`).
GRAD_GROUPS: tuple[str, ...] = GROUP_NAMES
NOISE_TYPES: tuple[str | None, ...] = ("normal", "ornstein-uhlenbeck", None)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

#: Wrapper names usable in a config's ``env_wrapper:`` entry -> class.
ENV_WRAPPERS: dict[str, type[gym.Wrapper]] = {
    "ClearancePenalty": ClearancePenalty,
    "ClipAction": gym.wrappers.ClipAction,
    "HeadwayPenalty": HeadwayPenalty,
    "JerkPenalty": JerkPenalty,
    "OverspeedPenalty": OverspeedPenalty,
    "ScaleReward": ScaleReward,
    "ScenarioCycle": ScenarioCycle,
}

#: rl-zoo wrappers a config may name that do not work with the driving envs -> why, and what to do instead.
_REJECTED_WRAPPERS: dict[str, str] = {
    "TimeFeatureWrapper": "it needs a Box observation and the driving envs' is a Dict (image + vector); "
    "the vector part already carries the episode state",
    "TimeLimit": "the driving envs truncate episodes themselves; set env_kwargs max_steps instead",
}

_NORMALIZE_KEYS = frozenset({"norm_obs", "norm_reward", "clip_obs", "clip_reward", "gamma", "epsilon", "norm_obs_keys"})


def _frame_stack_buffer() -> type:
    from sb3_av.buffers import FrameStackDictReplayBuffer

    return FrameStackDictReplayBuffer


#: Replay buffer names -> a function returning the class (the frame-stack buffer is imported on demand).
REPLAY_BUFFERS: dict[str, Callable[[], type]] = {
    "ReplayBuffer": lambda: ReplayBuffer,
    "DictReplayBuffer": lambda: DictReplayBuffer,
    "FrameStackDictReplayBuffer": _frame_stack_buffer,
}


def _grad_monitor() -> type:
    from sb3_av.callbacks.grad_monitor import GradientMonitorCallback

    return GradientMonitorCallback


def _driving_metrics() -> type:
    from sb3_av.callbacks.driving_metrics import DrivingMetricsCallback

    return DrivingMetricsCallback


#: Callback names usable in a config's ``callback:`` entry -> a function returning the class.
CALLBACKS: dict[str, Callable[[], type]] = {
    "GradientMonitorCallback": _grad_monitor,
    "DrivingMetricsCallback": _driving_metrics,
}


# ----------------------------------------------------------------------------------------------- parsing data


def _literal(node: ast.AST) -> Any:
    """Evaluate a Python literal, also accepting ``dict(key=literal, ...)`` calls (rl-zoo's habit), nothing else."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        if any(kw.arg is None for kw in node.keywords):
            raise ValueError("dict(**...) is not data")
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None}
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    return ast.literal_eval(node)


def parse_override_value(key: str, text: str) -> Any:
    """Parse the value of a ``key:value`` command-line override as data, never as code.

    Accepts Python literals (``0.01``, ``1e-3``, ``[64, 64]``, ``True``, ``None``, ``'a'``), ``dict(a=1)`` calls
    and YAML (``{net_arch: [16]}``, ``[1, episode]``, bare words such as ``MultiInputPolicy``).

    :param key: the key, only for the error message.
    :param text: the text after the first colon.
    :return: the parsed value.
    :raises ConfigError: when the text is neither a literal nor valid YAML.
    """
    try:
        return _literal(ast.parse(text.strip(), mode="eval").body)
    except (ValueError, SyntaxError, TypeError):
        pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"value of '{key}' is neither a Python literal nor YAML: {text!r} ({reason})") from None
    glued = _glued_key(value)
    if glued is not None:
        raise ConfigError(
            f"value of '{key}': {glued!r} reads as a key without a value; in YAML write 'a: 1' (a space after ':')"
        )
    return value


def _glued_key(value: Any) -> str | None:
    """A ``{a:1}`` YAML mapping gives the key ``"a:1"`` with value None: almost surely a typo."""
    if isinstance(value, dict):
        for k, v in value.items():
            if v is None and isinstance(k, str) and ":" in k:
                return k
            found = _glued_key(v)
            if found is not None:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _glued_key(v)
            if found is not None:
                return found
    return None


def load_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a hyperparameter YAML file (``yaml.safe_load``): a mapping of env id (or ``default``) -> mapping.

    :param path: the ``.yml`` / ``.yaml`` file.
    :return: the file's content.
    :raises ConfigError: for a missing file, another extension, broken YAML or a wrong structure.
    """
    path = Path(path)
    if path.suffix not in (".yml", ".yaml"):
        raise ConfigError(f"{path}: hyperparameters must be a .yml/.yaml file (Python files and packages are not executed)")
    if not path.is_file():
        raise ConfigError(f"{path}: hyperparameter file not found")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    if not isinstance(content, dict) or not content:
        raise ConfigError(f"{path}: expected a mapping of env id -> hyperparameters, got {type(content).__name__}")
    for block, value in content.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{path} [{block}]: expected a mapping of hyperparameters, got {value!r}")
    return content


def select_env_block(content: Mapping[str, Any], env_id: str, where: str) -> tuple[str, dict[str, Any]]:
    """Pick the block of ``env_id``, else ``default``.

    :return: (block name, a copy of the block).
    :raises ConfigError: when neither exists.
    """
    if env_id in content:
        return env_id, dict(content[env_id])
    if "default" in content:
        return "default", dict(content["default"])
    raise ConfigError(f"{where}: no block for {env_id} and no 'default' block; blocks are {sorted(content)}")


# ------------------------------------------------------------------------------------------------- validation


def _positive_int(value: Any, *, allow: tuple[int, ...] = (), minimum: int = 1) -> int:
    if is_finite_number(value) and float(value).is_integer() and (int(value) >= minimum or int(value) in allow):
        return int(value)
    extra = f" (or {', '.join(map(str, allow))})" if allow else ""
    raise ValueError(f"expected an integer >= {minimum}{extra}, got {value!r}")


def _unit_interval(value: Any) -> float:
    if is_finite_number(value) and 0 < value <= 1:
        return float(value)
    raise ValueError(f"expected a number in (0, 1], got {value!r}")


def _non_negative(value: Any) -> float:
    if is_finite_number(value) and value >= 0:
        return float(value)
    raise ValueError(f"expected a number >= 0, got {value!r}")


def checked_learning_rate(value: Any) -> float | str:
    """A learning rate setting as rl-zoo takes it: a number > 0 or ``"lin_<initial value > 0>"``.

    :raises ValueError: anything else.
    """
    if is_finite_number(value) and value > 0:
        return float(value)
    if isinstance(value, str) and value.startswith("lin_"):
        try:
            if float(value[4:]) > 0:
                return value
        except ValueError:
            pass
    raise ValueError(f"expected a number > 0 or 'lin_<initial value>', got {value!r}")


def _train_freq(value: Any) -> int | list[Any]:
    if isinstance(value, list | tuple) and len(value) == 2 and value[1] in ("step", "episode"):
        return [_positive_int(value[0]), value[1]]
    if isinstance(value, list | tuple):
        raise ValueError(f"expected an integer or [integer, step|episode], got {value!r}")
    return _positive_int(value)


def _noise_type(value: Any) -> str | None:
    if value in NOISE_TYPES:
        return value
    raise ValueError(f"expected one of {list(NOISE_TYPES)}, got {value!r}")


def _max_grad_norms(value: Any) -> dict[str, float | None]:
    """The groups given, checked by :func:`sb3_av.grad_clip.validate_max_grad_norms` (the algorithms' own check)."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of group -> max norm or null, groups {list(GROUP_NAMES)}, got {value!r}")
    try:
        checked = validate_max_grad_norms(value)
    except ValueError as exc:
        raise ValueError(f"{exc} (null in YAML: measure only)") from None
    return {group: checked[group] for group in GROUP_NAMES if group in value}


def _normalize(value: Any) -> bool | dict[str, Any]:
    if isinstance(value, bool):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - _NORMALIZE_KEYS)
        if unknown:
            raise ValueError(f"unknown VecNormalize argument(s) {unknown}; valid: {sorted(_NORMALIZE_KEYS)}")
        return dict(value)
    raise ValueError(f"expected true/false or a mapping of VecNormalize arguments, got {value!r}")


def _teacher(value: Any) -> dict[str, Any]:
    """Check a ``teacher`` entry: a known controller, a weight > 0, ``q_filter`` true/false (default false), ``clone``
    one of :data:`sb3_av.teacher.CLONE_TARGETS` (default ``action``)."""
    entry = _mapping(value)
    unknown = sorted(set(entry) - _TEACHER_KEYS)
    if unknown:
        raise ValueError(f"unknown teacher argument(s) {unknown}; valid: {sorted(_TEACHER_KEYS)}")
    if entry.get("controller") not in TEACHERS:
        raise ValueError(f"teacher controller must be one of {sorted(TEACHERS)}, got {entry.get('controller')!r}")
    weight = positive_number("teacher weight", entry.get("weight"))
    q_filter = entry.get("q_filter", False)
    if not isinstance(q_filter, bool):
        raise ValueError(f"teacher q_filter must be true or false, got {q_filter!r}")
    clone = clone_target("teacher clone", entry.get("clone", CLONE_TARGETS[0]))
    return {"controller": entry["controller"], "weight": weight, "q_filter": q_filter, "clone": clone}


def _mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return dict(value)
    raise ValueError(f"expected a mapping (e.g. {{key: value}}), got {value!r}")


def _named_entries(value: Any, registry: Mapping[str, Any], what: str, rejected: Mapping[str, str] | None = None) -> list[Any]:
    """Check a name, a ``{name: kwargs}`` or a list of them against an explicit registry.

    :param rejected: names refused with a reason (known to rl-zoo users, but not usable here).
    """
    if value is None:
        return []
    entries = value if isinstance(value, list) else [value]
    for entry in entries:
        name, kwargs = _split_entry(entry)
        if rejected and name in rejected:
            raise ValueError(f"{what} {name!r} is not supported: {rejected[name]}")
        if name not in registry:
            raise ValueError(f"unknown {what} {name!r}; known: {sorted(registry)}")
        if not isinstance(kwargs, dict):
            raise ValueError(f"arguments of {name} must be a mapping, got {kwargs!r}")
    return list(entries)


def _env_wrappers(value: Any) -> list[Any]:
    """Check ``env_wrapper`` entries: known names, and arguments that the wrapper's constructor accepts."""
    entries = _named_entries(value, ENV_WRAPPERS, "env wrapper", _REJECTED_WRAPPERS)
    for name, kwargs in map(_split_entry, entries):
        try:
            inspect.signature(ENV_WRAPPERS[name]).bind(None, **kwargs)
        except TypeError as exc:
            raise ValueError(f"env wrapper {name}: {exc}") from None
    return entries


def _split_entry(entry: Any) -> tuple[str, Any]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        name, kwargs = next(iter(entry.items()))
        return str(name), {} if kwargs is None else kwargs
    raise ValueError(f"expected a name or {{Name: {{arguments}}}}, got {entry!r}")


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "n_timesteps": _positive_int,
    "n_envs": _positive_int,
    "normalize": _normalize,
    "env_kwargs": _mapping,
    "noise_type": _noise_type,
    "noise_std": _non_negative,
    "learning_rate": checked_learning_rate,
    "buffer_size": _positive_int,
    "batch_size": _positive_int,
    "learning_starts": lambda v: _positive_int(v, minimum=0),
    "gradient_steps": lambda v: _positive_int(v, allow=(-1,)),
    "policy_delay": _positive_int,
    "gamma": _unit_interval,
    "tau": _unit_interval,
    "train_freq": _train_freq,
    "target_policy_noise": _non_negative,
    "target_noise_clip": _non_negative,
    "max_grad_norms": _max_grad_norms,
    "policy_kwargs": _mapping,
    "replay_buffer_kwargs": _mapping,
    "replay_buffer_class": lambda v: _named_entries(v, REPLAY_BUFFERS, "replay buffer")[0],
    "env_wrapper": lambda v: _env_wrappers(v),
    "callback": lambda v: _named_entries(v, CALLBACKS, "callback"),
    "teacher": _teacher,
}


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Named ``__init__`` parameters of a class, following ``**kwargs`` up the MRO (subclasses that forward)."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        for p in params:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self":
                found.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return found


def _constructor_parameters(algo_cls: type[BaseAlgorithm]) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in _init_parameters(algo_cls).items() if name not in _MANAGED_KEYS}


def _check_by_default(key: str, value: Any, default: Any) -> Any:
    """Values without a dedicated check must at least have the type of the constructor's default."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
    elif isinstance(default, int) and default is not None:
        if not (is_finite_number(value) and float(value).is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    elif isinstance(default, float) and not is_finite_number(value) and not isinstance(value, str):
        raise ValueError(f"expected a number, got {value!r}")
    return value


def validate_hyperparams(
    hyperparams: Mapping[str, Any], algo_cls: type[BaseAlgorithm], where: str, partial: bool = False
) -> dict[str, Any]:
    """Check every key and value of one block; return a normalised copy (still plain data, YAML-dumpable).

    Valid keys are :data:`ZOO_KEYS` plus the constructor arguments of ``algo_cls`` (except those the trainer
    sets: env, seed, device, verbose, tensorboard_log, action_noise).

    :param hyperparams: the block, after command-line overrides.
    :param algo_cls: the algorithm class the block is for.
    :param where: ``"sb3_av/configs/td3.yml [LiteScenario0-v0]"``, for messages.
    :param partial: the block is an override (``-params``, a sampler): ``policy``/``n_timesteps`` are not required.
    :return: the checked block.
    :raises ConfigError: naming the first wrong key.
    """
    params = _constructor_parameters(algo_cls)
    valid = set(ZOO_KEYS) | set(params)
    checked: dict[str, Any] = {}
    for key, value in hyperparams.items():
        if key not in valid:
            raise ConfigError(f"{where}: unknown key '{key}'; valid keys: {', '.join(sorted(valid))}")
        try:
            if key == "teacher" and not getattr(algo_cls, "_trains_with_teacher", False):
                raise ValueError(f"{algo_cls.__name__} has no teacher term (TD3 and DDPG have one)")
            if key == "policy":
                checked[key] = _check_policy(value, algo_cls)
            elif key == "policy_kwargs":
                checked[key] = _check_policy_kwargs(_mapping(value), algo_cls, hyperparams.get("policy"))
            elif key in _VALIDATORS:
                checked[key] = _VALIDATORS[key](value)
            else:
                default = params[key].default
                checked[key] = value if default is inspect.Parameter.empty else _check_by_default(key, value, default)
        except ValueError as exc:
            raise ConfigError(f"{where}: key '{key}': {exc}") from None
    for required in () if partial else ("policy", "n_timesteps"):
        if required not in checked:
            raise ConfigError(f"{where}: missing key '{required}' ({ZOO_KEYS[required]})")
    return checked


def _check_policy(value: Any, algo_cls: type[BaseAlgorithm]) -> str:
    aliases = sorted(getattr(algo_cls, "policy_aliases", {}))
    if not isinstance(value, str) or value not in aliases:
        raise ValueError(f"expected one of {aliases}, got {value!r}")
    return value


def _check_policy_kwargs(kwargs: dict[str, Any], algo_cls: type[BaseAlgorithm], policy: Any) -> dict[str, Any]:
    if "activation_fn" in kwargs and kwargs["activation_fn"] not in ACTIVATIONS:
        raise ValueError(f"activation_fn: expected one of {sorted(ACTIVATIONS)}, got {kwargs['activation_fn']!r}")
    if "net_arch" in kwargs:
        arch = kwargs["net_arch"]
        lists = list(arch.values()) if isinstance(arch, dict) else [arch]
        if not all(
            isinstance(lst, list) and all(is_finite_number(n) and n >= 1 and float(n).is_integer() for n in lst)
            for lst in lists
        ):
            raise ValueError(f"net_arch: expected a list of layer sizes or {{pi: [...], qf: [...]}}, got {arch!r}")
    for key in ("features_extractor_kwargs", "optimizer_kwargs"):
        if key in kwargs:
            _mapping(kwargs[key])
    policy_cls = getattr(algo_cls, "policy_aliases", {}).get(policy) if isinstance(policy, str) else None
    if policy_cls is not None:
        valid = set(_init_parameters(policy_cls)) - {"observation_space", "action_space", "lr_schedule"}
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise ValueError(f"unknown policy argument(s) {unknown}; valid: {sorted(valid)}")
    return kwargs


# ------------------------------------------------------------------------------------------ names -> objects


def resolve_policy_kwargs(policy_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Turn the data of ``policy_kwargs`` into constructor arguments (activation name -> ``nn.Module`` class)."""
    resolved = dict(policy_kwargs)
    if "activation_fn" in resolved:
        resolved["activation_fn"] = ACTIVATIONS[resolved["activation_fn"]]
    return resolved


def resolve_replay_buffer_class(name: str) -> type:
    """Replay buffer class of a name in :data:`REPLAY_BUFFERS`."""
    return REPLAY_BUFFERS[name]()


def resolve_env_wrapper(entries: list[Any]) -> Callable[[gym.Env], gym.Env] | None:
    """A function applying the configured wrappers in order (None when there are none)."""
    if not entries:
        return None
    wrappers = [(ENV_WRAPPERS[name], kwargs) for name, kwargs in map(_split_entry, entries)]

    def wrap(env: gym.Env) -> gym.Env:
        for wrapper_cls, kwargs in wrappers:
            env = wrapper_cls(env, **kwargs)
        return env

    return wrap


def resolve_callbacks(entries: list[Any], where: str) -> list[Any]:
    """Fresh callback instances for the configured ``callback:`` entries.

    :raises ConfigError: when a callback rejects its arguments.
    """
    callbacks = []
    for name, kwargs in map(_split_entry, entries):
        callback_cls = CALLBACKS[name]()
        try:
            inspect.signature(callback_cls).bind(**kwargs)
            callbacks.append(callback_cls(**kwargs))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: key 'callback': {name}: {exc}") from None
    return callbacks
