"""Autoregressive decoding of a generated model: greedy or sampled (temperature, top-k, top-p),
with the model's KV cache or by re-running the whole window (``--no-cache``), and, for a loop
that can stop early, the mean number of loops each token used."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked from the logits."""

    temperature: float = 0.8  # 0: greedy
    top_k: int | None = 50
    top_p: float | None = None  # nucleus: the fewest tokens whose probability reaches top_p
    seed: int = 0


@dataclass(frozen=True)
class Decoding:
    """How the model runs for each new token."""

    loops: int | None = None  # None: the model's own R (and no loop argument for a dense model)
    cache: bool = True
    exit_threshold: float | None = None


@dataclass(frozen=True)
class Decoded:
    ids: list[int]  # the new tokens
    loops_per_token: float | None  # mean loops run per decoding step, when the loop can exit early


def pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """The next token from one position's logits."""
    logits = logits.float()
    if sampling.temperature == 0:
        return int(logits.argmax())
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.numel():
        cutoff = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < cutoff, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p is not None and sampling.top_p < 1:
        ordered, order = probs.sort(descending=True)
        before = ordered.cumsum(0) - ordered  # probability of the tokens ranked above each one
        probs = probs.scatter(0, order, ordered.masked_fill(before >= sampling.top_p, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))


@contextmanager
def plain_attributes(model: nn.Module) -> Iterator[None]:
    """Each module's submodules, parameters and buffers as ordinary attributes, for a decode.

    nn.Module keeps them in dicts of its own and finds them in ``__getattr__``, which Python
    calls only after the ordinary lookup has failed and built an AttributeError: about 180 times
    per token that cart_tiny decodes, a sixth of a cached step. Decoding does not change the
    model, so for its length each entry is also put in its module's ``__dict__``, where the
    ordinary lookup finds it first; the entries are taken out again at the end. A name the
    module's class defines is left alone: there the class wins, as it does without this.
    """
    placed: list[tuple[nn.Module, str]] = []
    try:
        for module in model.modules():
            own = module.__dict__
            for entries in (module._parameters, module._buffers, module._modules):
                for name, value in entries.items():
                    if name not in own and not hasattr(type(module), name):
                        own[name] = value
                        placed.append((module, name))
        yield
    finally:
        for module, name in placed:
            del module.__dict__[name]


@torch.inference_mode()  # no autograd bookkeeping at all: decoding never trains
def decode(
    model: nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    *,
    window: int,
    vocab: int,
    stop: int | None,
    sampling: Sampling,
    decoding: Decoding,
    on_token: Callable[[int], None] = lambda _: None,
    until: Callable[[list[int]], bool] = lambda _: False,
) -> Decoded:
    """Continue ``prompt`` token by token; the context is the last ``window`` tokens, as in training.
    Decoding ends at ``stop``, after ``max_new_tokens``, or once ``until(new tokens)`` holds.

    With the cache each step feeds only the new token; once the context fills the window, the
    window slides and each step re-reads it, exactly as decoding without a cache does.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    loops = {} if decoding.loops is None else {"loops": decoding.loops}
    exit_early = {} if decoding.exit_threshold is None else {"exit_threshold": decoding.exit_threshold}
    ids, new = list(prompt), []
    cache, fed, used = None, 0, []  # the cache holds the keys of ids[:fed]
    with plain_attributes(model):
        for _ in range(max_new_tokens):
            context = ids[-window:]
            if decoding.cache and (cache is None or len(ids) > window):  # start, or slide the window
                cache, fed = model.new_cache(**loops), len(ids) - len(context)
            step = ids[fed:] if decoding.cache else context
            logits, _ = model(torch.tensor([step], device=device), cache=cache, **loops, **exit_early)
            if cache is not None:
                fed = len(ids)
                used += cache.loops_used[-1:] if exit_early else []
            token = pick(logits[0, -1, :vocab], sampling, generator)
            if token == stop:
                break
            ids.append(token)
            new.append(token)
            on_token(token)
            if until(new):
                break
    return Decoded(new, sum(used) / len(used) if used else None)
