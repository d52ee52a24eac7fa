"""Feature extractors for the driving observation: a stacked grayscale image plus a vector of ego/route features."""

from __future__ import annotations

import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from sb3_av.compute import CNN_DTYPES, resolve_cnn_dtype

__all__ = ["MultiInputExtractor"]


class MultiInputExtractor(BaseFeaturesExtractor):
    """A NatureCNN over the image key and an MLP over the vector key, concatenated.

    The CNN is the one of Mnih et al. (2015), "Human-level control through deep reinforcement learning"
    (convolutions 8x8/4, 4x4/2, 3x3/1 with 32, 64, 64 channels), followed by a linear layer of
    ``cnn_output_dim`` units. The vector goes through one linear layer of ``vector_output_dim`` units.
    Both end in a ReLU. Images arrive already scaled to [0, 1] by SB3's ``preprocess_obs``
    (``normalize_images=True``).

    :param observation_space: a Dict space with ``image_key`` (``(C, H, W)`` uint8 image, channel-first) and
        ``vector_key`` (``(n,)`` float vector).
    :param cnn_output_dim: units of the CNN's output layer.
    :param vector_output_dim: units of the vector MLP (0: pass the vector through unchanged).
    :param image_key: name of the image entry.
    :param vector_key: name of the vector entry.
    :param cnn_dtype: compute dtype of the CNN: ``"float32"``; ``"bfloat16"`` to run the convolutions under
        :func:`torch.autocast` (weights, gradients and the features stay float32; about 2x faster on CPUs with
        AVX512-BF16 or AMX and on GPUs of compute capability 8.0+, but 4-10x slower on other CPUs); or
        ``"auto"``: bfloat16 where the device the CNN runs on has it natively, else float32 (see
        :mod:`sb3_av.compute`). ``"auto"`` is decided on the device of each batch, so a model saved on one
        machine picks the right dtype on the next.
    :param channels_last: keep the CNN's weights and input in channels-last memory format (faster convolutions
        with oneDNN and cuDNN; numerically the same).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        cnn_output_dim: int = 256,
        vector_output_dim: int = 64,
        image_key: str = "image",
        vector_key: str = "vector",
        cnn_dtype: str = "float32",
        channels_last: bool = False,
    ) -> None:
        if cnn_dtype not in CNN_DTYPES:
            raise ValueError(f"cnn_dtype must be one of {list(CNN_DTYPES)}, got {cnn_dtype!r}")
        image_shape, vector_size = _check_space(observation_space, image_key, vector_key)
        features_dim = cnn_output_dim + (vector_output_dim if vector_output_dim > 0 else vector_size)
        super().__init__(observation_space, features_dim)
        self.image_key = image_key
        self.vector_key = vector_key
        self.cnn_dtype_setting = cnn_dtype
        self.channels_last = channels_last
        self._cnn_dtypes: dict[str, th.dtype] = {}

        n_channels = image_shape[0]
        self.cnn = nn.Sequential(
            nn.Conv2d(n_channels, 32, kernel_size=8, stride=4, padding=0),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2, padding=0),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=0),
            nn.ReLU(),
            nn.Flatten(),
        )
        with th.no_grad():
            n_flatten = self.cnn(th.zeros(1, *image_shape)).shape[1]
        self.image_head = nn.Sequential(nn.Linear(n_flatten, cnn_output_dim), nn.ReLU())
        self.vector_head: nn.Module = (
            nn.Sequential(nn.Linear(vector_size, vector_output_dim), nn.ReLU()) if vector_output_dim > 0 else nn.Identity()
        )
        if channels_last:
            self.cnn.to(memory_format=th.channels_last)  # type: ignore[call-overload]

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        """Features of a batch.

        :param observations: ``image``: ``(B, C, H, W)`` float in [0, 1] (SB3's ``preprocess_obs``), or the raw
            uint8 image, scaled here in one pass (see :meth:`scale_images`); ``vector``: ``(B, n)``.
        :return: ``(B, features_dim)``.
        """
        images = observations[self.image_key]
        if images.dtype == th.uint8:
            images = self.scale_images(images)
        elif self.channels_last:
            images = images.contiguous(memory_format=th.channels_last)
        cnn_dtype = self.compute_dtype(images.device)
        if cnn_dtype is th.float32:
            image_features = self.image_head(self.cnn(images))
        else:
            with th.autocast(device_type=images.device.type, dtype=cnn_dtype):
                image_features = self.image_head(self.cnn(images)).float()
        vector_features = self.vector_head(observations[self.vector_key])
        return th.cat([image_features, vector_features], dim=1)

    def compute_dtype(self, device: th.device) -> th.dtype:
        """The CNN's compute dtype on ``device`` (``cnn_dtype`` resolved once per device type)."""
        if device.type not in self._cnn_dtypes:
            self._cnn_dtypes[device.type] = resolve_cnn_dtype(self.cnn_dtype_setting, device)
        return self._cnn_dtypes[device.type]

    def scale_images(self, images: th.Tensor) -> th.Tensor:
        """Raw uint8 images -> the CNN's input, in [0, 1], in its compute dtype and memory format, in one copy.

        SB3's ``preprocess_obs`` makes a float32 copy (and the CNN would make a channels-last and a bfloat16 one);
        a batch of 256 4x84x84 images is 29 MB per float32 copy, so the fast training path passes the raw images.
        The dtype conversion runs in the images' own layout and the channels-last reorder on the scaled floats: a
        uint8 -> float conversion that also reorders 4 channels to last is a slow strided copy on CPU (4.7 ms for
        64 4x84x84 images on an AVX2 EPYC, against 1.8-2.9 ms this way; the values are the same).

        :param images: ``(B, C, H, W)`` uint8.
        """
        scaled = images.to(dtype=self.compute_dtype(images.device)).mul_(1.0 / 255.0)
        return scaled.contiguous(memory_format=th.channels_last) if self.channels_last else scaled


def _check_space(observation_space: spaces.Space, image_key: str, vector_key: str) -> tuple[tuple[int, ...], int]:
    """Validate the Dict space; return the image shape ``(C, H, W)`` and the vector size."""
    if not isinstance(observation_space, spaces.Dict):
        raise TypeError(f"MultiInputExtractor needs a Dict observation space, got {observation_space}")
    missing = [key for key in (image_key, vector_key) if key not in observation_space.spaces]
    if missing:
        raise ValueError(
            f"MultiInputExtractor: observation space has no {missing} key(s); it has {list(observation_space.spaces)}"
        )
    image_space = observation_space[image_key]
    if not is_image_space(image_space, check_channels=False) or len(image_space.shape or ()) != 3:
        raise ValueError(f"MultiInputExtractor: {image_key!r} must be a (C, H, W) uint8 image box, got {image_space}")
    vector_space = observation_space[vector_key]
    if not isinstance(vector_space, spaces.Box) or len(vector_space.shape) != 1:
        raise ValueError(f"MultiInputExtractor: {vector_key!r} must be a 1-D Box, got {vector_space}")
    return tuple(image_space.shape or ()), int(vector_space.shape[0])
