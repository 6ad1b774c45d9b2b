"""The transformers config of an exported cartspec model (copied into the export; needs transformers only).

``model_config`` holds the fields of the generated model's own ``Config`` (the spec's sizes);
``loops`` is the loop count a forward pass and ``generate`` run unless given ``loops=`` (None for a
model without a loop).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class CartspecConfig(PretrainedConfig):
    model_type = "cartspec"

    def __init__(
        self,
        model_config: dict[str, Any] | None = None,
        loops: int | None = None,
        spec_name: str = "",
        architecture_sha256: str = "",
        **kwargs: Any,
    ) -> None:
        self.model_config = dict(model_config or {})
        self.loops = loops
        self.spec_name = spec_name
        self.architecture_sha256 = architecture_sha256
        # the names transformers' utilities look for; the generated model reads only model_config
        self.vocab_size = self.model_config.get("vocab_size")
        self.hidden_size = self.model_config.get("d_model")
        self.max_position_embeddings = self.model_config.get("max_seq_len")
        kwargs["tie_word_embeddings"] = False  # a tied head reads the embedding inside the generated model
        super().__init__(**kwargs)
