"""TD3 policies of sb3-av: SB3's TD3 policy with a critic-trained shared encoder, and the driving extractor by default
on the driving observation space (see :mod:`sb3_av.common.policies`).

Parameter groups (what ``max_grad_norms`` names) in each mode:

- ``share_features_extractor=False`` (SB3's default): ``actor_cnn`` = the actor's own extractor,
  ``actor_mlp`` = ``actor.mu``, ``critic_cnn`` = the critic's own extractor, ``critic_mlp`` = ``critic.q_networks``.
- ``share_features_extractor=True``: ``critic_cnn`` = the one shared encoder, ``actor_mlp`` = ``actor.mu``,
  ``critic_mlp`` = ``critic.q_networks``; there is no ``actor_cnn`` group (the actor reads detached features).

With ``share_features_extractor=True`` sb3-av does what the pixel-RL literature does (DrQ-v2, Yarats et al.
2021, "Mastering Visual Continuous Control"): one encoder, trained by the critic loss only; the actor sees
its output detached. SB3's own sharing trains the encoder from the actor loss only (the critic computes
features under ``no_grad``), so a critic-CNN clip would do nothing there; sb3-av's policies do not offer that
mode (``ClippedTD3`` still trains SB3's own policy classes, e.g. of a model saved by SB3, as SB3 does).
The targets keep a full copy of the encoder, shared by the actor and critic targets and updated once per
target update (SB3's shared mode updates it twice, an effective 2 * tau).

``action_smoothing`` (:class:`MultiInputPolicy`, driving observations only): the policy's action is
``(1 - beta) * actor output + beta * previous action``, the previous action read from the observation (the env
contract's ``vector`` holds it), so the policy stays a function of its observation (evaluated on the plain env) and
a jittery actor output moves the controls only by ``1 - beta`` of its jitter: a first-order low-pass filter on the
controls, inside the policy. The critic and the actor loss see the smoothed action (what the env executes).
``beta`` is one number for both controls or one per control (``[steer, throttle_brake]``): the longitudinal jerk
comes from the throttle_brake control alone, so it can be filtered harder than the steering.

The policy owns "encode once, then heads" for :meth:`sb3_av.td3.ClippedTD3.train` (:meth:`TD3Policy.heads`):
:class:`TD3Heads` is SB3's step (each network extracts its own features; also used for SB3's own TD3 policies),
:class:`SharedEncoderHeads` runs each batch through the shared encoder once and every head on its features.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.td3.policies import Actor
from stable_baselines3.td3.policies import TD3Policy as _SB3TD3Policy
from torch import nn

from sb3_av.common.policies import is_driving_observation_space, multi_input_defaults
from sb3_av.torch_layers import MultiInputExtractor

__all__ = [
    "ActorPass",
    "CnnPolicy",
    "EncodedBatch",
    "EncoderActor",
    "MlpPolicy",
    "MultiInputPolicy",
    "SharedEncoderHeads",
    "TD3Heads",
    "TD3Policy",
    "previous_action",
    "smoothing_betas",
]

#: Where the driving observation keeps the previous action ``[steer, throttle_brake]``: ``vector[3:5]`` (the env
#: contract's order: speed, lateral offset, heading error, previous steer, previous throttle/brake, route points).
PREVIOUS_ACTION_SLICE = slice(3, 5)


def previous_action(observations: PyTorchObs) -> th.Tensor:
    """The previous action ``(batch, 2)`` in [-1, 1] that a driving observation batch carries in its ``vector``."""
    assert isinstance(observations, dict), "action smoothing needs the driving env's Dict observation"
    return observations["vector"][:, PREVIOUS_ACTION_SLICE].float().clamp(-1.0, 1.0)


#: ``action_smoothing``: one ``beta`` for every action dimension, or one per dimension.
ActionSmoothing = float | tuple[float, ...]


def smoothing_betas(action_smoothing: ActionSmoothing) -> tuple[float, ...]:
    """The ``beta`` values of ``action_smoothing`` as a tuple (one value, or one per action dimension)."""
    if isinstance(action_smoothing, tuple | list):
        return tuple(float(b) for b in action_smoothing)
    return (float(action_smoothing),)


def _check_action_smoothing(action_smoothing: Any, action_space: spaces.Box) -> ActionSmoothing:
    """``action_smoothing`` validated: a number in [0, 1), or a list of such numbers, one per action dimension."""
    values = list(action_smoothing) if isinstance(action_smoothing, tuple | list) else [action_smoothing]
    valid = all(isinstance(b, int | float) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in values)
    n_actions = int(np.prod(action_space.shape))
    if not valid or (isinstance(action_smoothing, tuple | list) and len(values) != n_actions):
        raise ValueError(
            f"action_smoothing must be a number in [0, 1) or a list of {n_actions} such numbers "
            f"(one per action dimension), got {action_smoothing!r}"
        )
    return tuple(float(b) for b in values) if isinstance(action_smoothing, tuple | list) else float(action_smoothing)


class EncodedBatch(NamedTuple):
    """A batch of observations as the actor and critic heads read it (see :meth:`TD3Heads.encode`).

    :param observations: the batch (a tensor or a dict of tensors).
    :param features: with a shared encoder, its output ``(batch, features_dim)`` (computed once for every head);
        None with separate extractors, where each network extracts its own features from ``observations``.
    """

    observations: PyTorchObs
    features: th.Tensor | None


class ActorPass(NamedTuple):
    """One pass of the actor (and its first critic) over a batch, with gradient to the actor.

    :param head_actions: the actor head's output ``(batch, action_dim)`` before the policy's action smoothing (the
        actions themselves for an actor without smoothing).
    :param actions: the actions ``(batch, action_dim)`` the env would execute (smoothed where the policy smooths).
    :param q_values: the first critic's Q-values ``(batch, 1)`` of ``actions``.
    """

    head_actions: th.Tensor
    actions: th.Tensor
    q_values: th.Tensor


class TD3Heads:
    """Encode once, then heads: how ``ClippedTD3.train`` runs a TD3 policy's actor and critic on a batch.

    This base class is SB3's TD3 step: each network extracts its own features (:meth:`encode` does nothing), the
    actor loss recomputes them. It serves sb3-av's policies with separate extractors and SB3's own TD3 policies (a
    model saved by SB3, a custom SB3 policy class), in SB3's own sharing mode too. :class:`SharedEncoderHeads` is
    sb3-av's shared encoder.

    :param policy: the policy whose networks the heads run.
    """

    def __init__(self, policy: _SB3TD3Policy) -> None:
        self.policy = policy

    def encode(self, observations: PyTorchObs, target: bool = False) -> EncodedBatch:
        """Prepare a batch for the heads.

        :param observations: a sampled batch.
        :param target: for the target networks (the next observations).
        """
        return EncodedBatch(observations, None)

    def actions(self, batch: EncodedBatch, target: bool = False) -> th.Tensor:
        """The deterministic actions ``(batch, action_dim)`` in [-1, 1] of the actor (or the target actor)."""
        actor = self.policy.actor_target if target else self.policy.actor
        return actor(batch.observations)

    def q_values(self, batch: EncodedBatch, actions: th.Tensor, target: bool = False) -> tuple[th.Tensor, ...]:
        """Each critic's (or target critic's) Q-values ``(batch, 1)`` of ``actions``."""
        critic = self.policy.critic_target if target else self.policy.critic
        return critic(batch.observations, actions)

    def actor_pass(self, batch: EncodedBatch) -> ActorPass:
        """The actor's head outputs and actions and the first critic's Q-values of the actions, as the actor loss
        reads them (with gradient to the actor)."""
        policy = self.policy
        actor = policy.actor
        if isinstance(actor, EncoderActor):
            head, actions = actor.head_and_actions(batch.observations)
        else:  # SB3's own actor: no smoothing, the head's output is the action
            head = actions = actor(batch.observations)
        # SB3 annotates q1_forward's observations as a tensor; it takes a dict of tensors as forward() does
        return ActorPass(head, actions, policy.critic.q1_forward(batch.observations, actions))  # type: ignore[arg-type]

    def first_q_values(self, batch: EncodedBatch, actions: th.Tensor) -> th.Tensor:
        """The first critic's Q-values ``(batch, 1)`` of given actions, without gradient (the teacher's Q-filter)."""
        with th.no_grad():
            return self.policy.critic.q1_forward(batch.observations, actions)  # type: ignore[arg-type]

    def target_update_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Online and target parameters for the soft (Polyak) update, in matching order: the critic's, the actor's."""
        policy = self.policy
        return (
            [*policy.critic.parameters(), *policy.actor.parameters()],
            [*policy.critic_target.parameters(), *policy.actor_target.parameters()],
        )


class SharedEncoderHeads(TD3Heads):
    """sb3-av's shared encoder (DrQ-v2): each batch goes through the encoder once, every head reads its features.

    The critic heads read the features with gradient (the critic loss trains the encoder); the actor reads them
    detached, computed before the critic's optimizer step, as DrQ-v2 does. The target networks share the target
    encoder, and each parameter is soft-updated once.
    """

    policy: TD3Policy

    def __init__(self, policy: TD3Policy) -> None:
        super().__init__(policy)

    def encode(self, observations: PyTorchObs, target: bool = False) -> EncodedBatch:
        network = self.policy.critic_target if target else self.policy.critic
        return EncodedBatch(observations, self._features(observations, network))

    def actions(self, batch: EncodedBatch, target: bool = False) -> th.Tensor:
        actor = self.policy.actor_target if target else self.policy.actor
        assert batch.features is not None  # from encode()
        return actor.smooth(batch.observations, actor.mu(batch.features.detach()))

    def q_values(self, batch: EncodedBatch, actions: th.Tensor, target: bool = False) -> tuple[th.Tensor, ...]:
        critic = self.policy.critic_target if target else self.policy.critic
        assert batch.features is not None
        q_input = th.cat([batch.features, actions], dim=1)
        return tuple(q_net(q_input) for q_net in critic.q_networks)

    def actor_pass(self, batch: EncodedBatch) -> ActorPass:
        assert batch.features is not None
        features = batch.features.detach()
        actor = self.policy.actor
        head = actor.mu(features)
        actions = actor.smooth(batch.observations, head)
        return ActorPass(head, actions, self.policy.critic.q_networks[0](th.cat([features, actions], dim=1)))

    def first_q_values(self, batch: EncodedBatch, actions: th.Tensor) -> th.Tensor:
        assert batch.features is not None
        with th.no_grad():
            return self.policy.critic.q_networks[0](th.cat([batch.features, actions], dim=1))

    def target_update_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """The critic's parameters (with the one encoder), then the actor's head: each parameter exactly once."""
        policy = self.policy
        return (
            [*policy.critic.parameters(), *policy.actor.mu.parameters()],
            [*policy.critic_target.parameters(), *policy.actor_target.mu.parameters()],
        )

    def _features(self, observations: PyTorchObs, network: ContinuousCritic) -> th.Tensor:
        """Preprocess a batch once and run it through ``network``'s features extractor.

        :class:`~sb3_av.torch_layers.MultiInputExtractor` takes its image raw (uint8) and scales it in one copy to
        its compute dtype and memory format; everything else goes through SB3's ``preprocess_obs``.
        """
        extractor = network.features_extractor
        policy = self.policy
        if isinstance(extractor, MultiInputExtractor) and policy.normalize_images and isinstance(observations, dict):
            assert isinstance(policy.observation_space, spaces.Dict)  # the extractor accepts only Dict spaces
            space = policy.observation_space
            return extractor(
                {
                    key: value if key == extractor.image_key else preprocess_obs(value, space[key], normalize_images=True)
                    for key, value in observations.items()
                }
            )
        return extractor(preprocess_obs(observations, policy.observation_space, normalize_images=policy.normalize_images))


class EncoderActor(Actor):
    """SB3's TD3 actor that can read its features detached from a shared encoder, and smooth its actions.

    :param detach_features: compute the features without gradient (the encoder belongs to the critic).
    :param action_smoothing: ``beta`` in [0, 1), one number or one per action dimension: the action is
        ``(1 - beta) * mu(features) + beta * previous action`` (:func:`previous_action`); 0 = SB3's actor.
    """

    def __init__(
        self, *args: Any, detach_features: bool = False, action_smoothing: ActionSmoothing = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.detach_features = detach_features
        self.action_smoothing = action_smoothing
        self._betas = smoothing_betas(action_smoothing)  # read on every forward: converted once

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["detach_features"] = self.detach_features
        data["action_smoothing"] = self.action_smoothing
        return data

    def set_action_smoothing(self, action_smoothing: ActionSmoothing) -> None:
        """Use another ``action_smoothing`` from now on (e.g. to evaluate a trained head with another filter)."""
        self.action_smoothing = action_smoothing
        self._betas = smoothing_betas(action_smoothing)

    def smooth(self, obs: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """``actions`` (the head's output) blended with the observation's previous action (see ``action_smoothing``)."""
        if not any(self._betas):
            return actions
        beta = th.as_tensor(self._betas, dtype=actions.dtype, device=actions.device)
        return (1.0 - beta) * actions + beta * previous_action(obs).to(actions.dtype)

    def head_and_actions(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        """The head's output ``mu(features)`` and the action (:meth:`smooth`), each ``(batch, action_dim)``."""
        with th.set_grad_enabled(th.is_grad_enabled() and not self.detach_features):
            features = self.extract_features(obs, self.features_extractor)
        head = self.mu(features)
        return head, self.smooth(obs, head)

    def forward(self, obs: th.Tensor) -> th.Tensor:
        return self.head_and_actions(obs)[1]


class TD3Policy(_SB3TD3Policy):
    """SB3's TD3 policy, where ``share_features_extractor=True`` means one critic-trained encoder (DrQ-v2).

    Same parameters as :class:`stable_baselines3.td3.policies.TD3Policy`; see the module docstring for the
    groups of each mode.
    """

    actor: EncoderActor
    actor_target: EncoderActor

    #: See :class:`EncoderActor`; set by :class:`MultiInputPolicy` (0 elsewhere).
    action_smoothing: ActionSmoothing = 0.0

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> EncoderActor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return EncoderActor(
            **actor_kwargs, detach_features=self.share_features_extractor, action_smoothing=self.action_smoothing
        ).to(self.device)

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> ContinuousCritic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        # The critic always computes its features with gradient: in shared mode it is the one that trains them.
        critic_kwargs["share_features_extractor"] = False
        return ContinuousCritic(**critic_kwargs).to(self.device)

    def _build(self, lr_schedule: Schedule) -> None:
        if not self.share_features_extractor:
            super()._build(lr_schedule)
            return
        encoder = self.make_features_extractor()
        target_encoder = self.make_features_extractor()
        self.critic = self.make_critic(features_extractor=encoder)
        self.critic_target = self.make_critic(features_extractor=target_encoder)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor = self.make_actor(features_extractor=encoder)
        self.actor_target = self.make_actor(features_extractor=target_encoder)
        self.actor_target.mu.load_state_dict(self.actor.mu.state_dict())

        # The actor's optimizer must not move the encoder: it is trained by the critic loss only.
        self.actor.optimizer = self.optimizer_class(
            self.actor.mu.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )
        self.critic.optimizer = self.optimizer_class(
            self.critic.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )
        self.actor_target.set_training_mode(False)
        self.critic_target.set_training_mode(False)

    def heads(self) -> TD3Heads:
        """How :meth:`sb3_av.td3.ClippedTD3.train` runs this policy's networks on a batch (see :class:`TD3Heads`)."""
        return SharedEncoderHeads(self) if self.share_features_extractor else TD3Heads(self)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self.actor(observation)


MlpPolicy = TD3Policy


class CnnPolicy(TD3Policy):
    """:class:`TD3Policy` with SB3's NatureCNN as default extractor (image observations)."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
        share_features_extractor: bool = False,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
            n_critics,
            share_features_extractor,
        )


class MultiInputPolicy(TD3Policy):
    """:class:`TD3Policy` for Dict observations: SB3's ``MultiInputPolicy``, with sb3-av's extractor on the driving env.

    Left unset (None), ``features_extractor_class`` is :class:`~sb3_av.torch_layers.MultiInputExtractor` where the
    observation space is the driving contract (exactly an ``image`` ``(C, H, W)`` uint8 Box and a 1-D ``vector``
    Box, see :func:`sb3_av.common.policies.is_driving_observation_space`) and SB3's ``CombinedExtractor`` on any
    other Dict space; ``net_arch`` is ``[256, 256]`` with the driving extractor and SB3's TD3 default
    (``[400, 300]``) otherwise. An explicit ``features_extractor_class`` always wins. Other parameters as
    :class:`stable_baselines3.td3.policies.MultiInputPolicy`.

    :param action_smoothing: ``beta`` in [0, 1) (driving observation spaces only), one number or a list of one per
        action dimension (``[steer, throttle_brake]``): the action is ``(1 - beta) *`` the actor's output ``+ beta *``
        the previous action the observation carries (see the module docstring).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] | None = None,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
        share_features_extractor: bool = False,
        *,
        action_smoothing: ActionSmoothing = 0.0,
    ) -> None:
        action_smoothing = _check_action_smoothing(action_smoothing, action_space)
        if any(smoothing_betas(action_smoothing)) and not is_driving_observation_space(observation_space):
            raise ValueError(
                "action_smoothing reads the previous action from the driving observation (image + vector); "
                f"this observation space is not one: {observation_space}"
            )
        self.action_smoothing = action_smoothing  # read by make_actor() during super().__init__
        extractor_class, net_arch = multi_input_defaults(observation_space, features_extractor_class, net_arch)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
            n_critics,
            share_features_extractor,
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["action_smoothing"] = self.action_smoothing
        return data
