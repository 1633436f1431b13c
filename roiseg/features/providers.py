"""onnxruntime execution-provider selection by availability: TensorRT > CUDA > CPU.

A GPU provider is chosen only when a CUDA device is really usable by torch
(``torch.cuda.is_available()``) *and* onnxruntime was built with it
(``onnxruntime.get_available_providers()``): the features are handed to torch on that device
without a host round trip, so both libraries must see it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import torch

from graph_tools import CPU_PROVIDER, ProviderSpec

from roiseg.errors import InputError
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = CPU_PROVIDER
GPU_EPS: tuple[str, str] = (TENSORRT_EP, CUDA_EP)



def default_trt_cache_dir() -> Path:
    """Where TensorRT engines are cached: ``$XDG_CACHE_HOME/roiseg/trt_engines`` (``~/.cache`` by default)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "roiseg" / "trt_engines"


@dataclass(frozen=True)
class ProviderChoice:
    """Providers to hand to ``onnxruntime.InferenceSession`` and the torch device they imply."""

    providers: list[ProviderSpec]
    device: torch.device

    @property
    def names(self) -> list[str]:
        return [p if isinstance(p, str) else p[0] for p in self.providers]


def parse_device(device: str) -> tuple[str, int]:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> ``(kind, device_id)``; InputError otherwise."""
    m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", str(device).strip().lower())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise InputError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    return m.group(1), int(m.group(2) or 0)


def cuda_unusable_reason() -> str | None:
    """Why onnxruntime + torch cannot run on CUDA here, or ``None`` when they can."""
    if not torch.cuda.is_available():
        return "torch sees no usable CUDA device (torch.cuda.is_available() is False)"
    available = ort.get_available_providers()
    if CUDA_EP not in available:
        return f"onnxruntime has no {CUDA_EP} (available: {', '.join(available)})"
    return None


def choose_providers(
    device: str = "auto",
    trt_fp16: bool = False,
    trt_cache_dir: str | Path | None = None,
    use_tensorrt: bool = True,
    trt_profiles: dict[str, str] | None = None,
) -> ProviderChoice:
    """Execution providers for ``device``, best first, always ending with CPU.

    * ``"cpu"``: CPU only.
    * ``"cuda"`` / ``"cuda:N"``: TensorRT (if onnxruntime has it and ``use_tensorrt``), CUDA, CPU;
      :class:`InputError` when CUDA is not usable.
    * ``"auto"``: as ``"cuda"`` when CUDA is usable, else CPU.

    TensorRT runs in fp32 unless ``trt_fp16``; its engines are cached in ``trt_cache_dir``
    (default :func:`default_trt_cache_dir`) because building them takes minutes. ``trt_profiles``:
    TensorRT optimisation profiles for dynamic inputs (``trt_profile_{min,opt,max}_shapes`` options,
    e.g. from :func:`roiseg.deploy.engines.trt_profiles`).
    """
    kind, device_id = parse_device(device)
    reason = None if kind == "cpu" else cuda_unusable_reason()
    if kind == "cuda" and reason is not None:
        raise InputError(f"device {device} requested but CUDA is not usable: {reason}")
    if kind == "cpu" or reason is not None:
        choice = ProviderChoice([CPU_EP], torch.device("cpu"))
    else:
        if device_id >= torch.cuda.device_count():
            raise InputError(f"device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        providers: list[ProviderSpec] = []
        if use_tensorrt and TENSORRT_EP in ort.get_available_providers():
            cache = Path(trt_cache_dir) if trt_cache_dir is not None else default_trt_cache_dir()
            providers.append((TENSORRT_EP, {
                "device_id": device_id,
                "trt_fp16_enable": bool(trt_fp16),
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
                **(trt_profiles or {}),
            }))
        providers.append((CUDA_EP, {"device_id": device_id}))
        providers.append(CPU_EP)
        choice = ProviderChoice(providers, torch.device("cuda", device_id))
    LOG.info("onnxruntime providers requested: %s (device=%s)", ", ".join(choice.names), device)
    return choice


def prepare_trt_cache(choice: ProviderChoice) -> None:
    """Create the TensorRT engine-cache folder of ``choice`` (if TensorRT is in it)."""
    for spec in choice.providers:
        if isinstance(spec, tuple) and spec[0] == TENSORRT_EP:
            Path(spec[1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)


def session_device(session: ort.InferenceSession, requested: ProviderChoice) -> torch.device:
    """The torch device matching the providers a session really uses.

    onnxruntime falls back to CPU when a GPU provider fails to load (e.g. missing cuDNN or
    TensorRT libraries); the features then live on the host.
    """
    used = session.get_providers()
    if requested.device.type == "cuda" and any(p in used for p in GPU_EPS):
        return requested.device
    if requested.device.type == "cuda":
        LOG.warning("GPU providers failed to load; onnxruntime runs on %s", ", ".join(used))
    return torch.device("cpu")
