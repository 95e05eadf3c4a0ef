"""Devices, dtypes, threads and multi-process setup: the ONE place the workbook decides where and how tensors run.

* ``select_device()`` picks CUDA when there is one (``cuda:<LOCAL_RANK>`` under torchrun), else the CPU.
* ``autocast_dtype(device)`` is fixed per device, so every arm and seed of an experiment trains in the same
  dtype (evaluation refuses arms trained in different ones): bf16 on CUDA (fp16 on GPUs without bf16, the only
  case that needs a GradScaler), fp32 on the CPU. ``REVENA_DTYPE=fp32|bf16|fp16`` overrides it for every run.
* ``configure_threads()`` gives each process its share of the cores (``REVENA_THREADS`` overrides).
* ``init_distributed()`` starts a process group when torchrun set ``WORLD_SIZE>1`` (nccl on CUDA, gloo on CPU).

    from revena_lib.training.device import select_device, autocast
    device = select_device(); with autocast(device): out = model(x)
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(RuntimeError):
    pass


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def world_size() -> int:
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    return _env_int("RANK", 0)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes files and logs."""
    return rank() == 0


def configure_threads() -> int:
    """Give this process its share of the CPU cores; returns the thread count.

    torchrun starts several processes on one host, each of which would otherwise use every core and
    thrash; so each gets cores // processes-on-this-host. ``REVENA_THREADS`` overrides.
    """
    if "REVENA_THREADS" in os.environ:
        threads = int(os.environ["REVENA_THREADS"])
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // _env_int("LOCAL_WORLD_SIZE", 1))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def select_device(requested: str | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA if available, else CPU. ``"cuda"`` without a GPU is an error, not a silent CPU run."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu "
                              "(or install a CUDA build of torch)")
        if requested == "cuda":
            requested = f"cuda:{local_rank() % torch.cuda.device_count()}"
        device = torch.device(requested)
        torch.cuda.set_device(device)
        # TF32 for any matmul left in fp32 (the optimizer step, the loss): faster, plenty precise here.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return device
    if requested != "cpu":
        raise DeviceError(f"unknown device {requested!r}: use cpu or cuda")
    configure_threads()
    return torch.device("cpu")


def _cpu_has_bf16() -> bool:
    """Does a tiny bf16 matmul run at all on this CPU (and torch knows native vector units for it)?"""
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX"):
        return False
    try:
        a = torch.ones(8, 8, dtype=torch.bfloat16)
        return bool(torch.isfinite((a @ a).float()).all())
    except RuntimeError:
        return False


def _time_matmul(dtype: torch.dtype, m: int, k: int, n: int, repeats: int) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b  # warm-up: kernel selection, page faults
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return (time.perf_counter() - start) / repeats


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16 time of a matmul shaped like the cpu preset's LM head (tokens x n_embd x vocab/8).

    Measured once per process (~0.1 s). > 1 means bf16 is faster here.
    """
    if not _cpu_has_bf16():
        return 0.0
    fp32 = _time_matmul(torch.float32, 2048, 256, 6144, 3)
    bf16 = _time_matmul(torch.bfloat16, 2048, 256, 6144, 3)
    return fp32 / bf16


def dtype_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


@functools.lru_cache(maxsize=None)
def _autocast_dtype(device_type: str) -> torch.dtype | None:
    override = os.environ.get("REVENA_DTYPE")
    if override:
        if override not in DTYPES:
            raise DeviceError(f"REVENA_DTYPE={override!r} is not one of {', '.join(DTYPES)}")
        return DTYPES[override]
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device_type == "cpu":
        # Fixed, not measured: a timing probe picked bf16 on one CPU and fp32 on the next, and arms trained in
        # different dtypes are not comparable. fp32 is exact and fast enough at the cpu preset's sizes;
        # REVENA_DTYPE=bf16 opts in (AMX CPUs run bf16 matmuls several times faster; see cpu_bf16_speedup()).
        return None
    return None


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The mixed-precision dtype to autocast to on this device, or None for plain fp32."""
    return _autocast_dtype(torch.device(device).type)


def autocast(device: torch.device | str, dtype: torch.dtype | None | str = "auto"):
    """Context manager: autocast to ``autocast_dtype(device)`` (or the given dtype), or do nothing for fp32."""
    device = torch.device(device)
    if dtype == "auto":
        dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(device: torch.device | str, dtype: torch.dtype | None) -> bool:
    """Only fp16 on CUDA underflows gradients; bf16 and fp32 train without a GradScaler."""
    return torch.device(device).type == "cuda" and dtype == torch.float16


def init_distributed(device: torch.device) -> bool:
    """Join torchrun's process group when ``WORLD_SIZE>1`` (env:// rendezvous). Returns whether distributed."""
    import torch.distributed as dist

    if world_size() <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def cleanup_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
