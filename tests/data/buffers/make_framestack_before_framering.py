"""Make tests/data/buffers/framestack_before_framering.pkl with sb3-av before commit 800ae26 (run on that checkout)."""
import sys
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.save_util import save_to_pkl
from sb3_av.buffers import FrameStackDictReplayBuffer

out = sys.argv[1]
space = spaces.Dict({"image": spaces.Box(0, 255, (3, 6, 5), np.uint8), "vector": spaces.Box(-1, 1, (2,), np.float32)})
rng = np.random.default_rng(0)


def transitions(n):
    """Episodes of 4 steps: the stack shifts by one new random frame a step; a new episode starts from one frame."""
    stack = None
    for t in range(n):
        if t % 4 == 0:
            frame = rng.integers(0, 256, (6, 5), dtype=np.uint8)
            stack = np.stack([frame] * 3)
        nxt = np.concatenate([stack[1:], rng.integers(0, 256, (1, 6, 5), dtype=np.uint8)])
        obs = {"image": stack[None], "vector": rng.uniform(-1, 1, (1, 2)).astype(np.float32)}
        next_obs = {"image": nxt[None], "vector": rng.uniform(-1, 1, (1, 2)).astype(np.float32)}
        action = rng.uniform(-1, 1, (1, 2)).astype(np.float32)
        yield obs, next_obs, action, np.array([t], np.float32), np.array([t % 4 == 3]), [{}]
        stack = nxt


buf = FrameStackDictReplayBuffer(12, space, spaces.Box(-1, 1, (2,), np.float32), device="cpu", n_envs=1)
stream = list(transitions(30))
for tr in stream[:17]:  # wrapped once: 17 > 12
    buf.add(*tr)
save_to_pkl(out + ".pkl", buf)
for tr in stream[17:]:
    buf.add(*tr)
np.random.seed(0)
s = buf.sample(8)
added = {}
for i, (obs, next_obs, action, reward, done, _) in enumerate(stream[17:]):
    added.update({f"stream_{i}_image": obs["image"], f"stream_{i}_vector": obs["vector"]})
    added.update({f"stream_{i}_next_image": next_obs["image"], f"stream_{i}_next_vector": next_obs["vector"]})
    added.update({f"stream_{i}_action": action, f"stream_{i}_reward": reward, f"stream_{i}_done": done})
np.savez_compressed(
    out + "_expected.npz",
    image=s.observations["image"].numpy(),
    next_image=s.next_observations["image"].numpy(),
    vector=s.observations["vector"].numpy(),
    actions=s.actions.numpy(),
    rewards=s.rewards.numpy(),
    dones=s.dones.numpy(),
    frames_written=buf.n_frames_written,
    **added,
)
print("ok", buf.n_frames_written)
