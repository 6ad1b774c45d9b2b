"""Hostile inputs at the compiler's commands: files that are not files (FIFOs, devices, symbolic
link loops), numbers past Python's digit limit, specs that would exhaust the machine, and files a
spec has no business reading. Each is one located line and exit code 2, at once."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cartspec.files import TooLarge, Unreadable, read_bounded

SPEC = """\
name: hostile
model: {vocab_size: 300, d_model: 16, max_seq_len: 8, head_dim: 8}
blocks: {stack: {layers: 1, attention: {kind: mha}}}
"""
ONE_LINE = re.compile(r"^[^\n]+: \S[^\n]*$")
HUGE = "9" * 5000  # past Python's 4300-digit limit for int("...")


def refused(result: tuple[int, str, str], *fragments: str) -> str:
    """Exit code 2, one line on stderr with every fragment, no traceback; the line."""
    rc, out, err = result
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and ONE_LINE.match(lines[0]), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------- files that are not files


def test_a_fifo_as_a_spec_is_refused_without_blocking(here, run_cli):
    """A real process with a timeout: on the old code the read blocked until a writer came."""
    os.mkfifo(here / "spec.yaml")
    refused(run_cli("validate", "spec.yaml", cwd=here), "spec.yaml: a FIFO, not a regular file")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_a_device_as_a_spec_is_refused_without_reading(here, cli):
    """/dev/zero reports size 0 and never ends: the old size check passed and the read ran on."""
    refused(cli("validate", "/dev/zero"), "/dev/zero: a character device, not a regular file")


def test_a_fifo_or_device_named_by_extends_is_refused_at_the_extends_key(here, cli):
    os.mkfifo(here / "base.yaml")
    (here / "spec.yaml").write_text("extends: base.yaml\n" + SPEC)
    refused(cli("validate", "spec.yaml"), "spec.yaml:1:1: extends: base.yaml is a FIFO, not a spec file")
    (here / "spec.yaml").write_text("extends: /dev/zero\n" + SPEC)
    refused(cli("validate", "spec.yaml"), "spec.yaml:1:1: extends:", "character device")


def test_a_symbolic_link_loop_is_named_as_one(here, cli):
    """It used to read as "no such file", which sends the user looking for a missing file."""
    os.symlink("b.yaml", here / "a.yaml")
    os.symlink("a.yaml", here / "b.yaml")
    refused(cli("validate", "a.yaml"), "a.yaml: a symbolic link loop")
    (here / "spec.yaml").write_text("extends: a.yaml\n" + SPEC)
    refused(cli("validate", "spec.yaml"), "extends: a symbolic link loop: a.yaml")


def test_read_bounded_reads_what_it_is_given_and_no_more(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_bounded(path, 10) == b"x" * 10
    with pytest.raises(TooLarge) as e:
        read_bounded(path, 9)
    assert (e.value.size, e.value.limit) == (10, 9)
    with pytest.raises(Unreadable, match="is a directory"):
        read_bounded(tmp_path, 10)
    with pytest.raises(Unreadable, match="no such file"):
        read_bounded(tmp_path / "gone", 10)


# ----------------------------------------------------------------------------- numbers past the digit limit


def test_an_integer_past_the_digit_limit_in_a_spec_is_located(here, cli):
    (here / "spec.yaml").write_text(SPEC.replace("vocab_size: 300", f"vocab_size: {HUGE}"))
    line = refused(cli("validate", "spec.yaml"), "spec.yaml:2:21: model.vocab_size: cannot read this value")
    assert HUGE not in line and "set_int_max_str_digits" not in line


def test_an_integer_past_the_digit_limit_in_a_set_is_located(here, cli):
    (here / "spec.yaml").write_text(SPEC)
    line = refused(cli("validate", "spec.yaml", "--set", f"model.d_model={HUGE}"), "cannot read this value")
    assert line.startswith("--set model.d_model=999") and len(line) < 700


def test_a_date_that_does_not_exist_is_located(here, cli):
    (here / "spec.yaml").write_text(SPEC + "description: 2026-02-30\n")
    refused(cli("validate", "spec.yaml"), "spec.yaml:4:14: description: cannot read this value")


# ----------------------------------------------------------------------------- what a spec may read


def test_extends_names_only_spec_files_and_never_echoes_another_file(here, cli):
    """A key: value file that is not a spec used to be parsed and its keys (and values) quoted
    back one per line as unknown keys."""
    (here / "secrets.conf").write_text("api_token: hunter2\npassword: swordfish\n")
    (here / "spec.yaml").write_text("extends: secrets.conf\n" + SPEC)
    line = refused(cli("validate", "spec.yaml"), "extends: secrets.conf is not a .yaml or .yml file")
    assert "api_token" not in line and "hunter2" not in line
    (here / "spec.yaml").write_text("extends: /etc/passwd\n" + SPEC)
    refused(cli("validate", "spec.yaml"), "extends: /etc/passwd is not a .yaml or .yml file")


def test_extends_may_name_a_spec_anywhere(here, cli):
    """Relative paths out of the folder and absolute paths stay allowed: shipped specs use them,
    and a spec file is the user's own input."""
    (here / "base").mkdir()
    (here / "base" / "b.yml").write_text(SPEC)
    (here / "sub").mkdir()
    (here / "sub" / "spec.yaml").write_text("extends: ../base/b.yml\nname: child\n")
    rc, out, err = cli("validate", "sub/spec.yaml")
    assert rc == 0, err
    (here / "sub" / "spec.yaml").write_text(f"extends: {here / 'base' / 'b.yml'}\nname: child\n")
    rc, out, err = cli("validate", "sub/spec.yaml")
    assert rc == 0, err


# ----------------------------------------------------------------------------- sizes past any machine


def test_a_spec_whose_logits_need_terabytes_does_not_validate(here, cli):
    """Every size within its own bound, and the parameters too (a small model): only the
    activations of one micro-batch are past any machine. It used to validate "ok"."""
    (here / "spec.yaml").write_text(SPEC)
    sets = ["model.vocab_size=2000000", "model.max_seq_len=4096", "train.micro_batch=16"]
    line = refused(cli("validate", "spec.yaml", *[a for s in sets for a in ("--set", s)]))
    assert "train.micro_batch: the logits of one micro-batch hold micro_batch x seq_len x vocab_size" in line
    assert "131,072,000,000 values (488 GiB in float32)" in line


def test_attention_scores_past_any_machine_do_not_validate(here, cli):
    (here / "spec.yaml").write_text(SPEC)
    sets = ["model.max_seq_len=262144", "train.micro_batch=64"]
    refused(cli("validate", "spec.yaml", *[a for s in sets for a in ("--set", s)]), "the attention scores")


# ----------------------------------------------------------------------------- a name that shadows a module


@pytest.mark.parametrize(
    ("name", "owner"), [("torch", "a package cartspec uses"), ("math", "the standard library")]
)
def test_a_spec_named_like_a_module_is_refused_and_writes_nothing(here, cli, name, owner):
    """generated/torch.py would shadow torch for any script run from generated/."""
    (here / "spec.yaml").write_text(SPEC.replace("name: hostile", f"name: {name}"))
    refused(cli("compile", "spec.yaml", "-o", "out"), f"spec.yaml:1:1: name: '{name}' is a module of {owner}")
    assert not (here / "out").exists()


# ----------------------------------------------------------------------------- no silent coercion


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("blocks.stack.layers=yes", "blocks.stack.layers: expected an integer, got true"),
        ("train.optimizer.lr=true", "train.optimizer.lr: expected a number, got true"),
        ("train.optimizer.betas=[on, 0.9]", "train.optimizer.betas.0: expected a number, got true"),
        ("train.grad_clip=false", "train.grad_clip: expected a number, got false"),
        ("model.d_model='16'", "model.d_model: input should be a valid integer, got '16'"),
        ("model.d_model=16.0", "model.d_model: input should be a valid integer, got 16.0"),
        ("train.optimizer.lr=.nan", "train.optimizer.lr: expected a finite number, got nan"),
        (
            "train.optimizer.weight_decay=-.inf",
            "train.optimizer.weight_decay: expected a finite number, got -inf",
        ),
        ("train.optimizer.betas=[0.9]", "train.optimizer.betas: too few items: got 1"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_not_coerced(here, cli, override, message):
    """Lax pydantic read loops: yes as R = 1 and lr: true as 1.0; a NaN learning rate was
    reported as "should be less than or equal to 10", and betas: [0.9] as "missing key '1'"."""
    (here / "spec.yaml").write_text(SPEC)
    refused(cli("validate", "spec.yaml", "--set", override), f"--set {override}: {message}")


def test_an_integer_still_reads_as_a_float_and_booleans_stay_booleans(here, cli):
    (here / "spec.yaml").write_text(SPEC)
    sets = [
        "train.optimizer.lr=1",
        "train.optimizer.betas=[0, 0.5]",
        "model.tie_embeddings=no",
        "train.compile=true",
    ]
    rc, out, err = cli("validate", "spec.yaml", *[a for s in sets for a in ("--set", s)])
    assert rc == 0, err


# ----------------------------------------------------------------------------- messages that mislead


def test_an_empty_sweep_file_is_told_what_a_sweep_needs(here, cli):
    """It used to be told a spec's keys (name:, model: and blocks:)."""
    (here / "sweep.yaml").write_text("# nothing yet\n")
    refused(
        cli("sweep", "sweep.yaml", "--dry-run"), "sweep.yaml: empty file, expected a YAML mapping with base:"
    )


def test_an_of_typo_in_a_sweep_without_a_grid_lists_base_once(here, cli):
    (here / "spec.yaml").write_text(SPEC)
    (here / "sweep.yaml").write_text(
        "base: spec.yaml\nextra:\n  - {name: other, of: bsae, set: {model.d_model: 32}}\n"
    )
    line = refused(cli("sweep", "sweep.yaml", "--dry-run"), "extra.0.of: no config 'bsae' before this entry")
    assert line.endswith("(have: base)"), line


def test_an_exponent_without_a_dot_is_a_number(here, cli):
    """YAML 1.1 reads 1e-3 as a string; lax validation used to turn it back into a number, which
    strict validation would not: the loader reads it as the float everyone means."""
    (here / "spec.yaml").write_text(SPEC + "train: {optimizer: {lr: 1e-3}, schedule: {min_lr: 1E-5}}\n")
    rc, out, err = cli("params", "spec.yaml", "--set", "train.optimizer.eps=1e-9")
    assert rc == 0, err
