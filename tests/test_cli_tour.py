"""A tour of bad input at the CLI: missing, empty, binary, huge and hostile spec files, unwritable
outputs, corrupt checkpoints, stale temporary files and racing compiles. Each ends in exit code 2
(or 0 where it must succeed) with one clear line, no traceback, and nothing lost.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer.main
from click.testing import CliRunner
from safetensors.torch import save_model

from cartspec.cli import app
from cartspec.errors import UserError
from cartspec.runtime import checkpoint

ROOT = Path(__file__).resolve().parents[1]
CART_TINY = ROOT / "specs" / "tiny" / "cart_tiny.yaml"
SPEC = """\
name: tour
model: {vocab_size: 40, d_model: 16, max_seq_len: 8, head_dim: 8}
blocks: {stack: {layers: 1, attention: {kind: mha}}}
"""
ONE_LINE = re.compile(r"^[^\n]+: \S[^\n]*$")


@functools.cache
def command():
    return typer.main.get_command(app)


def cli(*args: str, env: dict[str, str] | None = None):
    """The real CLI in-process; an internal error re-raises with its traceback."""
    result = CliRunner().invoke(command(), list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def refused(result, *fragments: str) -> str:
    """Exit code 2, one clear line on stderr holding every fragment, no traceback; the line."""
    out = result.stdout + result.stderr
    assert result.exit_code == 2, (result.exit_code, out)
    assert "Traceback" not in out
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and ONE_LINE.match(lines[0]), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------- spec files


@pytest.mark.parametrize("command", ["validate", "params", "graph", "compile"])
def test_a_missing_spec_file_is_one_line(here, command):
    assert refused(cli(command, "nope.yaml"), "no such file") == "nope.yaml: no such file"


def test_an_empty_spec_file_is_one_line(here):
    (here / "spec.yaml").write_text("")
    refused(cli("validate", "spec.yaml"), "spec.yaml: ", "empty file")


def test_a_comment_only_spec_file_is_empty(here):
    (here / "spec.yaml").write_text("# nothing here\n\n")
    refused(cli("validate", "spec.yaml"), "empty file")


def test_a_binary_spec_file_is_one_line(here):
    (here / "spec.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    refused(cli("validate", "spec.yaml"), "spec.yaml: ", "not UTF-8")
    (here / "spec.yaml").write_bytes(SPEC.encode() + b"\x00\x01\x02")
    refused(cli("validate", "spec.yaml"), "spec.yaml: ", "binary file")


def test_a_spec_file_over_a_mebibyte_is_refused_unread(here):
    (here / "spec.yaml").write_text(SPEC + "# padding\n" * 120_000)
    refused(cli("validate", "spec.yaml"), "spec.yaml: ", "bytes; a spec may be at most 1,048,576")


def billion_laughs(levels: int = 10) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_fails_fast(here):
    (here / "spec.yaml").write_text(SPEC + billion_laughs())
    start = time.perf_counter()
    result = cli("validate", "spec.yaml")
    assert time.perf_counter() - start < 2.0
    refused(result, "spec.yaml:", "alias bomb")


def test_an_alias_bomb_in_a_set_value_fails_fast(here):
    (here / "spec.yaml").write_text(SPEC)
    bomb = "[" + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9))
    value = "[&a0 [1, 2, 3, 4, 5, 6, 7, 8, 9], " + bomb[1:] + "]"
    start = time.perf_counter()
    result = cli("validate", "spec.yaml", "--set", f"description={value}")
    assert time.perf_counter() - start < 2.0
    refused(result, "description: input should be a valid string")


def test_yaml_nested_thousands_deep_fails_fast_in_one_line(here):
    (here / "spec.yaml").write_text("name: x\nmodel: " + "[" * 400_000 + "]" * 400_000 + "\n")
    start = time.perf_counter()
    refused(cli("validate", "spec.yaml"), "spec.yaml:2:", "nested too deeply")
    assert time.perf_counter() - start < 2.0
    blocks = "".join(" " * i + "a:\n" for i in range(1, 1200))  # block mappings, 1199 deep
    (here / "spec.yaml").write_text("name: x\nmodel:\n" + blocks)
    refused(cli("validate", "spec.yaml"), "spec.yaml: ", "nested too deeply")
    (here / "spec.yaml").write_text(SPEC)
    refused(cli("validate", "spec.yaml", "--set", "description=" + "[" * 5000), "nested too deeply")


def test_a_directory_where_a_spec_file_is_expected(here):
    (here / "specs").mkdir()
    refused(cli("validate", "specs"), "specs: is a directory")
    (here / "spec.yaml").write_text("extends: specs\n" + SPEC)
    refused(cli("validate", "spec.yaml"), "is a directory")


def test_a_file_where_the_output_folder_is_expected(here):
    (here / "spec.yaml").write_text(SPEC)
    (here / "some_file").write_text("not a folder\n")
    refused(cli("compile", "spec.yaml", "-o", "some_file/sub"), "some_file/sub", "cannot write there")
    refused(cli("compile", "spec.yaml", "-o", "some_file"), "cannot write there")
    assert (here / "some_file").read_text() == "not a folder\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_output_folder(here):
    (here / "spec.yaml").write_text(SPEC)
    (here / "out").mkdir(mode=0o500)
    try:
        refused(cli("compile", "spec.yaml", "-o", "out"), "cannot write there")
    finally:
        (here / "out").chmod(0o700)


def test_a_directory_at_the_generated_file_path(here):
    (here / "spec.yaml").write_text(SPEC)
    (here / "out" / "tour.py").mkdir(parents=True)
    refused(cli("compile", "spec.yaml", "-o", "out"), "tour.py")


def test_a_failed_compile_leaves_the_existing_generated_file_untouched(here):
    (here / "spec.yaml").write_text(SPEC)
    assert cli("compile", "spec.yaml", "-o", "out").exit_code == 0
    target = here / "out" / "tour.py"
    before, stamp = target.read_bytes(), target.stat().st_mtime_ns
    (here / "spec.yaml").write_text(SPEC.replace("d_model: 16", "d_model: 17"))
    refused(cli("compile", "spec.yaml", "-o", "out"), "spec.yaml:2:", "not divisible")
    assert target.read_bytes() == before and target.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (here / "out").iterdir()) == ["tour.py"]


def test_a_stale_temporary_file_is_never_taken_for_the_generated_file(here):
    (here / "spec.yaml").write_text(SPEC)
    assert cli("compile", "spec.yaml", "-o", "out").exit_code == 0
    good = (here / "out" / "tour.py").read_text()
    stale = here / "out" / ".tour.py.k1ll3d.tmp"  # what a compile killed mid-write leaves
    stale.write_text(good[: len(good) // 2])
    assert cli("compile", "spec.yaml", "-o", "out", "--check").exit_code == 0
    result = cli("compile", "spec.yaml", "-o", "out")
    assert result.exit_code == 0 and "unchanged" in result.stdout
    assert (here / "out" / "tour.py").read_text() == good


def test_a_spec_path_with_a_newline_cannot_inject_code(here):
    folder = here / "x\nimport os\nos.system('echo pwned')\n#"
    folder.mkdir()
    (folder / "spec.yaml").write_text(SPEC)
    result = cli("compile", str(folder / "spec.yaml"), "-o", "out")
    assert result.exit_code == 0, result.stderr
    source = (here / "out" / "tour.py").read_text()
    tree = ast.parse(source)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "os" not in imported
    assert "\nimport os" not in source and "\\nimport os" in source.splitlines()[0]


def test_two_compiles_racing_into_one_folder_both_succeed_with_complete_files(tmp_path):
    specs = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "specs").glob("*.yaml"))]
    specs += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "specs" / "tiny").glob("*.yaml"))]
    single, raced = tmp_path / "single", tmp_path / "raced"
    run = [sys.executable, "-m", "cartspec", "compile", *specs, "-o"]
    subprocess.run([*run, str(single)], cwd=ROOT, check=True, capture_output=True, timeout=120)
    racers = [
        subprocess.Popen([*run, str(raced)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for p in racers:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    names = sorted(p.name for p in single.iterdir())
    assert sorted(p.name for p in raced.iterdir()) == names  # no temporary file left behind
    for name in names:
        assert (raced / name).read_bytes() == (single / name).read_bytes(), name


# ----------------------------------------------------------------------------- runs and checkpoints

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "that",
    "he",
    "shall",
    "unto",
    "for",
    "his",
    "a",
    "lord",
    "they",
    "be",
    "is",
    "him",
    "not",
    "them",
    "it",
    "with",
    "all",
]
TINY = [
    "model.d_model=32",
    "model.head_dim=16",
    "model.vocab_size=300",
    "model.max_seq_len=16",
    "train.seq_len=16",
    "train.micro_batch=2",
    "train.steps=2",
    "train.data.tokenizer=bytes",
    "train.schedule.warmup=1",
    "train.eval.batches=2",
    "train.eval.interval=1",
    "train.checkpoint.interval=1",
    "train.checkpoint.keep=2",
    "train.log_interval=1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A CART trained for 2 steps on a small local corpus: checkpoints at steps 1 and 2."""
    root = tmp_path_factory.mktemp("tour_run")
    corpus = root / "corpus.txt"
    rng = __import__("random").Random(0)
    corpus.write_text("\n\n".join(" ".join(rng.choices(WORDS, k=60)) for _ in range(40)))
    env = {"CARTSPEC_CACHE": str(root / "cache")}
    sets = [*TINY, f"train.data.source={corpus}"]
    args = [a for s in sets for a in ("--set", s)]
    result = cli("train", str(CART_TINY), *args, "--out", str(root / "run"), "--device", "cpu", env=env)
    assert result.exit_code == 0, result.stdout + result.stderr
    run = root / "run"
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["step_0000001", "step_0000002"]
    return {"run": run, "env": env, "args": args, "root": root}


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run for one test to break."""
    copy = tmp_path / "run"
    shutil.copytree(trained["run"], copy)
    return copy


def evaluate(run: Path, env: dict):
    result = cli("eval", str(run), "--device", "cpu", "--json", env=env)
    return result, (json.loads(result.stdout)["rows"][0]["val_loss"] if result.exit_code == 0 else None)


def resume(trained: dict, run: Path, at: str):
    return cli(
        "train", str(CART_TINY), *trained["args"], "--out", str(run), "--device", "cpu", "--resume", at,
        env=trained["env"],
    )  # fmt: skip


def step(run: Path, n: int) -> Path:
    return run / "checkpoints" / f"step_{n:07d}"


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_a_corrupt_newest_checkpoint_is_refused_by_resume_and_skipped_by_eval(trained, run, how):
    corrupt(step(run, 2) / "model.safetensors", how)
    refused(resume(trained, run, str(step(run, 2))), "step_0000002", "corrupt checkpoint")
    result, loss = evaluate(run, trained["env"])  # the newest checkpoint that reads back: step 1
    assert result.exit_code == 0, result.stderr
    shutil.rmtree(step(run, 2))
    assert evaluate(run, trained["env"])[1] == loss
    corrupt(step(run, 1) / "model.safetensors", how)
    refused(evaluate(run, trained["env"])[0], "no valid checkpoint")


def test_a_checkpoint_without_state_json_is_not_a_checkpoint(trained, run):
    (step(run, 2) / "state.json").unlink()
    refused(resume(trained, run, str(step(run, 2))), "not a checkpoint (no state.json)")
    (step(run, 1) / "state.json").write_text('{"format": 1, "step": ')
    refused(resume(trained, run, str(step(run, 1))), "state.json: corrupt checkpoint")
    refused(evaluate(run, trained["env"])[0], "no valid checkpoint")


def test_resuming_a_run_with_another_spec_is_refused(trained, run):
    other = cli(
        "train", str(CART_TINY), *trained["args"], "--set", "blocks.core.loops=2", "--out", str(run),
        "--device", "cpu", "--resume", "auto", env=trained["env"],
    )  # fmt: skip
    refused(other, "different spec")


def test_weights_of_another_model_are_refused(trained, run):
    from cartspec.resolve import resolve
    from cartspec.runtime.generated import compiled_module

    other = resolve(CART_TINY, [*TINY, "model.d_model=48"])
    module, _ = compiled_module(other, run.parent / "other")
    for n in (1, 2):
        save_model(module.Model(), str(step(run, n) / "model.safetensors"))
    refused(evaluate(run, trained["env"])[0], "do not fit this model")


def test_a_pickle_in_place_of_safetensors_is_never_unpickled(trained, run, tmp_path):
    marker = tmp_path / "UNPICKLED"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    payload = pickle.dumps({"embedding.weight": Payload()})
    for n in (1, 2):
        (step(run, n) / "model.safetensors").write_bytes(payload)
    refused(resume(trained, run, str(step(run, 2))), "corrupt checkpoint")
    refused(evaluate(run, trained["env"])[0], "no valid checkpoint")
    torch.save({"embedding.weight": Payload()}, step(run, 1) / "model.safetensors")
    with pytest.raises(UserError, match="corrupt checkpoint"):
        checkpoint.load_weights(step(run, 1), torch.nn.Linear(2, 2))
    assert not marker.exists()


def test_checkpoints_are_read_without_pickle():
    source = (ROOT / "runtime" / "checkpoint.py").read_text()
    assert "torch.load" not in source and "import pickle" not in source
    assert "safetensors" in source


def test_a_stale_checkpoint_folder_is_never_taken_for_a_checkpoint(trained, run):
    _, loss = evaluate(run, trained["env"])
    stale = run / "checkpoints" / ".step_0000003.999.tmp"  # a save killed before its rename
    stale.mkdir()
    (stale / "state.json").write_text('{"format": 1, "step": 3}')
    (stale / "model.safetensors").write_bytes(b"half a file")
    assert evaluate(run, trained["env"])[1] == loss
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["step_0000001", "step_0000002"]


def test_a_damaged_token_cache_is_rebuilt_not_read(trained, run):
    _, loss = evaluate(run, trained["env"])
    (cache,) = (Path(trained["env"]["CARTSPEC_CACHE"]) / "tokens").iterdir()
    # what a damaged disk or a copy cut short leaves: a cut file, and stray temps of killed writers
    whole = cache.stat().st_size
    cache.write_bytes(cache.read_bytes()[:200])
    (cache.parent / f".{cache.name}.999.dead.tmp").write_bytes(os.urandom(64))
    result, again = evaluate(run, trained["env"])
    assert again == loss
    assert f"warning: token cache {cache} is damaged" in result.stderr
    assert cache.stat().st_size == whole
