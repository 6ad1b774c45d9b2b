"""The loop vocabulary beyond CART: interleaved RoPE, where the loop's state starts, what each
loop re-reads of the prelude output (inject), and the peers' unrolled counts."""

from __future__ import annotations

import math

import pytest
import torch
from gen_helpers import CART_TINY, VARIANTS, build, compile_variant, randomize_, tokens

from cartspec.accounting import account
from cartspec.resolve import resolve


def test_interleaved_rope_rotates_channel_pairs_as_complex_numbers(tmp_path):
    _, module = compile_variant(tmp_path, "interleaved", VARIANTS["interleaved_rope"][1])
    rotary = module.Rotary(16, 12, 500.0)
    rotary.reset_parameters()
    q, k = torch.randn(2, 3, 5, 16), torch.randn(2, 3, 5, 16)
    start = 4
    angles = torch.outer(torch.arange(start, start + 5.0), 500.0 ** (-torch.arange(0, 16, 2) / 16))
    turn = torch.polar(torch.ones_like(angles), angles)  # e^{i t theta_j}, one per pair

    def expected(x: torch.Tensor) -> torch.Tensor:
        return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (8, 2))) * turn).flatten(-2)

    got_q, got_k = rotary(q, k, start)
    torch.testing.assert_close(got_q, expected(q))
    torch.testing.assert_close(got_k, expected(k))


def test_roped_blocks_must_agree_on_one_rope_style(cli):
    code, _, err = cli("validate", str(CART_TINY), "--set", "blocks.coda.attention.rope_style=interleaved")
    assert code == 2
    lines = err.strip().splitlines()
    assert (
        len(lines) == 1 and "blocks.coda.attention.rope_style" in lines[0] and "share one table" in lines[0]
    )


def test_a_seeded_noisy_start_is_fixed_at_evaluation_and_fresh_in_training(tmp_path):
    _, module = compile_variant(tmp_path, "noisy", VARIANTS["noisy_start_add_inject"][1])
    model = randomize_(build(module), seed=1)
    idx = tokens(2, 10, 96)
    with torch.no_grad():
        model.eval()
        first, second = model(idx)[0], model(idx)[0]
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        model.train()
        assert not torch.equal(model(idx)[0], model(idx)[0])


def test_the_noisy_start_draws_the_peers_numbers_under_a_seed(tmp_path):
    """Huginn and Parcae draw randn, then overwrite it with a truncated normal: both consume the
    RNG, so the generated start must consume it alike to be the peers' start under a seed."""
    _, module = compile_variant(tmp_path, "noisy", VARIANTS["noisy_start_add_inject"][1])
    d, std = 64, math.sqrt(2 / (5 * 64))
    config = module.Config(d_model=d, init_state_seed=None)
    assert (config.init_state_std, config.init_state_scale) == (std, math.sqrt(d))
    start = module.InitialState(config)
    e = torch.zeros(2, 7, d)
    torch.manual_seed(11)
    got = start(e)
    torch.manual_seed(11)
    x = torch.randn_like(e)
    torch.nn.init.trunc_normal_(x, mean=0.0, std=std, a=-3 * std, b=3 * std)
    torch.testing.assert_close(got, x * math.sqrt(d), rtol=0, atol=0)
    assert got.abs().max() <= 3 * std * math.sqrt(d)


def test_an_add_inject_feeds_the_prelude_output_into_every_loop(tmp_path):
    sets = (
        "blocks.anchor=null",
        "blocks.core.attention={kind: mha, rope: true}",
        "blocks.core.gate=null",
        "blocks.core.state_mix=null",
        "blocks.core.loop_embedding=null",
        "blocks.core.init_state={kind: zeros}",
        "blocks.core.inject={kind: add}",
    )
    _, module = compile_variant(tmp_path, "inject_add", sets)
    model = randomize_(build(module), seed=4).eval()
    seen: dict[str, list[torch.Tensor]] = {"e": [], "in": [], "out": []}

    def record_core(_module, args, out) -> None:
        seen["in"].append(args[0])
        seen["out"].append(out)

    model.prelude[-1].register_forward_hook(lambda _m, _a, out: seen["e"].append(out))
    model.core.register_forward_hook(record_core)
    with torch.no_grad():
        model(tokens(1, 9, 96), loops=3)
    (e,) = seen["e"]
    torch.testing.assert_close(seen["in"][0], e)  # h0 = 0, so the first loop reads e alone
    for r in (1, 2):
        torch.testing.assert_close(seen["in"][r], seen["out"][r - 1] + e)


def test_unrolled_counts_follow_the_peers_conventions(tmp_path):
    """core_only adds (R - 1) copies of the core block; recurrent_block of everything a loop runs
    (here the unrolled network itself: nothing outside the loop runs twice)."""
    resolved = resolve(CART_TINY)
    report = account(resolved.graph)
    _, module = compile_variant(tmp_path, "cart", (), spec=CART_TINY, small=False)
    with torch.device("meta"):
        model = module.Model()
    R = resolved.spec.blocks.core.loops
    core = sum(p.numel() for p in model.core.parameters())
    assert report.unrolled == {
        "core_only": report.stored + (R - 1) * core,
        "recurrent_block": report.effective,
    }


@pytest.mark.parametrize(
    "sets",
    [
        ("blocks.anchor=null", "blocks.core.attention={kind: mha}"),
        ("blocks.anchor.recompute=every_loop",),
    ],
)
def test_a_loop_that_never_reads_the_tokens_is_refused_in_one_line(cli, sets):
    """A noisy start with neither an inject nor an anchor computed from e: the model's output
    would not depend on its input."""
    args = [f"--set={s}" for s in ("blocks.core.init_state={kind: trunc_normal, seed: 1}", *sets)]
    code, _, err = cli("validate", str(CART_TINY), *args)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "blocks.core.init_state.kind" in line and "never reads the input tokens" in line
