"""Code the Clipped algorithms share: policy defaults, off-policy setup (lean replay buffer, clippers), SAC/TQC's train.

Modules: :mod:`sb3_av.common.policies` (what ``"MultiInputPolicy"`` means), :mod:`sb3_av.common.off_policy`
(:class:`~sb3_av.common.off_policy.ClippedOffPolicyMixin`) and :mod:`sb3_av.common.soft_actor_critic`
(:class:`~sb3_av.common.soft_actor_critic.SoftActorCriticTrainMixin`). Nothing is imported here, so that each
algorithm folder imports only what it uses.
"""
