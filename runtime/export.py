"""``cartspec export RUN OUT --format hf``: a trained run as a transformers model folder.

The folder holds ``config.json`` (with ``auto_map``), ``modeling_cartspec.py`` and
``configuration_cartspec.py`` (from ``runtime/hf``), the run's own ``model.py`` as
``cartspec_model.py`` (the code that was trained, byte for byte), ``model.safetensors`` (the
newest checkpoint's weights under ``model.``), ``generation_config.json`` and the tokenizer as a
``PreTrainedTokenizerFast`` (``tokenizer.json``, which prepends BOS as training did, and
``tokenizer_config.json``). ``AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)``
loads it without cartspec. The folder is written beside OUT and renamed into place, so a failed
export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from cartspec.errors import UserError
from cartspec.runtime.trained import TrainedRun, load_run

FORMATS = ("hf",)
HF_FILES = ("configuration_cartspec.py", "modeling_cartspec.py")
GENERATED_FILE = "cartspec_model.py"  # the name modeling_cartspec.py imports the generated model by


@dataclass(frozen=True)
class Exported:
    out: Path
    name: str
    checkpoint: Path
    files: list[str]


def check_export_args(out: Path, fmt: str) -> None:
    """Refuse before loading anything: an unknown format, an OUT in the way, transformers missing."""
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; pick a new folder to export into")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty; pick a new folder to export into")
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UserError(
            "export --format hf needs transformers: pip install 'cartspec[hf]' (torch==2.13.0 on a CPU)"
        ) from None


def export_hf(run_dir: Path, out: Path) -> Exported:
    """Write the run's newest checkpoint as a transformers model folder at ``out``."""
    run = load_run(run_dir, torch.device("cpu"))
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_model(run, tmp)
        if run.tokenizer is not None:
            _write_tokenizer(run, tmp)
        if out.is_dir():
            out.rmdir()  # empty (checked): the finished folder takes its place
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Exported(out, run.resolved.spec.name, run.checkpoint, sorted(p.name for p in out.iterdir()))


def _write_model(run: TrainedRun, folder: Path) -> None:
    from transformers import GenerationConfig

    from cartspec.runtime.hf.configuration_cartspec import CartspecConfig

    spec, model = run.resolved.spec, run.model
    generated = model.config  # the generated Config: the spec's sizes
    config = CartspecConfig(
        model_config={f.name: getattr(generated, f.name) for f in dataclasses.fields(generated)},
        loops=spec.blocks.core.loops if spec.blocks.core is not None else None,
        spec_name=spec.name,
        architecture_sha256=run.resolved.sha256,
        architectures=["CartspecForCausalLM"],
        **_special_ids(run),
    )
    config.auto_map = {
        "AutoConfig": "configuration_cartspec.CartspecConfig",
        "AutoModelForCausalLM": "modeling_cartspec.CartspecForCausalLM",
    }
    config.save_pretrained(folder)
    generation = GenerationConfig(**_special_ids(run), suppress_tokens=_unused_ids(run))
    generation.save_pretrained(folder)
    weights = {f"model.{name}": t.detach().contiguous() for name, t in _unique_state(model).items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _as_umask_allows(folder / "model.safetensors")  # safetensors writes 0600 whatever the umask
    (folder / GENERATED_FILE).write_bytes(run.source)
    here = Path(__file__).parent / "hf"
    for name in HF_FILES:
        shutil.copyfile(here / name, folder / name)


def _as_umask_allows(path: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o666 & ~mask)


def _special_ids(run: TrainedRun) -> dict[str, int]:
    tok = run.tokenizer
    if tok is None:
        return {}
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.eos_id}


def _unused_ids(run: TrainedRun) -> list[int] | None:
    """Ids the model has rows for but the tokenizer never makes: generate never picks them, as
    ``cartspec sample`` only reads the tokenizer's part of the logits."""
    if run.tokenizer is None or run.tokenizer.vocab_size >= run.resolved.spec.model.vocab_size:
        return None
    return list(range(run.tokenizer.vocab_size, run.resolved.spec.model.vocab_size))


def _unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor once, under its first name (safetensors stores no
    aliases; the wrapper's modules share them again as the generated model builds them)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out[name] = tensor
    return out


def _write_tokenizer(run: TrainedRun, folder: Path) -> None:
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from cartspec.runtime.tokenizer import tokenizers_core

    tok = run.tokenizer
    assert tok is not None
    core = tokenizers_core(tok)
    bos, eos = core.id_to_token(tok.bos_id), core.id_to_token(tok.eos_id)
    core.post_processor = TemplateProcessing(  # BOS first, as every training document began
        single=f"{bos} $A",
        pair=f"{bos} $A {eos} {bos} $B",
        special_tokens=sorted({(bos, tok.bos_id), (eos, tok.eos_id)}),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos,
        eos_token=eos,
        pad_token=eos,
        model_max_length=run.resolved.spec.model.max_seq_len,
    )
    fast.save_pretrained(str(folder))
