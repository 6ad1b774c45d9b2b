"""``cartspec export RUN OUT --format hf``: the folder loads through transformers alone (offline,
trust_remote_code), its logits are cartspec's, and greedy ``generate`` writes ``cartspec sample``'s
tokens, with the generated model's cache and without; bad input is one line and exit code 2."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from test_train_cli import assert_clean_error, one_thread  # noqa: F401 (one torch thread, autouse)

from cartspec.runtime.decode import Decoding, Sampling, decode
from cartspec.runtime.trained import TrainedRun, load_run

transformers = pytest.importorskip("transformers")

PROMPT = "and the lord said unto him"
NEW_TOKENS = 40  # past the window of 32: generation slides it, as sample does


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def exported(
    tiny_run, cli, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, TrainedRun, object]]:
    """Each kind exported through the CLI and loaded back: (export folder, the run, the HF model)."""
    from transformers import AutoModelForCausalLM

    out = {}
    for kind in ("cart", "dense"):
        folder = tmp_path_factory.mktemp("export") / f"{kind}_hf"
        rc, stdout, stderr = cli("export", str(tiny_run(kind)), str(folder), "--format", "hf")
        assert rc == 0, stderr
        assert f"wrote {folder}" in stdout
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
        out[kind] = (folder, load_run(tiny_run(kind), torch.device("cpu")), model)
    return out


def test_export_is_a_transformers_folder_with_the_run_code(exported, tiny_run):
    folder, run, model = exported["cart"]
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_cartspec.py", "tokenizer.json"} <= names
    assert (folder / "cartspec_model.py").read_bytes() == (tiny_run("cart") / "model.py").read_bytes()
    assert type(model).__name__ == "CartspecForCausalLM" and model.config.loops == 4
    for name in ("modeling_cartspec.py", "configuration_cartspec.py", "cartspec_model.py"):
        assert imported_packages(folder / name) <= STANDALONE, name


STANDALONE = {"__future__", "dataclasses", "math", "typing", "torch", "transformers", "."}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a file imports ("." for its neighbours in the export)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." if node.level else node.module.split(".")[0])
    return found


@pytest.mark.parametrize("kind", ["cart", "dense"])
def test_logits_equal_cartspec(exported, kind):
    _, run, model = exported[kind]
    ids = torch.randint(0, 258, (2, 32), generator=torch.Generator().manual_seed(0))
    loop_counts = [None, 1, 8] if kind == "cart" else [None]
    with torch.no_grad():
        for loops in loop_counts:
            kw = {} if loops is None else {"loops": loops}
            theirs = model(ids, **kw).logits
            ours, _ = run.model(ids, **kw)
            assert (theirs - ours).abs().max().item() <= 1e-5, loops


def test_config_loops_is_the_default_loop_count(exported):
    _, run, model = exported["cart"]
    ids = torch.tensor([[256, *PROMPT.encode()]])
    model.config.loops = 2
    try:
        with torch.no_grad():
            assert torch.equal(model(ids).logits, run.model(ids, loops=2)[0])
    finally:
        model.config.loops = 4


@pytest.mark.parametrize(("kind", "loops"), [("cart", None), ("cart", 2), ("dense", None)])
def test_greedy_generate_writes_the_tokens_of_cartspec_decoding(exported, kind, loops):
    folder, run, model = exported[kind]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert ids[0].tolist() == [run.tokenizer.bos_id, *run.tokenizer.encode(PROMPT)]
    ours = decode(
        run.model,
        ids[0].tolist(),
        NEW_TOKENS,
        window=run.resolved.spec.model.max_seq_len,
        vocab=run.tokenizer.vocab_size,
        stop=run.tokenizer.eos_id,
        sampling=Sampling(temperature=0),
        decoding=Decoding(loops),
    ).ids
    kw = {} if loops is None else {"loops": loops}
    for use_cache in (True, False):
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=use_cache, **kw)
        theirs = out[0, ids.size(1) :].tolist()
        assert theirs[: len(ours)] == ours and theirs[len(ours) :] in ([], [run.tokenizer.eos_id]), use_cache


def test_generate_text_is_cartspec_sample_text(exported, tiny_run, cli):
    folder, _, model = exported["dense"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    out = model.generate(tokenizer(PROMPT, return_tensors="pt").input_ids, max_new_tokens=20, do_sample=False)
    args = (
        "sample",
        str(tiny_run("dense")),
        "--prompt",
        PROMPT,
        "--temperature",
        "0",
        "--max-new-tokens",
        "20",
    )
    rc, stdout, stderr = cli(*args, "--device", "cpu")
    assert rc == 0, stderr
    assert tokenizer.decode(out[0], skip_special_tokens=True) == stdout.rstrip("\n")


@pytest.mark.parametrize("kind", ["cart", "dense"])
def test_exported_tokenizer_encodes_and_decodes_as_the_run(exported, kind):
    folder, run, _ = exported[kind]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    for text in ["and the lord said", "  unto him\n\tin that day ", "héllo wörld, 日本 🎉", ""]:
        ids = run.tokenizer.encode(text)
        assert tokenizer(text).input_ids == [run.tokenizer.bos_id, *ids], text
        assert tokenizer.decode(ids) == run.tokenizer.decode(ids)
    assert tokenizer.eos_token_id == run.tokenizer.eos_id


def test_generate_refuses_padding_and_a_dense_model_refuses_loops(exported):
    _, _, looped = exported["cart"]
    _, _, dense = exported["dense"]
    ids = torch.tensor([[256, 97, 98], [256, 99, 100]])
    with pytest.raises(ValueError, match="attention mask"):
        looped.generate(ids, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="no loop"):
        dense(ids, loops=2)


def test_export_bad_input_is_one_line(tiny_run, tmp_path, cli, monkeypatch):
    run = str(tiny_run("cart"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert_clean_error(cli("export", str(tmp_path / "nope"), str(tmp_path / "o1")), "no such run directory")
    assert_clean_error(cli("export", run, str(full)), str(full), "not empty")
    assert_clean_error(cli("export", run, str(a_file)), "not a folder")
    assert_clean_error(cli("export", run, str(tmp_path / "o2"), "--format", "gguf"), "--format", "gguf")
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert_clean_error(cli("export", run, str(tmp_path / "o3")), "cartspec[hf]")
    assert not any(p.name.startswith(("o", ".o")) for p in tmp_path.iterdir())
