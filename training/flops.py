"""Peak dense bf16 tensor-core FLOP/s of known GPUs, for model FLOPs utilisation (MFU).

Figures are the vendors' dense (no sparsity) bf16 numbers. An unknown device gives None, and callers
print "unknown" rather than guess.
"""

from __future__ import annotations

import re

import torch

# (pattern on torch.cuda.get_device_name(), peak bf16 FLOP/s). First match wins: specific before generic.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    (r"\bH100\b.*\bPCIe\b", 756e12),
    (r"\bH100\b.*\bNVL\b", 835e12),
    (r"\bH100\b", 989e12),  # SXM
    (r"\bH200\b", 989e12),
    (r"\bGH200\b", 989e12),
    (r"\bB200\b", 2250e12),
    (r"\bA100\b", 312e12),
    (r"\bL40S\b", 362e12),
    (r"\bL4\b", 121e12),
    (r"\bA10\b", 125e12),
]


def peak_flops(device: torch.device | str) -> float | None:
    """Peak bf16 FLOP/s of a CUDA device, or None when it is not a GPU in the table."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for pattern, flops in PEAK_BF16_FLOPS:
        if re.search(pattern, name):
            return flops
    return None


def mfu(tokens_per_second: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]; None when the peak is unknown."""
    return None if not peak else tokens_per_second * flops_per_token / peak
