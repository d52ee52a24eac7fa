"""What ``"MultiInputPolicy"`` means in sb3-av: SB3's policy, except on the driving observation space.

The Clipped algorithms are drop-ins for SB3's, so their ``"MultiInputPolicy"`` alias keeps SB3's meaning (SB3's
:class:`~stable_baselines3.common.torch_layers.CombinedExtractor` and the algorithm's SB3 default ``net_arch``) on
every Dict space except the driving contract, where it picks sb3-av's
:class:`~sb3_av.torch_layers.MultiInputExtractor` and ``net_arch=[256, 256]``. An explicit
``features_extractor_class`` always wins: the driving extractor is one keyword away on any space that has its
keys, SB3's ``CombinedExtractor`` one keyword away on the driving env.
"""

from __future__ import annotations

from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor

from sb3_av.torch_layers import MultiInputExtractor

__all__ = ["DRIVING_KEYS", "DRIVING_NET_ARCH", "is_driving_observation_space", "multi_input_defaults"]

#: The keys of the driving observation (see the env contract): a stacked image and a vector of ego/route features.
DRIVING_KEYS = frozenset({"image", "vector"})

#: The default actor and critic heads on the driving extractor's features (SB3's choice for CNN features).
DRIVING_NET_ARCH = [256, 256]

NetArch = list[int] | dict[str, list[int]] | None


def is_driving_observation_space(observation_space: spaces.Space) -> bool:
    """Whether a space is the driving contract, the one space where ``"MultiInputPolicy"`` means sb3-av's extractor.

    :param observation_space: the algorithm's observation space (after SB3's wrappers, so images are channel-first).
    :return: True for a Dict space with exactly the keys ``image`` (a ``(C, H, W)`` uint8 image Box, as SB3's
        ``is_image_space`` accepts it) and ``vector`` (a 1-D Box). Exactly these two: the driving extractor reads
        only them, so a space with a further key (a goal, a second camera) keeps SB3's ``CombinedExtractor``,
        which reads every key.
    """
    if not isinstance(observation_space, spaces.Dict) or set(observation_space.spaces) != DRIVING_KEYS:
        return False
    image, vector = observation_space.spaces["image"], observation_space.spaces["vector"]
    return (
        is_image_space(image, check_channels=False)
        and len(image.shape or ()) == 3
        and isinstance(vector, spaces.Box)
        and len(vector.shape) == 1
    )


def multi_input_defaults(
    observation_space: spaces.Space,
    features_extractor_class: type[BaseFeaturesExtractor] | None,
    net_arch: NetArch,
) -> tuple[type[BaseFeaturesExtractor], NetArch]:
    """The extractor and heads of a ``MultiInputPolicy`` whose caller may have left them unset (None).

    :param observation_space: the policy's observation space.
    :param features_extractor_class: the caller's choice, or None for the default of this space:
        :class:`~sb3_av.torch_layers.MultiInputExtractor` on the driving contract
        (:func:`is_driving_observation_space`), SB3's ``CombinedExtractor`` on any other space.
    :param net_arch: the caller's choice, or None: :data:`DRIVING_NET_ARCH` with the driving extractor (or a
        subclass), else None (the SB3 policy's own default: ``[400, 300]`` for TD3/DDPG, ``[256, 256]`` for SAC/TQC).
    :return: ``(features_extractor_class, net_arch)`` to pass on to SB3's policy.
    """
    if features_extractor_class is None:
        driving = is_driving_observation_space(observation_space)
        features_extractor_class = MultiInputExtractor if driving else CombinedExtractor
    if net_arch is None and issubclass(features_extractor_class, MultiInputExtractor):
        net_arch = list(DRIVING_NET_ARCH)
    return features_extractor_class, net_arch
