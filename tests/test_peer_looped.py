"""The core-only looped specs of the peers' family, counted by hand and through the real CLI.

``universal_transformer`` (one shared layer looped R times, Dehghani et al.) and ``looped_k2_l4``
(a k-layer block looped L times, Saunshi et al.'s k (x) L) have no prelude, coda or anchor:
embedding -> core x R -> norm -> tied head. Their counts follow from one layer's size alone.
"""

from __future__ import annotations

import json

import pytest

V, D, T = 32000, 512, 1024
HIDDEN = 1536  # swiglu default: ceil(int(8 * 512 / 3) / 256) * 256
LAYER = 4 * D * D + 3 * D * HIDDEN + 2 * D  # full-rank MHA, SwiGLU, two RMSNorms

# spec -> (layers in the looped block k, loops L)
CORE_ONLY = {"universal_transformer": (1, 8), "looped_k2_l4": (2, 4)}


def hand_counts(k: int, loops: int) -> dict[str, int]:
    """Stored, unrolled and forward FLOPs (the paper's convention) of a core-only looped model."""
    unrolled = V * D + k * loops * LAYER + D
    return {
        "stored": V * D + k * LAYER + D,
        "effective": unrolled,
        "effective_paper": unrolled,
        "forward": 2 * (unrolled - V * D) * T + 4 * k * loops * T * T * D,
    }


@pytest.fixture(scope="module")
def reports(run_cli) -> dict[str, dict]:
    out = {}
    for name in CORE_ONLY:
        rc, text, err = run_cli("params", "--json", f"specs/peers/{name}.yaml")
        assert (rc, err) == (0, "")
        out[name] = json.loads(text)
    return out


@pytest.mark.parametrize("name", CORE_ONLY)
def test_core_only_spec_counts_equal_the_hand_computation(reports, name):
    want = hand_counts(*CORE_ONLY[name])
    r = reports[name]
    got = {
        "stored": r["stored"],
        "effective": r["effective"],
        "effective_paper": r["effective_paper"],
        "forward": r["flops"]["forward_per_sequence"],
    }
    assert got == want
    assert r["flops"]["attention_uses"] == CORE_ONLY[name][0] * CORE_ONLY[name][1]
    # nothing but the core runs per loop: every peer's unrolled convention is the unrolled network
    assert r["unrolled"] == {"core_only": want["effective"], "recurrent_block": want["effective"]}


def test_one_layer_looped_8_and_two_layers_looped_4_unroll_to_the_same_network(reports):
    """The two specs trade stored parameters for loops at one effective depth of 8 layers."""
    ut, kl = reports["universal_transformer"], reports["looped_k2_l4"]
    assert ut["effective"] == kl["effective"]
    assert kl["stored"] - ut["stored"] == LAYER
