"""Every validation rule: a bad spec in, one located line per problem out, exit code 2, no traceback.

Each test writes a small spec whose first line is line 1 of the file; the offending line carries a
``# line N`` comment so the expected ``spec.yaml:LINE:COL: dotted.path: message`` can be checked
by eye (columns are 1-based and point at the key, or at the value for YAML syntax errors).
"""

from __future__ import annotations

import pytest


def errors(cli, *args: str) -> list[str]:
    """The stderr lines of a ``cartspec validate`` that must fail the way a user error fails."""
    rc, out, err = cli("validate", *args) if args else cli("validate", "spec.yaml")
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err
    return err.splitlines()


# ----------------------------------------------------------------------------- schema: keys


def test_unknown_key_is_rejected_with_a_did_you_mean(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack:        # line 4: lacks attention
            layers: 1
            atention: {kind: mha}   # line 6
        """)
    assert errors(cli) == [
        "spec.yaml:4:3: blocks.stack.attention: missing required key 'attention'",
        "spec.yaml:6:5: blocks.stack.atention: unknown key 'atention' (did you mean 'attention'?)",
    ]


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        train:
          optimizer:
            momentum: 0.9   # line 7
        """)
    assert errors(cli) == [
        "spec.yaml:7:5: train.optimizer.momentum: unknown key 'momentum'; "
        "allowed: kind, lr, betas, eps, weight_decay, decay"
    ]


def test_missing_required_key_points_at_the_mapping_that_lacks_it(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, max_seq_len: 16}   # line 2
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        """)
    assert errors(cli) == ["spec.yaml:2:1: model.d_model: missing required key 'd_model'"]


def test_spec_without_blocks_names_the_missing_key_at_the_file(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16}
        """)
    assert errors(cli) == ["spec.yaml: blocks: missing required key 'blocks'"]


def test_name_must_be_an_identifier_so_no_spec_string_reaches_code(cli, write_spec):
    write_spec("""
        name: Cart-1; import os   # line 1
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16}
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        """)
    assert errors(cli) == [
        "spec.yaml:1:1: name: 'Cart-1; import os' is not a name: "
        "use a-z, 0-9 and _, starting with a letter (at most 64)"
    ]


# ----------------------------------------------------------------------------- schema: values


def test_size_below_its_bound_is_rejected_at_its_key(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          anchor: {from: prelude}
          core:
            loops: 0   # line 7
            attention: {kind: cross}
        """)
    assert errors(cli) == ["spec.yaml:7:5: blocks.core.loops: input should be greater than or equal to 1"]


def test_size_above_its_bound_is_rejected_so_a_typo_cannot_allocate_a_terabyte(cli, write_spec):
    write_spec("""
        name: t
        model:
          vocab_size: 64
          d_model: 1000000   # line 4
          max_seq_len: 16
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        """)
    assert errors(cli) == ["spec.yaml:4:3: model.d_model: input should be less than or equal to 65536"]


def test_wrong_type_shows_the_value_given(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack:
            layers: two   # line 5
            attention: {kind: mha}
        """)
    assert errors(cli) == ["spec.yaml:5:5: blocks.stack.layers: input should be a valid integer, got 'two'"]


def test_fractional_number_where_a_count_is_expected_is_rejected(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack:
            layers: 1.5   # line 5
            attention: {kind: mha}
        """)
    assert errors(cli) == ["spec.yaml:5:5: blocks.stack.layers: input should be a valid integer, got 1.5"]


def test_choice_outside_its_options_lists_the_options(cli, write_spec):
    write_spec("""
        name: t
        model:
          vocab_size: 64
          d_model: 32
          max_seq_len: 16
          norm: {kind: batchnorm}   # line 6
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        """)
    assert errors(cli) == [
        "spec.yaml:6:10: model.norm.kind: input should be 'rmsnorm' or 'layernorm', got 'batchnorm'"
    ]


def test_unknown_kind_points_at_the_kind_and_lists_the_kinds_allowed_there(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack:
            layers: 1
            attention: {kind: cross}   # line 6: a dense stack has no anchor to cross-attend to
        """)
    assert errors(cli) == [
        "spec.yaml:6:17: blocks.stack.attention.kind: unknown kind 'cross'; expected one of 'mha', 'mla', 'deepseek_mla'"
    ]


def test_missing_kind_lists_the_kinds_allowed_there(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          anchor: {from: prelude}
          core:
            loops: 2
            attention: {kind: cross}
            gate: {init: 0.5}   # line 9
        """)
    assert errors(cli) == [
        "spec.yaml:9:5: blocks.core.gate: missing 'kind'; expected one of 'lti', 'residual', 'decay'"
    ]


def test_gate_init_must_be_a_probability(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          anchor: {from: prelude}
          core:
            loops: 2
            attention: {kind: cross}
            gate:
              kind: lti
              init: 1.0   # line 11
        """)
    assert errors(cli) == ["spec.yaml:11:7: blocks.core.gate.init: input should be less than 1"]


def test_cross_attention_cannot_use_rope(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          anchor: {from: prelude}
          core:
            loops: 2
            attention:
              kind: cross
              rope: true   # line 10
        """)
    assert errors(cli) == ["spec.yaml:10:7: blocks.core.attention.rope: input should be False, got True"]


def test_hyper_connection_needs_one_initial_weight_per_tap(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          anchor: {from: prelude}
          core:
            loops: 2
            attention: {kind: cross}
            state_mix:
              kind: hyper
              taps: 2
              init: [1.0, 0.0, 0.0]   # line 12
        """)
    assert errors(cli) == ["spec.yaml:12:7: blocks.core.state_mix.init: 3 weights but taps is 2"]


def test_loop_embedding_width_must_be_even(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          anchor: {from: prelude}
          core:
            loops: 2
            attention: {kind: cross}
            loop_embedding:
              kind: sinusoidal
              dim: 33   # line 11
        """)
    assert errors(cli) == ["spec.yaml:11:7: blocks.core.loop_embedding.dim: must be even (sin and cos pairs)"]


def test_adam_betas_must_lie_in_zero_one(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        train:
          optimizer:
            betas: [0.9, 1.5]   # line 7
        """)
    assert errors(cli) == ["spec.yaml:7:5: train.optimizer.betas: each beta must be in [0, 1)"]


def test_every_problem_is_reported_at_once_in_file_order(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack:
            layers: 0                  # line 5
            attention: {kind: gqa}     # line 6
        train:
          steps: -1                    # line 8
          seed: lots                   # line 9
        """)
    assert errors(cli) == [
        "spec.yaml:5:5: blocks.stack.layers: input should be greater than or equal to 1",
        "spec.yaml:6:17: blocks.stack.attention.kind: unknown kind 'gqa'; expected one of 'mha', 'mla', 'deepseek_mla'",
        "spec.yaml:8:3: train.steps: input should be greater than or equal to 1",
        "spec.yaml:9:3: train.seed: input should be a valid integer, got 'lots'",
    ]


# ----------------------------------------------------------------------------- semantics (graph)


def test_d_model_must_be_a_multiple_of_head_dim(cli, write_spec):
    write_spec("""
        name: t
        model:
          vocab_size: 64
          d_model: 36    # line 4
          head_dim: 8
          max_seq_len: 16
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        """)
    assert errors(cli) == ["spec.yaml:4:3: model.d_model: 36 is not divisible by head_dim 8"]


def test_kv_heads_must_divide_the_query_heads(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack:
            layers: 1
            attention:
              kind: mha
              kv_heads: 3   # line 8
        """)
    assert errors(cli) == [
        "spec.yaml:8:7: blocks.stack.attention.kv_heads: 3 does not divide the 4 query heads"
    ]


def test_every_rope_block_uses_one_rope_base(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          core: {loops: 2, attention: {kind: mha, rope: false, rope_base: 20}}   # no RoPE: base unused
          coda:
            layers: 1
            attention:
              kind: mla
              rope_base: 500000   # line 10
        """)
    assert errors(cli) == [
        "spec.yaml:10:7: blocks.coda.attention.rope_base: 500000.0 differs from 10000.0; RoPE blocks share one table"
    ]


def test_training_sequence_cannot_exceed_the_models_context(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        train:
          seq_len: 32   # line 6
        """)
    assert errors(cli) == ["spec.yaml:6:3: train.seq_len: 32 exceeds model.max_seq_len 16"]


def test_tokens_per_micro_batch_are_bounded(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 1048576, head_dim: 8}
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        train:
          micro_batch: 32   # line 6
        """)
    assert errors(cli) == [
        "spec.yaml:6:3: train.micro_batch: micro_batch x seq_len = 33,554,432 tokens; at most 16,777,216"
    ]


def test_cosine_floor_cannot_be_above_the_peak_learning_rate(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        train:
          optimizer: {lr: 1.0e-4}
          schedule:
            min_lr: 1.0e-3   # line 8
        """)
    assert errors(cli) == ["spec.yaml:8:5: train.schedule.min_lr: 0.001 is above the peak lr 0.0001"]


def test_a_model_too_large_to_be_meant_is_rejected(cli, write_spec):
    write_spec("""
        name: t
        model:
          vocab_size: 2000000
          d_model: 32768   # line 4
          head_dim: 64
          max_seq_len: 16
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        """)
    assert errors(cli) == [
        "spec.yaml:4:3: model.d_model: the model would store 78,437,744,640 parameters; "
        "at most 50,000,000,000 (a typo?)"
    ]


def test_dense_stack_cannot_be_combined_with_looped_blocks(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
          coda: {layers: 1, attention: {kind: mha}}   # line 5
        """)
    assert errors(cli) == [
        "spec.yaml:5:3: blocks.coda: a dense 'stack' is a model on its own; use prelude/core/coda for a looped model"
    ]


def test_a_model_needs_some_layers(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks: {}   # line 3
        """)
    assert errors(cli) == ["spec.yaml:3:1: blocks: no layers: give a dense 'stack', or prelude/core/coda"]


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("coda", "runs after the core that reads the anchor"),
        ("core", "runs after the core that reads the anchor"),
        ("decoder", "is not a block"),
    ],
)
def test_anchor_reads_a_block_that_runs_before_the_core(cli, write_spec, source, why):
    write_spec(
        """
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          anchor:
            from: SOURCE   # line 6
          core: {loops: 2, attention: {kind: cross}}
          coda: {layers: 1, attention: {kind: mla}}
        """.replace("SOURCE", source)
    )
    assert errors(cli) == [
        f"spec.yaml:6:5: blocks.anchor.from: '{source}' {why}; an anchor reads 'prelude' or 'embedding'"
    ]


def test_anchor_from_prelude_needs_a_prelude(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          anchor:
            from: prelude   # line 5
          core: {loops: 2, attention: {kind: cross}}
        """)
    assert errors(cli) == ["spec.yaml:5:5: blocks.anchor.from: reads 'prelude', but the spec has no prelude"]


def test_an_anchor_no_block_reads_is_an_error(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          anchor: {from: prelude}   # line 5
          core: {loops: 2, attention: {kind: mla}}
        """)
    assert errors(cli) == [
        "spec.yaml:5:3: blocks.anchor: no block cross-attends to this anchor "
        "(core.attention.kind: cross); remove it or use it"
    ]


def test_cross_attention_needs_the_anchor_it_names(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          core:
            loops: 2
            attention:
              kind: cross
              to: anchor   # line 9
        """)
    assert errors(cli) == [
        "spec.yaml:9:7: blocks.core.attention.to: cross attention to 'anchor', "
        "but the spec defines no such anchor (blocks.anchor)"
    ]


def test_full_rank_anchor_has_no_latent(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          anchor:
            kind: kv
            kv_latent: 8   # line 7
          core: {loops: 2, attention: {kind: cross}}
        """)
    assert errors(cli) == [
        "spec.yaml:7:5: blocks.anchor.kv_latent: only kind mla_kv has a latent; kind kv is full rank"
    ]


def test_latent_anchor_has_no_kv_heads(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          anchor:
            kind: mla_kv
            kv_heads: 2   # line 7
          core: {loops: 2, attention: {kind: cross}}
        """)
    assert errors(cli) == [
        "spec.yaml:7:5: blocks.anchor.kv_heads: kind mla_kv up-projects to every head; kv_heads is for kind kv"
    ]


def test_full_rank_anchor_kv_heads_must_divide_the_query_heads(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          anchor:
            kind: kv
            kv_heads: 3   # line 7
          core: {loops: 2, attention: {kind: cross}}
        """)
    assert errors(cli) == ["spec.yaml:7:5: blocks.anchor.kv_heads: 3 does not divide the 4 query heads"]


def test_loop_embedding_table_must_cover_every_loop(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 1, attention: {kind: mla}}
          anchor: {from: prelude}
          core:
            loops: 20
            attention: {kind: cross}
            loop_embedding:
              kind: sinusoidal
              max_loops: 16   # line 11
        """)
    assert errors(cli) == [
        "spec.yaml:11:7: blocks.core.loop_embedding.max_loops: 16 rows cannot index 20 loops"
    ]


# ----------------------------------------------------------------------------- sharing groups


def test_sharing_compares_sizes_so_a_default_equals_the_value_it_stands_for(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 300, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 2, attention: {kind: mha}}
          coda: {layers: 2, attention: {kind: mha, kv_heads: 4}}   # 32 / 8: the default's value
        share:
          - {name: ends, members: [prelude.0, coda.0]}
        """)
    rc, out, err = cli("validate", "spec.yaml")
    assert rc == 0, err
    write_spec("""
        name: t
        model: {vocab_size: 300, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 2, attention: {kind: mla, kv_latent: 8}}   # 32 / 4: the default's value
          coda: {layers: 2, attention: {kind: mla}}
        share:
          - {name: ends, members: [prelude.0, coda.0]}
        """)
    rc, out, err = cli("validate", "spec.yaml")
    assert rc == 0, err


def test_sharing_group_members_must_be_structurally_identical(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 2, attention: {kind: mla}}
          coda: {layers: 1, attention: {kind: mha}}
        share:
          - name: ends
            members: [prelude.0, coda.0]   # line 8: MLA vs MHA
        """)
    assert errors(cli) == [
        "spec.yaml:8:5: share.0.members: members are not structurally identical: 'coda.0' differs from 'prelude.0'"
    ]


def test_sharing_group_member_must_name_a_module(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 2, attention: {kind: mla}}
          coda: {layers: 1, attention: {kind: mha}}
        share:
          - name: pair
            members: [prelude.0, prelude.7]   # line 8
        """)
    assert errors(cli) == [
        "spec.yaml:8:26: share.0.members.1: 'prelude.7' names no shareable module (have: prelude.0, prelude.1, coda.0, norm)"
    ]


def test_a_module_belongs_to_one_sharing_group(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 2, attention: {kind: mla}}
        share:
          - {name: first, members: [prelude.0, prelude.1]}
          - {name: second, members: [prelude.1, prelude.0]}   # line 7
        """)
    assert errors(cli) == [
        "spec.yaml:7:30: share.1.members.0: 'prelude.1' is already in sharing group 'first'",
        "spec.yaml:7:41: share.1.members.1: 'prelude.0' is already in sharing group 'first'",
    ]


def test_sharing_group_needs_two_distinct_modules(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 2, attention: {kind: mla}}
        share:
          - name: alone
            members: [prelude.1, prelude.1]   # line 7
        """)
    assert errors(cli) == [
        "spec.yaml:7:5: share.0.members: a sharing group needs at least two distinct modules"
    ]


def test_a_one_module_group_is_reported_even_after_another_groups_error(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 2, attention: {kind: mla}}
        share:
          - {name: broken, members: [prelude.0, prelude.9]}   # line 6
          - name: alone
            members: [prelude.1, prelude.1]   # line 8
        """)
    assert errors(cli) == [
        "spec.yaml:6:41: share.0.members.1: 'prelude.9' names no shareable module (have: prelude.0, prelude.1, norm)",
        "spec.yaml:8:5: share.1.members: a sharing group needs at least two distinct modules",
    ]


def test_sharing_group_name_cannot_shadow_a_module(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude: {layers: 2, attention: {kind: mla}}
        share:
          - name: embedding   # line 6
            members: [prelude.0, prelude.1]
        """)
    assert errors(cli) == [
        "spec.yaml:6:5: share.0.name: 'embedding' is already the name of a module or group"
    ]


# ----------------------------------------------------------------------------- the file itself


def test_invalid_yaml_points_at_the_offending_character(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32
        blocks:   # line 3: the flow mapping above was never closed
        """)
    assert errors(cli) == ["spec.yaml:3:7: invalid YAML: expected ',' or '}', but got ':'"]


def test_duplicate_key_is_an_error_not_a_silent_override(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
          stack: {layers: 2, attention: {kind: mha}}   # line 5
        """)
    assert errors(cli) == ["spec.yaml:5:3: blocks.stack: duplicate key"]


def test_keys_must_be_strings(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
          1: 2   # line 5
        """)
    assert errors(cli) == ["spec.yaml:5:3: blocks: key 1 is not a string"]


def test_yaml_merge_keys_are_refused_in_favour_of_extends(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        train:
          <<: {steps: 10}   # line 6
        """)
    assert errors(cli) == ["spec.yaml:6:3: train: YAML merge keys are not supported; use extends:"]


def test_python_tags_are_refused_by_the_safe_loader(cli, write_spec):
    write_spec("""
        name: !!python/object/apply:os.system [echo owned]   # line 1
        """)
    assert errors(cli) == [
        "spec.yaml:1:7: invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'"
    ]


def test_alias_bombs_are_stopped_before_expansion(cli, write_spec):
    write_spec("""
        a: &a [x, x, x, x, x, x, x, x, x, x]
        b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
        c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
        d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
        e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
        f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
        """)
    (line,) = errors(cli)
    # located where the count ran out: somewhere inside an aliased node, so only the file is pinned
    assert line.startswith("spec.yaml:") and line.endswith(": more than 100,000 YAML nodes (alias bomb?)")


def test_a_spec_is_a_mapping(cli, write_spec):
    write_spec("""
        - name: t
        """)
    assert errors(cli) == ["spec.yaml:1:1: a spec must be a YAML mapping"]


def test_empty_file_says_what_a_spec_needs(cli, write_spec):
    write_spec("")
    assert errors(cli) == ["spec.yaml: empty file, expected a YAML mapping with name:, model: and blocks:"]


def test_missing_file_and_directory_are_named(cli, spec_dir):
    (spec_dir / "specs").mkdir()
    assert errors(cli, "nope.yaml", "specs") == [
        "nope.yaml: no such file",
        "specs: is a directory, expected a YAML spec file",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name: caf\xe9\n", "not UTF-8 text (byte 9)"),
        (b"name: t\x00\n", "binary file, expected a YAML spec"),
        (b"#" * (1 << 20) + b"\n", "file is 1,048,577 bytes; a spec may be at most 1,048,576"),
    ],
    ids=["latin-1", "binary", "too-large"],
)
def test_files_that_are_not_small_yaml_text_are_refused(cli, spec_dir, content, message):
    (spec_dir / "spec.yaml").write_bytes(content)
    assert errors(cli) == [f"spec.yaml: {message}"]


# ----------------------------------------------------------------------------- the command


def test_validate_reports_good_specs_and_every_problem_of_the_bad_ones(cli, write_spec):
    write_spec(
        """
        name: good
        model: {vocab_size: 300, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        """,
        "good.yaml",
    )
    write_spec(
        """
        name: bad
        model: {vocab_size: 300, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack: {layers: 0, attention: {kind: mha}}   # line 4
        """,
        "bad.yaml",
    )
    rc, out, err = cli("validate", "good.yaml", "bad.yaml")
    assert rc == 2
    assert out == "ok  good.yaml  (good: 4 uses, 3 sharing groups)\n"
    assert err == "bad.yaml:4:11: blocks.stack.layers: input should be greater than or equal to 1\n"


@pytest.mark.parametrize("command", ["validate", "params", "graph"])
def test_every_command_reports_spec_errors_the_same_way(cli, write_spec, command):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 36, max_seq_len: 16, head_dim: 8}   # line 2
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        """)
    assert cli(command, "spec.yaml") == (
        2,
        "",
        "spec.yaml:2:25: model.d_model: 36 is not divisible by head_dim 8\n",
    )


def test_a_real_process_prints_located_lines_and_no_traceback(run_cli, write_spec, spec_dir):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack: {layers: 1, attention: {kind: mha, kv_heads: 3}}   # line 4
        """)
    assert run_cli("validate", "spec.yaml", cwd=spec_dir) == (
        2,
        "",
        "spec.yaml:4:45: blocks.stack.attention.kv_heads: 3 does not divide the 4 query heads\n",
    )


def test_debug_flag_shows_the_traceback(run_cli, write_spec, spec_dir):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 36, max_seq_len: 16, head_dim: 8}
        blocks:
          stack: {layers: 1, attention: {kind: mha}}
        """)
    rc, _, err = run_cli("--debug", "validate", "spec.yaml", cwd=spec_dir)
    assert rc == 1
    assert "Traceback" in err and "SpecError" in err and "36 is not divisible by head_dim 8" in err


# ----------------------------------------------------------------------------- Huginn's parts


HUGINN_LIKE = """
    name: t
    model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
    blocks:
      core:
        loops: 2
        attention: {kind: mha}
    """


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "model.embedding_scale=two",
            "model.embedding_scale: must be a number in (0, 10^4] or sqrt_d, got 'two'",
        ),
        (
            "model.ffn={kind: gelu, fused: true}",
            "model.ffn.fused: only swiglu has a gate and an up projection to fuse",
        ),
        (
            "blocks.core.attention={kind: mha, kv_heads: 2, qk_bias: true}",
            "blocks.core.attention.qk_bias: Huginn's qk_bias has one row per head: it needs kv_heads = heads (4)",
        ),
        (
            "blocks.core.gate={kind: lti, form: contractive}",
            "model.norm.placement: a sandwich core renormalises its output, so it has no update delta for the contractive gate",
        ),
        (
            "share=[{name: ln_f, members: [core_out_norm, norm]}]",
            "share.0.members.0: 'core_out_norm' names no shareable module (have: core, norm)",
        ),
    ],
)
def test_huginns_parts_refuse_what_cannot_be_built_in_one_line(cli, write_spec, override, expected):
    write_spec(HUGINN_LIKE)
    sets = ["--set", override]
    if "contractive" in override:
        sets += ["--set", "model.norm.placement=sandwich"]
    lines = errors(cli, "spec.yaml", *sets)
    assert len(lines) == 1 and lines[0].endswith(expected), lines


# ----------------------------------------------------------------------------- value embeddings


def test_value_embeddings_name_existing_layers_of_an_mha_stage_and_a_gate_within_d_model(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          prelude:
            layers: 2
            attention: {kind: mha}
            value_embedding: {kind: gated, layers: [1, 2]}   # line 7: no layer 2
          core:
            loops: 2
            attention: {kind: mla}
            value_embedding: {kind: gated, layers: [0], gate_channels: 8}   # line 11: mla
          coda:
            layers: 1
            attention: {kind: mha}
            value_embedding: {kind: gated, layers: [0], gate_channels: 33}   # line 15
        """)
    assert errors(cli) == [
        "spec.yaml:7:36: blocks.prelude.value_embedding.layers: [2] beyond the stage's 2 layers (0..1)",
        "spec.yaml:11:23: blocks.core.value_embedding.kind: value embeddings add to the V of an mha attention, not mla",
        "spec.yaml:15:49: blocks.coda.value_embedding.gate_channels: 33 exceeds d_model 32",
    ]


def test_value_embedding_layers_are_distinct(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack:
            layers: 2
            attention: {kind: mha}
            value_embedding: {kind: gated, layers: [1, 1], gate_channels: 8}   # line 7
        """)
    assert errors(cli) == [
        "spec.yaml:7:36: blocks.stack.value_embedding.layers: layer indices must be distinct and at least 0, got [1, 1]"
    ]


def test_a_layer_with_a_value_embedding_shares_only_with_layers_that_have_one(cli, write_spec):
    write_spec("""
        name: t
        model: {vocab_size: 64, d_model: 32, max_seq_len: 16, head_dim: 8}
        blocks:
          stack:
            layers: 2
            attention: {kind: mha}
            value_embedding: {kind: gated, layers: [1], gate_channels: 8}
        share:
          - name: both
            members: [stack.0, stack.1]   # line 10: only stack.1 has a gate
        """)
    assert errors(cli) == [
        "spec.yaml:10:5: share.0.members: members are not structurally identical: 'stack.1' differs from 'stack.0'"
    ]
