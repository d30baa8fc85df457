"""Where and in what precision a worker computes: the device, the dtypes, autocast and loss scaling.

A worker's hardware changes how it trains, never what: the LoRA (and head) master weights are
float32 on every device and precision, the seeded init is drawn on the CPU, and tensors leave
for the wire as float32 CPU tensors. Only the frozen base weights take `precision` (or a
bitsandbytes quantisation), and the forward pass runs under autocast in that dtype.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from common.config import Precision, Quantization, WorkerConfig
from common.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Hardware:
    """A worker's resolved compute settings (WorkerConfig's device/precision/quantization/train)."""

    device: torch.device = torch.device("cpu")
    precision: Precision = "fp32"
    quantization: Quantization = "none"
    gradient_checkpointing: bool = False

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the frozen base weights and of autocast."""
        return DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The forward pass's autocast scope (a no-op at fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A dynamic loss scaler for fp16 (its small exponent range underflows gradients); off otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Model inputs, encoded on the CPU, moved to the device."""
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def describe(self) -> str:
        quant = "" if self.quantization == "none" else f", {self.quantization} base"
        ckpt = ", gradient checkpointing" if self.gradient_checkpointing else ""
        return f"{self.device} {self.precision}{quant}{ckpt}"


CPU = Hardware()


def resolve_device(spec: str) -> torch.device:
    """auto -> cuda if a CUDA GPU is visible, else mps if available, else cpu; an explicit device
    that this machine does not have is a ConfigError that says why."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"worker.device {spec!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "it is a CPU-only build of torch: install a CUDA build (fedtree accepts any torch 2.x from 2.6)"
                if torch.version.cuda is None
                else "no GPU is visible (check the driver, nvidia-smi and CUDA_VISIBLE_DEVICES)"
            )
            raise ConfigError(
                f"worker.device is {spec} but torch {torch.__version__} has no CUDA GPU here: {why}; or set device: cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"worker.device is {spec} but only {count} CUDA GPU(s) are visible (cuda:0..cuda:{count - 1})")
        return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    if device.type == "mps" and not _mps_available():
        raise ConfigError("worker.device is mps but torch's Apple Metal backend is not available here; set device: cpu")
    if device.type not in ("cpu", "mps"):
        raise ConfigError(f"worker.device {spec!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def check_precision(device: torch.device, precision: Precision) -> None:
    """A precision the device cannot compute in is a ConfigError (bf16 needs an Ampere or newer GPU)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"worker.precision bf16: the GPU {name} has no bfloat16; use precision fp16 (with loss scaling)")


def resolve_hardware(config: WorkerConfig) -> Hardware:
    """The worker's Hardware, checked against this machine before anything is loaded."""
    from worker.quantize import check_quantization

    device = resolve_device(config.device)
    check_precision(device, config.precision)
    check_quantization(device, config.quantization)
    return Hardware(device, config.precision, config.quantization, config.train.gradient_checkpointing)
