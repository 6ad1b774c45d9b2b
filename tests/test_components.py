"""The registry of component kinds, and the generated Config that derives what the spec derives.

Every kind must bring what the compiler asks of it (a template that exists, a parameter formula
that agrees with the module it generates); a Config built with another width must be the model
the spec would give at that width, not a silently inconsistent one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gen_helpers import CART_TINY, DENSE_TINY, GENERATED, compile_variant

from cartspec.components import kinds
from cartspec.components.attention import Attention
from cartspec.resolve import resolve
from cartspec.runtime.generated import import_module

TEMPLATES = Path(__file__).resolve().parents[1] / "cartspec" / "codegen" / "templates"
FAMILIES = ("attention", "gate", "state_mix", "loop_embedding", "inject", "init_state")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_registered_kind_has_its_template(family):
    for kind in kinds(family):
        if kind.template:  # a residual gate generates no module
            assert (TEMPLATES / kind.template).is_file(), f"{kind.__name__}: no {kind.template}"


def test_the_spec_accepts_every_registered_attention_kind():
    from cartspec.schema import Spec

    schema = Spec.model_json_schema(by_alias=True)
    tags = {
        d["properties"]["kind"].get("const") for d in schema["$defs"].values() if "kind" in d["properties"]
    }
    registered = {k.model_fields["kind"].annotation.__args__[0] for k in kinds("attention")}
    assert registered <= tags
    assert all(issubclass(k, Attention) for k in kinds("attention"))


def stored(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a shared parameter is listed once


@pytest.mark.parametrize("spec", [CART_TINY, DENSE_TINY], ids=["cart_tiny", "dense_tiny"])
def test_a_config_at_another_width_is_the_spec_at_that_width(spec):
    """Config(d_model=...) derives heads, FFN width and latent widths as the compiler does."""
    resolved = resolve(spec)
    module = import_module(GENERATED / f"{resolved.spec.name}.py")
    with torch.device("meta"):
        model = module.Model(module.Config(d_model=256))
    assert model.config.n_heads == 256 // model.config.head_dim
    assert stored(model) == resolve(spec, ["model.d_model=256"]).params.stored


def test_a_config_refuses_sizes_that_cannot_build_a_model(tmp_path):
    module = import_module(GENERATED / "cart_tiny.py")
    with pytest.raises(ValueError, match="not divisible by head_dim"):
        module.Config(d_model=100)
    with pytest.raises(ValueError, match="exceeds the 16 rows"):
        module.Config(loops=17)
    _, gqa = compile_variant(tmp_path, "gqa", ("blocks.prelude.attention={kind: mha, kv_heads: 2}",))
    with pytest.raises(ValueError, match="prelude_kv_heads 3 does not divide"):
        gqa.Config(prelude_kv_heads=3)


def test_explicit_sizes_stay_fields_and_rules_become_properties(tmp_path):
    _, module = compile_variant(
        tmp_path, "explicit", ("model.ffn.hidden=200", "blocks.prelude.attention.kv_latent=24")
    )
    fields = set(module.Config.__dataclass_fields__)
    assert {"ffn_hidden", "prelude_kv_latent"} <= fields  # given in the spec: fields
    assert {"n_heads", "coda_kv_latent"}.isdisjoint(fields)  # left to a rule: derived
    assert module.Config(d_model=256).ffn_hidden == 200
