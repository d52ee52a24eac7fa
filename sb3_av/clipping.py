"""What every clipped off-policy algorithm of sb3-av shares: groups from its policy, clippers, one host sync.

``ClippedTD3``, ``ClippedDDPG``, ``ClippedSAC`` and ``ClippedTQC`` mix :class:`GradClipMixin` into their SB3
class (through :class:`sb3_av.common.off_policy.ClippedOffPolicyMixin`). Their ``train()`` is SB3's, step for
step, with the optimizer steps replaced by ``self._critic_clipper.step(optimizer)`` /
``self._actor_clipper.step(optimizer)`` and the per-step ``loss.item()`` replaced by device tensors that
:meth:`GradClipMixin._flush_train_stats` copies to the host once per ``train()`` call.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch as th
from stable_baselines3.common.policies import BaseModel
from torch import nn

from sb3_av.grad_clip import GROUP_NAMES, GroupClipper, StepNorms, validate_max_grad_norms
from sb3_av.grad_stats import GradNormWindow

__all__ = ["GradClipMixin", "network_groups"]


def network_groups(network: nn.Module, optimizer: th.optim.Optimizer, prefix: str) -> dict[str, list[nn.Parameter]]:
    """Split the parameters an optimizer updates into the network's CNN and MLP groups.

    ``{prefix}_cnn`` holds the optimized parameters of ``network.features_extractor``; ``{prefix}_mlp`` every
    other optimized parameter (the actor's head, or the critic's Q networks). Parameters the optimizer does not
    update (a features extractor trained by the other network's loss) belong to no group of this network.

    :param network: an SB3 actor or critic (has ``features_extractor``).
    :param optimizer: the optimizer of that network.
    :param prefix: "actor" or "critic".
    """
    extractor = network.features_extractor
    assert isinstance(extractor, nn.Module)
    extractor_ids = {id(p) for p in extractor.parameters()}
    optimized = [p for group in optimizer.param_groups for p in group["params"]]
    return {
        f"{prefix}_cnn": [p for p in optimized if id(p) in extractor_ids],
        f"{prefix}_mlp": [p for p in optimized if id(p) not in extractor_ids],
    }


class GradClipMixin:
    """Per-group gradient clipping and norm bookkeeping for an SB3 actor-critic algorithm.

    The host sets ``max_grad_norms`` from its constructor and passes its actor and critic to
    :meth:`_setup_grad_clipping` at the end of ``_setup_model`` (:class:`sb3_av.common.off_policy.ClippedOffPolicyMixin`
    does both steps for SB3's off-policy algorithms).
    """

    max_grad_norms: dict[str, float | None]
    grad_norms: GradNormWindow
    _actor_clipper: GroupClipper
    _critic_clipper: GroupClipper

    def _setup_grad_clipping(self, actor: BaseModel, critic: BaseModel) -> None:
        """Build the clippers and the norm window (called at the end of ``_setup_model``).

        :param actor: the host's actor, with its optimizer.
        :param critic: the host's critic, with its optimizer.
        """
        limits = validate_max_grad_norms(self.max_grad_norms)
        actor_groups = network_groups(actor, actor.optimizer, "actor")
        critic_groups = network_groups(critic, critic.optimizer, "critic")
        all_groups = {**actor_groups, **critic_groups}
        for name in GROUP_NAMES:
            if limits[name] is not None and not all_groups[name]:
                raise ValueError(
                    f"max_grad_norms[{name!r}] = {limits[name]} but this policy has no {name} parameters to clip "
                    "(an MLP policy has no CNN; with share_features_extractor=True one network's optimizer owns the "
                    "encoder: the critic's in sb3-av's TD3/DDPG ('critic_cnn'), the actor's in SAC/TQC ('actor_cnn')). "
                    "Set it to None or remove it."
                )
        actor_groups = {name: params for name, params in actor_groups.items() if params}
        critic_groups = {name: params for name, params in critic_groups.items() if params}
        self._actor_clipper = GroupClipper(actor_groups, limits)
        self._critic_clipper = GroupClipper(critic_groups, limits)
        self.grad_norms = GradNormWindow(
            {"actor": self._actor_clipper.names, "critic": self._critic_clipper.names},
            {name: limit for name, limit in limits.items() if all_groups.get(name)},
        )

    def _grad_clip_excluded_params(self) -> list[str]:
        """Attributes rebuilt by ``_setup_model`` on load, never pickled."""
        return ["grad_norms", "_actor_clipper", "_critic_clipper"]

    def _flush_train_stats(
        self,
        critic_steps: list[tuple[int, StepNorms]],
        actor_steps: list[tuple[int, StepNorms]],
        losses: Mapping[str, list[th.Tensor]],
    ) -> dict[str, np.ndarray]:
        """Copy a ``train()`` call's norms and losses to the host in one transfer and add the norms to the window.

        :param critic_steps: (update index, norms) of each critic optimizer step.
        :param actor_steps: (update index, norms) of each actor optimizer step.
        :param losses: loss name -> one 0-d device tensor per step.
        :return: loss name -> host array of the per-step values.
        """
        parts: list[th.Tensor] = []
        layout: list[tuple[str, int]] = []
        for network, steps in (("critic", critic_steps), ("actor", actor_steps)):
            if steps:
                parts.append(th.stack([norms.before for _, norms in steps]).flatten())
                parts.append(th.stack([norms.after for _, norms in steps]).flatten())
                layout += [(f"{network}/before", parts[-2].numel()), (f"{network}/after", parts[-1].numel())]
        for name, values in losses.items():
            if values:
                parts.append(th.stack(values).detach().flatten().to(th.float32))
                layout.append((f"loss/{name}", len(values)))
        if not parts:
            return {}
        host = th.cat([part.to(th.float32) for part in parts]).cpu().numpy().astype(np.float64)  # the one host sync
        chunks: dict[str, np.ndarray] = {}
        offset = 0
        for key, size in layout:
            chunks[key] = host[offset : offset + size]
            offset += size
        for network, steps in (("critic", critic_steps), ("actor", actor_steps)):
            if steps:
                shape = (len(steps), -1)
                updates = np.array([update for update, _ in steps], dtype=np.int64)
                self.grad_norms.add(
                    network, updates, chunks[f"{network}/before"].reshape(shape), chunks[f"{network}/after"].reshape(shape)
                )
        return {key.removeprefix("loss/"): values for key, values in chunks.items() if key.startswith("loss/")}
