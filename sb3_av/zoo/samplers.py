"""Optuna samplers of the tuned algorithms: ``sample_<algo>_params(trial, clip_groups) -> dict`` in :data:`SAMPLERS`.

Each sampler suggests flat parameters, then :func:`convert_params` turns them into hyperparameters (plain data,
like the YAML). The same converter reads a finished trial back (``--trial-id``). Unlike rl-zoo's samplers, these
return only the keys they tune: ``policy_kwargs`` and ``max_grad_norms`` hold just the tuned entries, and the
trainer merges them *into* the YAML's (rl-zoo replaces the YAML's ``policy_kwargs`` wholesale: its issue #431).

The clip norms of ``clip_groups`` (default: the two CNN groups; the trainer passes
:func:`tunable_clip_groups`, which leaves out the groups the policy does not have) are tuned on a log scale; the
other groups keep the YAML's values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna

from sb3_av.grad_clip import GROUP_NAMES

__all__ = [
    "CLIP_GROUPS",
    "NET_ARCHS",
    "SAMPLERS",
    "SHARED_ENCODER_GROUP",
    "convert_params",
    "sample_ddpg_params",
    "sample_sac_params",
    "sample_td3_params",
    "sample_tqc_params",
    "tunable_clip_groups",
]

#: ``net_arch`` choices (hidden layers of the actor and the critic heads, after the features extractor).
NET_ARCHS: dict[str, list[int]] = {"small": [64, 64], "medium": [256, 256], "big": [400, 300]}

#: Range of the tuned clip norms (global L2 norm of a group's gradient).
CLIP_NORM_RANGE: tuple[float, float] = (0.1, 100.0)


#: Groups whose clip norm is tuned by default (the MLP groups keep the YAML's values).
CLIP_GROUPS: tuple[str, ...] = ("actor_cnn", "critic_cnn")

#: ``--algo`` -> the group of the one features extractor with ``share_features_extractor=True``: the group of the
#: network whose optimizer trains it (:func:`sb3_av.clipping.network_groups`). sb3-av's TD3/DDPG policy
#: (:mod:`sb3_av.td3.policies`) trains the shared encoder with the critic's loss only (DrQ-v2); SB3's SAC and TQC
#: policies put it in the actor's optimizer and leave it out of the critic's.
SHARED_ENCODER_GROUP: dict[str, str] = {"td3": "critic_cnn", "ddpg": "critic_cnn", "sac": "actor_cnn", "tqc": "actor_cnn"}


def tunable_clip_groups(algo: str, policy: str | None, share_features_extractor: bool) -> tuple[str, ...]:
    """The CNN groups whose clip norm can be tuned: those that have parameters in the algorithm's policy.

    A norm sampled for a group without parameters makes the model's constructor raise ``ValueError``, which the
    tuner counts as a pruned trial: every trial would be pruned.

    :param algo: ``--algo`` name (a key of :data:`SHARED_ENCODER_GROUP`).
    :param policy: policy name of the config; ``MlpPolicy`` has no CNN (its features extractor has no parameters).
    :param share_features_extractor: the policy's ``share_features_extractor``.
    :return: a sub-tuple of :data:`CLIP_GROUPS`.
    :raises KeyError: for an unknown ``algo``.
    """
    if algo not in SHARED_ENCODER_GROUP:
        raise KeyError(f"no tuning rule for algorithm {algo!r}; known: {sorted(SHARED_ENCODER_GROUP)}")
    if policy == "MlpPolicy":
        return ()
    if share_features_extractor:
        return (SHARED_ENCODER_GROUP[algo],)
    return CLIP_GROUPS


def _suggest_common(trial: optuna.Trial, clip_groups: Sequence[str]) -> None:
    trial.suggest_float("one_minus_gamma", 0.001, 0.05, log=True)
    trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True)
    trial.suggest_int("batch_size_pow", 5, 8)
    trial.suggest_float("tau", 0.001, 0.05, log=True)
    trial.suggest_categorical("train_freq", [1, 2, 4, 8])
    trial.suggest_categorical("net_arch", list(NET_ARCHS))
    for group in clip_groups:
        trial.suggest_float(f"{group}_max_grad_norm", *CLIP_NORM_RANGE, log=True)


def sample_td3_params(trial: optuna.Trial, clip_groups: Sequence[str] = CLIP_GROUPS) -> dict[str, Any]:
    """TD3 (and DDPG): discount, learning rate, batch size, Polyak tau, train frequency, exploration noise,
    network size and the clip norms of ``actor_cnn`` and ``critic_cnn``."""
    _suggest_common(trial, clip_groups)
    trial.suggest_categorical("noise_type", ["normal", "ornstein-uhlenbeck"])
    trial.suggest_float("noise_std", 0.05, 0.5)
    return convert_params(trial.params)


def sample_ddpg_params(trial: optuna.Trial, clip_groups: Sequence[str] = CLIP_GROUPS) -> dict[str, Any]:
    """DDPG: the same search space as TD3."""
    return sample_td3_params(trial, clip_groups)


def sample_sac_params(trial: optuna.Trial, clip_groups: Sequence[str] = CLIP_GROUPS) -> dict[str, Any]:
    """SAC: as TD3 without the exploration noise (SAC's policy is stochastic)."""
    _suggest_common(trial, clip_groups)
    return convert_params(trial.params)


def sample_tqc_params(trial: optuna.Trial, clip_groups: Sequence[str] = CLIP_GROUPS) -> dict[str, Any]:
    """TQC: SAC's space plus the number of quantiles and the quantiles dropped per critic."""
    _suggest_common(trial, clip_groups)
    n_quantiles = trial.suggest_int("n_quantiles", 5, 50)
    trial.suggest_int("top_quantiles_to_drop_per_net", 0, min(n_quantiles - 1, 5))
    return convert_params(trial.params)


def convert_params(params: dict[str, Any]) -> dict[str, Any]:
    """Flat trial parameters -> hyperparameters (plain data, keys as in the YAML).

    :param params: ``trial.params`` of a trial of one of the samplers.
    :return: e.g. ``{"gamma": 0.99, "batch_size": 64, "policy_kwargs": {"net_arch": [64, 64]},
        "max_grad_norms": {"actor_cnn": 1.0, "critic_cnn": 10.0}, ...}``.
    """
    p = dict(params)
    hyperparams: dict[str, Any] = {}
    if "one_minus_gamma" in p:
        hyperparams["gamma"] = 1.0 - p.pop("one_minus_gamma")
    if "batch_size_pow" in p:
        hyperparams["batch_size"] = 2 ** p.pop("batch_size_pow")
    if "train_freq" in p:
        hyperparams["train_freq"] = p["train_freq"]
        hyperparams["gradient_steps"] = p.pop("train_freq")
    policy_kwargs: dict[str, Any] = {}
    if "net_arch" in p:
        policy_kwargs["net_arch"] = list(NET_ARCHS[p.pop("net_arch")])
    if "n_quantiles" in p:
        policy_kwargs["n_quantiles"] = p.pop("n_quantiles")
    if policy_kwargs:
        hyperparams["policy_kwargs"] = policy_kwargs
    norms = {group: p.pop(f"{group}_max_grad_norm") for group in GROUP_NAMES if f"{group}_max_grad_norm" in p}
    if norms:
        hyperparams["max_grad_norms"] = norms
    hyperparams.update(p)  # learning_rate, tau, noise_type, noise_std, top_quantiles_to_drop_per_net
    return hyperparams


#: ``--algo`` name -> sampler.
SAMPLERS: dict[str, Callable[..., dict[str, Any]]] = {
    "td3": sample_td3_params,
    "ddpg": sample_ddpg_params,
    "sac": sample_sac_params,
    "tqc": sample_tqc_params,
}
