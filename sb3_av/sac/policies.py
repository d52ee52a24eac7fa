"""SAC policies of sb3-av: SB3's, with sb3-av's extractor by default on the driving observation space."""

from __future__ import annotations

from typing import Any

from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.sac.policies import CnnPolicy, MlpPolicy, SACPolicy
from stable_baselines3.sac.policies import MultiInputPolicy as _SB3MultiInputPolicy

from sb3_av.common.policies import multi_input_defaults

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy", "SACPolicy"]


class MultiInputPolicy(_SB3MultiInputPolicy):
    """SB3's SAC ``MultiInputPolicy``, with :class:`~sb3_av.torch_layers.MultiInputExtractor` on the driving env.

    Left unset, ``features_extractor_class`` is the driving extractor where the observation space is the driving
    contract (:func:`sb3_av.common.policies.is_driving_observation_space`) and SB3's ``CombinedExtractor`` on any
    other Dict space; an explicit one always wins. ``net_arch`` defaults to ``[256, 256]`` either way (SB3's SAC
    default). Parameters as :class:`stable_baselines3.sac.policies.MultiInputPolicy`, after ``lr_schedule`` by
    keyword.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        *,
        features_extractor_class: type[BaseFeaturesExtractor] | None = None,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        extractor_class, net_arch = multi_input_defaults(observation_space, features_extractor_class, net_arch)
        super().__init__(
            observation_space, action_space, lr_schedule, net_arch=net_arch, features_extractor_class=extractor_class, **kwargs
        )
