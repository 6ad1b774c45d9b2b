"""What training costs per token and what a device can deliver (no torch): the figures behind
the training's first line (a time estimate) and the ``mfu`` of ``metrics.jsonl``.

Model FLOPs utilisation is tokens/s x training FLOPs per token / the devices' peak. The FLOPs per
token are accounting's (docs/accounting.md: 3 x forward, a shared block counted once per use,
the sampled-depth schedule's expected cost when ``train.depth`` draws), taken at the training
sequence length rather than ``model.max_seq_len`` (attention costs grow with T), plus the
head's 3 x 2 x V x d, which the paper's forward convention leaves out but a device computes.
"""

from __future__ import annotations

import math

from cartspec.accounting import account
from cartspec.resolve import Resolved, resolve_data, spec_dict

# Peak dense bf16 tensor FLOP/s (no sparsity), from the vendors' data sheets. Matched against
# the device name in this order, so the more specific names come first.
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16: a V100 has no bf16
)


def peak_flops(device_name: str | None) -> float | None:
    """The bf16 dense peak FLOP/s of a GPU named ``device_name``; None for a CPU or an unknown one."""
    if not device_name:
        return None
    name = device_name.lower()
    return next((peak for key, peak in PEAK_BF16 if key.lower() in name), None)


def train_flops_per_token(resolved: Resolved) -> float:
    """Training FLOPs per token at the training sequence length, the sampled-depth schedule and
    the head included."""
    spec = resolved.spec
    report = resolved.params
    if spec.seq_len != spec.model.max_seq_len:  # attention's FLOPs follow T: account at train.seq_len
        data = spec_dict(spec)
        data["model"]["max_seq_len"] = spec.seq_len
        report = account(resolve_data(data, resolved.path).graph)
    body = report.flops.train_per_token if report.depth is None else report.depth.train_per_token_expected
    return body + 3 * report.flops.head_per_sequence / report.flops.seq_len


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None, devices: int = 1) -> float | None:
    """Model FLOPs utilisation of ``devices`` devices of ``peak`` FLOP/s each; None without a peak."""
    if peak is None or not math.isfinite(tokens_per_s):
        return None
    return tokens_per_s * flops_per_token / (peak * devices)


def duration(seconds: float) -> str:
    """A rough duration for a person: '40 s', '12 min', '3.5 h', '2.1 days'."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
