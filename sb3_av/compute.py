"""Compute defaults that fit the machine: the CNN's dtype and the number of torch threads.

A dtype or a thread count is a default only where the hardware runs it well:

- bfloat16 convolutions are about 2x faster than float32 on CPUs with native bfloat16 (AVX512-BF16 or AMX)
  and on CUDA GPUs of compute capability 8.0 and up, but 4-10x *slower* everywhere else (oneDNN then converts
  every element in software). ``cnn_dtype="auto"`` picks bfloat16 only where it is native.
- torch's default intra-op thread count is the number of cores. OpenMP threads spin at their barriers, so
  when another busy process (an env worker, a CARLA server) takes one of those cores, every parallel region
  waits for the descheduled thread: on 2 cores with one competing process a TD3 step runs about 2x slower with
  2 threads than with 1. :func:`default_torch_threads` leaves half the cores to the rest of the machine.
"""

from __future__ import annotations

import os

import torch as th

__all__ = [
    "CNN_DTYPES",
    "available_cores",
    "default_torch_threads",
    "native_bfloat16",
    "resolve_cnn_dtype",
    "set_torch_threads",
]

#: Accepted values of ``cnn_dtype`` (``"auto"`` resolves per device with :func:`resolve_cnn_dtype`).
CNN_DTYPES = ("auto", "float32", "bfloat16")

_FIXED_DTYPES = {"float32": th.float32, "bfloat16": th.bfloat16}
# CPU features whose bfloat16 dot products oneDNN uses natively (torch.cpu.get_capabilities() keys).
_NATIVE_BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16")
# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) that still include the bfloat16 instructions; any other cap
# (AVX2, AVX512_CORE, ...) makes oneDNN emulate bfloat16 even on a CPU that has it.
_BF16_ONEDNN_ISA_MARKERS = ("ALL", "BF16", "AMX", "FP16", "AVX10")


def native_bfloat16(device: th.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 matrix products and convolutions natively (faster than float32).

    :param device: a CPU or CUDA device.
    :return: CPU: the processor has AVX512-BF16 or AMX-BF16 (``torch.cpu.get_capabilities()``) and torch and
        oneDNN may use them (``torch.backends.cpu.get_cpu_capability()`` is an AVX-512 level, not lowered by
        ``ATEN_CPU_CAPABILITY``, and ``ONEDNN_MAX_CPU_ISA``, if set, keeps the bfloat16 instructions); CUDA:
        compute capability 8.0 or more (Ampere and later); any other device: False.
    """
    device = th.device(device)
    if device.type == "cpu":
        return _cpu_runs_bfloat16_natively()
    if device.type == "cuda":
        return th.cuda.is_available() and th.cuda.get_device_capability(device)[0] >= 8
    return False


def _cpu_runs_bfloat16_natively() -> bool:
    capabilities = th.cpu.get_capabilities()
    if not any(bool(capabilities.get(feature, False)) for feature in _NATIVE_BF16_CPU_FEATURES):
        return False
    if not th.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    isa_cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return any(marker in isa_cap for marker in _BF16_ONEDNN_ISA_MARKERS)


def resolve_cnn_dtype(cnn_dtype: str, device: th.device | str = "cpu") -> th.dtype:
    """The compute dtype of the CNN for a ``cnn_dtype`` setting on ``device``.

    :param cnn_dtype: ``"float32"``, ``"bfloat16"`` (always, even where it is slow), or ``"auto"``: bfloat16
        where :func:`native_bfloat16` holds, else float32.
    :param device: where the CNN runs.
    :raises ValueError: for any other value.
    """
    if cnn_dtype == "auto":
        return th.bfloat16 if native_bfloat16(device) else th.float32
    if cnn_dtype not in _FIXED_DTYPES:
        raise ValueError(f"cnn_dtype must be one of {list(CNN_DTYPES)}, got {cnn_dtype!r}")
    return _FIXED_DTYPES[cnn_dtype]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_torch_threads(cores: int | None = None) -> int:
    """torch intra-op threads for training that leave room for env workers or a simulator: half the cores.

    :param cores: cores to share (default: :func:`available_cores`).
    :return: ``max(1, cores // 2)``: 1 on a 2-core machine, 8 on 16 cores.
    """
    cores = available_cores() if cores is None else cores
    return max(1, cores // 2)


def set_torch_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count as the trainer, the evaluator and the recorder do.

    :param num_threads: a count; None: :func:`default_torch_threads`, unless ``OMP_NUM_THREADS`` is set (torch then
        follows it); <= 0: torch's own default (every core).
    :return: the thread count torch now uses.
    """
    threads = num_threads
    if threads is None:
        threads = -1 if os.environ.get("OMP_NUM_THREADS") else default_torch_threads()
    if threads > 0:
        th.set_num_threads(threads)
    return th.get_num_threads()
