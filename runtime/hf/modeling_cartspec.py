"""A cartspec model for transformers: the run's generated model (``cartspec_model.py``, copied
beside this file) wrapped as a ``PreTrainedModel`` with ``generate()``. Needs torch and
transformers only.

Logits are the generated model's own. ``loops=`` (forward and generate) runs the core that many
times; the default is ``config.loops``. ``generate`` decodes with the generated model's KV cache
(``new_cache``; ``use_cache=False`` re-runs the context for every token instead, with the same
tokens) and, like ``cartspec sample``, keeps the last ``max_seq_len`` tokens as the context once
the sequence is longer. The generated model takes no attention mask: padding is refused, except
trailing padding in a forward pass of a causal model (positions before it never see it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .cartspec_model import Config, Model
from .configuration_cartspec import CartspecConfig

# transformers 5 renamed the cache slot of model outputs and generate's kwargs: use whichever it has
_CACHE = (
    "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"
)
# arguments transformers passes by habit that change nothing here (positions follow the tokens)
_IGNORED = {"use_cache", "return_dict", "position_ids", "cache_position", "num_items_in_batch"}


class Decoding:
    """The generated model's cache during one ``generate``: made for one loop count, holding the
    keys of ``input_ids[:, :fed]`` (of the last window of them once the sequence outgrew it)."""

    def __init__(self, cache: Any, loops: int | None, fed: int) -> None:
        self.cache, self.loops, self.fed = cache, loops, fed


def generated_config(config: CartspecConfig) -> Config:
    """The generated model's ``Config`` from ``config.model_config`` (JSON lists back to tuples)."""
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(config.model_config) - fields)
    if unknown:
        raise ValueError(f"model_config: {', '.join(unknown)} not fields of the generated Config")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model_config.items()}
    return Config(**values)


class CartspecForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = CartspecConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: CartspecConfig) -> None:
        super().__init__(config)
        self.model = Model(generated_config(config))
        self.decodable = _decodable(self.model)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """No transformers cache: prepare_inputs_for_generation supplies the generated model's own."""
        return False

    def _init_weights(self, module: nn.Module) -> None:
        """As the generated ``init_weights``: N(0, init_std) for Linear and Embedding weights; other
        modules reset themselves (norms, and the rotary and loop tables, which are not saved)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.reset_parameters()
            nn.init.normal_(module.weight, mean=0.0, std=self.model.config.init_std)
        elif module is not self and module is not self.model and hasattr(module, "reset_parameters"):
            module.reset_parameters()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embedding

    def get_output_embeddings(self) -> None:
        return None  # the head is the generated model's own (tied or not); nothing to tie from outside

    def _loops(self, loops: int | None) -> dict[str, int]:
        """The loop keyword for the generated model: ``loops`` or ``config.loops``."""
        if self.config.loops is None:
            if loops is not None:
                raise ValueError(f"{self.config.spec_name} has no loop: loops={loops} does not apply")
            return {}
        return {"loops": self.config.loops if loops is None else loops}

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        loops: int | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits [B, T, vocab]; with ``labels`` (``input_ids``-shaped, -100 ignored) the mean
        next-token cross-entropy. Inside ``generate`` the cache slot carries a ``Decoding``."""
        state = kwargs.pop(_CACHE, None)
        unknown = sorted(k for k, v in kwargs.items() if k not in _IGNORED and v)
        if unknown:
            raise ValueError(f"{type(self).__name__}.forward does not support {', '.join(unknown)}")
        if attention_mask is not None and not _trailing_padding_only(attention_mask):
            raise ValueError("the generated model takes no attention mask: pass unpadded sequences")
        if attention_mask is not None and not bool(attention_mask.all()) and not self.decodable:
            raise ValueError("this model attends both ways: padding would change the logits")
        cached = {"cache": state.cache} if isinstance(state, Decoding) else {}
        logits, _ = self.model(input_ids, **cached, **self._loops(loops))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.size(-1)),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE: state})

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        loops: int | None = None,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The tokens this step feeds: those after the cached ones, or the whole context (the last
        ``max_seq_len`` tokens) without a cache; past the window each step starts a new cache over
        it, exactly as ``cartspec sample`` does."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "generate: the generated model takes no attention mask; pass prompts of one length"
            )
        window = self.model.config.max_seq_len
        loop = self._loops(loops)
        if not (use_cache and self.decodable):
            return {"input_ids": input_ids[:, -window:], "loops": loops}
        state = kwargs.get(_CACHE)
        length = input_ids.size(1)
        if not isinstance(state, Decoding) or state.loops != loop.get("loops") or length > window:
            state = Decoding(self.model.new_cache(**loop), loop.get("loops"), max(0, length - window))
        step = input_ids[:, state.fed :]
        state.fed = length
        return {"input_ids": step, "loops": loops, _CACHE: state}


def _decodable(model: nn.Module) -> bool:
    """Whether the generated model decodes with a KV cache (every attention causal)."""
    try:
        model.new_cache()
    except ValueError:  # bidirectional attention: each new token changes the earlier keys
        return False
    return True


def _trailing_padding_only(mask: torch.Tensor) -> bool:
    """Every row is ones then zeros: no token follows a padded position."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


__all__ = ["CartspecConfig", "CartspecForCausalLM"]
