"""Choose the compute device and dtypes for this machine (issue Core, item 5)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DevicePlan:
    """Where models run and in which dtypes."""

    device: torch.device
    unet_dtype: torch.dtype
    text_dtype: torch.dtype
    vae_dtype: torch.dtype

    def describe(self) -> str:
        """A short stamp for logs and image metadata."""
        names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        return (f"torch {torch.__version__}, {self.device.type}, unet {names[self.unet_dtype]}, "
                f"vae {names[self.vae_dtype]}")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX or AVX512-BF16), where bf16 is ~4x faster than fp32."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = cpuinfo.read_text(errors="ignore")
        return "amx_bf16" in flags or "avx512_bf16" in flags
    return False


def _cuda_plan(precision: str) -> DevicePlan:
    device = torch.device("cuda")
    bf16_ok = torch.cuda.is_bf16_supported()
    if precision == "auto":
        compute = torch.bfloat16 if bf16_ok else torch.float16
        # SDXL's VAE overflows in fp16: bf16 on Ampere+, else fp32 (§2.20).
        vae = torch.bfloat16 if bf16_ok else torch.float32
        return DevicePlan(device, compute, compute, vae)
    dtype = _DTYPES[precision]
    return DevicePlan(device, dtype, dtype, torch.float32 if dtype == torch.float16 else dtype)


def plan_devices(device: str = "auto", precision: str = "auto") -> DevicePlan:
    """Pick device and dtypes: CUDA (bf16/fp16 by capability), Apple MPS (fp16), else CPU (bf16 if native)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    wanted = device.lower()
    if wanted not in ("auto", "cpu", "cuda", "mps") and not wanted.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda[:N] or mps, got {device!r}")
    if wanted.startswith("cuda") or (wanted == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("CUDA was requested but torch sees no CUDA device")
        plan = _cuda_plan(precision)
        if ":" in wanted:
            plan = DevicePlan(torch.device(wanted), plan.unet_dtype, plan.text_dtype, plan.vae_dtype)
        return plan
    mps = getattr(torch.backends, "mps", None)
    if wanted == "mps" or (wanted == "auto" and mps is not None and mps.is_available()):
        if mps is None or not mps.is_available():
            raise ValueError("MPS was requested but is not available")
        dtype = torch.float16 if precision == "auto" else _DTYPES[precision]
        vae_dtype = torch.float32 if dtype == torch.float16 else dtype
        return DevicePlan(torch.device("mps"), dtype, dtype, vae_dtype)
    native = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    dtype = native if precision == "auto" else _DTYPES[precision]
    return DevicePlan(torch.device("cpu"), dtype, dtype, dtype)


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA/MPS/CPU out-of-memory errors."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
