"""AdamW with the paper's defaults, its parameter groups, and the warmup-then-cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from cartspec.schema import Train


def parameter_groups(model: nn.Module, decay: str, weight_decay: float) -> list[dict]:
    """``all``: every parameter decays (as the CART paper); ``matrices``: only tensors of rank
    >= 2 decay, so norms, the gate's ``a`` and the blend's weights are exempt."""
    params = list(model.parameters())  # unique: shared and tied tensors appear once
    if decay == "all":
        return [{"params": params, "weight_decay": weight_decay}]
    matrices = [p for p in params if p.ndim >= 2]
    others = [p for p in params if p.ndim < 2]
    return [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, train: Train, device: torch.device) -> torch.optim.AdamW:
    o = train.optimizer
    groups = parameter_groups(model, o.decay, o.weight_decay)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=device.type == "cuda")


def lr_at(step: int, train: Train) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine to min_lr
    at the last step (or constant)."""
    peak, floor, warmup = train.optimizer.lr, train.schedule.min_lr, train.schedule.warmup
    if step < warmup:
        return peak * (step + 1) / warmup
    if train.schedule.kind == "constant":
        return peak
    span = max(train.steps - 1 - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
