"""Hardware-aware compute defaults: the CNN dtype that ``"auto"`` picks and the default torch thread count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch as th
from gymnasium import spaces

from sb3_av import compute
from sb3_av.compute import default_torch_threads, native_bfloat16, resolve_cnn_dtype
from sb3_av.torch_layers import MultiInputExtractor

_SPACE = spaces.Dict({"image": spaces.Box(0, 255, (4, 84, 84), "uint8"), "vector": spaces.Box(-1, 1, (5,), "float32")})
_AVX2_ONLY = {"avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
_AVX512_BF16 = {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": False}


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch):
    """Pretend to be a CPU with the given features and torch capability level."""

    def set_cpu(features: dict[str, bool], capability: str) -> None:
        monkeypatch.setattr(compute.th.cpu, "get_capabilities", lambda: features)
        monkeypatch.setattr(compute.th.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)

    return set_cpu


def test_fixed_dtypes_are_kept_whatever_the_cpu(cpu) -> None:
    cpu(_AVX2_ONLY, "AVX2")
    assert resolve_cnn_dtype("float32") is th.float32
    assert resolve_cnn_dtype("bfloat16") is th.bfloat16


def test_auto_is_float32_on_an_avx2_only_cpu(cpu) -> None:
    cpu(_AVX2_ONLY, "AVX2")
    assert not native_bfloat16("cpu")
    assert resolve_cnn_dtype("auto") is th.float32


def test_auto_is_bfloat16_on_a_cpu_with_avx512_bf16(cpu) -> None:
    cpu(_AVX512_BF16, "AVX512")
    assert native_bfloat16("cpu")
    assert resolve_cnn_dtype("auto", "cpu") is th.bfloat16


def test_auto_is_bfloat16_on_a_cpu_with_amx(cpu) -> None:
    cpu({**_AVX2_ONLY, "avx512_f": True, "amx_bf16": True}, "AVX512")
    assert resolve_cnn_dtype("auto") is th.bfloat16


def test_auto_follows_a_lowered_torch_capability_or_onednn_isa(cpu, monkeypatch: pytest.MonkeyPatch) -> None:
    # The instructions are there, but torch (ATEN_CPU_CAPABILITY=avx2) or oneDNN (ONEDNN_MAX_CPU_ISA) may not use them.
    cpu(_AVX512_BF16, "AVX2")
    assert resolve_cnn_dtype("auto") is th.float32
    cpu(_AVX512_BF16, "AVX512")
    for isa, native in [("AVX2", False), ("AVX512_CORE", False), ("AVX512_CORE_BF16", True), ("avx512_core_amx", True)]:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        assert resolve_cnn_dtype("auto") is (th.bfloat16 if native else th.float32), isa


def test_auto_under_a_real_avx2_capability_is_float32() -> None:
    # No monkeypatching: torch itself dispatched to AVX2 in a fresh process.
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    code = "import torch, sb3_av.compute as c; print(torch.backends.cpu.get_cpu_capability(), c.resolve_cnn_dtype('auto'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["AVX2", "torch.float32"]


def test_unknown_dtype_is_an_error_listing_the_choices() -> None:
    with pytest.raises(ValueError, match=r"\['auto', 'float32', 'bfloat16'\].*'float16'"):
        resolve_cnn_dtype("float16")
    with pytest.raises(ValueError, match="cnn_dtype"):
        MultiInputExtractor(_SPACE, cnn_dtype="half")


def test_auto_extractor_gives_the_features_of_the_resolved_dtype() -> None:
    th.manual_seed(0)
    auto = MultiInputExtractor(_SPACE, cnn_output_dim=16, vector_output_dim=8, cnn_dtype="auto", channels_last=True)
    resolved_name = "bfloat16" if resolve_cnn_dtype("auto") is th.bfloat16 else "float32"
    fixed = MultiInputExtractor(_SPACE, cnn_output_dim=16, vector_output_dim=8, cnn_dtype=resolved_name, channels_last=True)
    fixed.load_state_dict(auto.state_dict())
    obs = {
        "image": th.randint(0, 256, (3, 4, 84, 84), dtype=th.uint8),
        "vector": th.randn(3, 5),
    }
    assert auto.compute_dtype(th.device("cpu")) is resolve_cnn_dtype(resolved_name)
    assert th.equal(auto(obs), fixed(obs))


@pytest.mark.parametrize("channels_last", [False, True])
def test_raw_images_give_the_features_of_scaled_float_images(channels_last: bool) -> None:
    """The uint8 fast path (scale, then reorder) equals SB3's float input scaled by 1/255, in the requested layout."""
    th.manual_seed(0)
    extractor = MultiInputExtractor(
        _SPACE, cnn_output_dim=16, vector_output_dim=8, cnn_dtype="float32", channels_last=channels_last
    )
    raw = th.randint(0, 256, (3, 4, 84, 84), dtype=th.uint8)
    scaled = extractor.scale_images(raw)
    assert scaled.dtype is th.float32
    layout = th.channels_last if channels_last else th.contiguous_format
    assert scaled.is_contiguous(memory_format=layout)
    assert th.equal(scaled, raw.float() * (1.0 / 255.0))
    vector = th.randn(3, 5)
    from_float = extractor({"image": raw.float() * (1.0 / 255.0), "vector": vector})
    assert th.equal(extractor({"image": raw, "vector": vector}), from_float)


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_default_threads_leave_half_the_cores(cores: int, threads: int) -> None:
    assert default_torch_threads(cores) == threads


def test_default_threads_follow_the_cpu_affinity() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this OS")
    assert compute.available_cores() == len(os.sched_getaffinity(0))
    assert default_torch_threads() == max(1, len(os.sched_getaffinity(0)) // 2)


def test_set_torch_threads_default_explicit_and_omp(monkeypatch: pytest.MonkeyPatch) -> None:
    before = th.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert compute.set_torch_threads() == default_torch_threads() == th.get_num_threads()
        assert compute.set_torch_threads(3) == 3 == th.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's setting wins over the default: left as it is
        assert compute.set_torch_threads() == 3
    finally:
        th.set_num_threads(before)
