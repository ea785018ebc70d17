"""Read and write Hugging Face BERT folders (config.json, weights, vocab.txt).

Weights are read with safetensors or `torch.load(weights_only=True)`: nothing is
unpickled. A pretraining run directory (a `latest` file naming a tag folder that
holds config.json + model.safetensors) is accepted wherever a folder is.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bertspeed.model.config import BertConfig
from bertspeed.model.nezha import NOT_HF_NOTE, rename_published_keys
from bertspeed.training.runs import is_run_dir, read_latest

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
ENCODER_PREFIX = "bert."
# Keys that are aliases of another parameter (tied), so never stored twice.
TIED_KEYS = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
             "cls.predictions.decoder.bias": "cls.predictions.bias"}
# Buffers some transformers versions store; they carry no learned value.
IGNORED_SUFFIXES = ("embeddings.position_ids",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model; the message names the key or file."""


@dataclass
class LoadReport:
    source: str
    initialized: list[str] = field(default_factory=list)  # model keys absent from the checkpoint (new heads)
    unused: list[str] = field(default_factory=list)  # checkpoint keys the model has no place for

    def summary(self) -> str:
        lines = [f"loaded {self.source}"]
        if self.initialized:
            lines.append(f"  newly initialised (not in checkpoint): {', '.join(self.initialized)}")
        if self.unused:
            lines.append(f"  unused checkpoint keys: {', '.join(self.unused)}")
        return "\n".join(lines)


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A Hugging Face folder, or the latest checkpoint of one of our pretraining runs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir() and not _has_weights(path) and is_run_dir(path):
        path = path / read_latest(path)
        if not _has_weights(path):
            raise CheckpointError(f"{path}: checkpoint named by 'latest' has no model.safetensors")
    if path.is_dir() and not _has_weights(path):
        raise CheckpointError(f"{path}: no weights file (expected one of {', '.join(WEIGHT_FILES)})")
    return path


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, or of the weights file in a folder. Never unpickles."""
    path = Path(path)
    if path.is_dir():
        path = next(path / name for name in WEIGHT_FILES if (path / name).is_file())
    try:
        if path.name.endswith(".index.json"):
            index = json.loads(path.read_text())["weight_map"]
            state = {}
            for shard in sorted(set(index.values())):
                state.update(load_file(path.parent / shard))
            return state
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).split("WeightsUnpickler error: ")[-1].split(".")[0]
        raise CheckpointError(f"{path}: refused, holds objects other than tensors ({reason})") from None
    except (OSError, RuntimeError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a mapping of parameter names to tensors")
    return state


def _legacy_name(key: str) -> str:
    """Old BERT checkpoints name LayerNorm parameters gamma/beta."""
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


def normalize_keys(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Map a checkpoint's names onto the model's: legacy names, the `bert.` prefix, tied aliases, published
    NEZHA names (`nezha.` prefix; their fixed relative-position tables are recomputed, not loaded)."""
    state, _ = rename_published_keys(state)
    state = {_legacy_name(k): v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    model_has_prefix = any(k.startswith(ENCODER_PREFIX) for k in model_keys)
    ckpt_has_prefix = any(k.startswith(ENCODER_PREFIX) for k in state)
    if model_has_prefix and not ckpt_has_prefix:  # a bare BertModel checkpoint into a model with heads
        state = {ENCODER_PREFIX + k: v for k, v in state.items()}
    elif not model_has_prefix and ckpt_has_prefix:  # a checkpoint with heads into a bare BertModel (heads unused)
        state = {k.removeprefix(ENCODER_PREFIX): v for k, v in state.items()}
    for alias, source in TIED_KEYS.items():
        if alias in model_keys and alias not in state and source in state:
            state[alias] = state[source]
    if "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" in state:
        state["cls.predictions.bias"] = state["cls.predictions.decoder.bias"]
    return state


def is_encoder_key(key: str) -> bool:
    """Embeddings and transformer layers must come from the checkpoint; pooler and heads may not."""
    return key.removeprefix(ENCODER_PREFIX).split(".")[0] in ("embeddings", "encoder")


def load_state_dict_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Copy checkpoint tensors into `model`. Encoder keys must all be present with equal shapes;
    head keys may be missing (reported as newly initialised) or extra (reported as unused)."""
    target = model.state_dict()
    state = normalize_keys(state, set(target))
    _check_vocab(target, state, source)
    report = LoadReport(source)
    for key, param in target.items():
        if key not in state:
            if is_encoder_key(key):
                raise CheckpointError(f"{source}: missing key {key!r} (shape {tuple(param.shape)})")
            if key not in TIED_KEYS:
                report.initialized.append(key)
            continue
        if tuple(state[key].shape) != tuple(param.shape):
            if not is_encoder_key(key) and key not in TIED_KEYS:  # e.g. an MNLI head (3 labels) into RTE (2)
                report.initialized.append(f"{key} (shape {tuple(state[key].shape)} in the checkpoint)")
                del state[key]
                continue
            raise CheckpointError(f"{source}: key {key!r} has shape {tuple(state[key].shape)} in the "
                                  f"checkpoint but {tuple(param.shape)} in the model")
    report.unused = sorted(k for k in state if k not in target)
    loadable = {k: v for k, v in state.items() if k in target}
    model.load_state_dict(loadable, strict=False)
    return report


def _check_vocab(target, state, source):
    key = next((k for k in target if k.endswith("word_embeddings.weight")), None)
    if key and key in state and state[key].shape[0] != target[key].shape[0]:
        raise CheckpointError(f"{source}: vocab size mismatch at {key!r}: checkpoint has "
                              f"{state[key].shape[0]} rows, model config has vocab_size {target[key].shape[0]}")


def from_pretrained(model_class, path, **config_changes):
    """Build `model_class` from a folder's config.json and load its weights.
    Returns (model, report); the report lists heads created or weights left unused."""
    folder = resolve_model_dir(path)
    config = BertConfig.from_json_file(folder / "config.json")
    if config_changes:
        config = config.replace(**config_changes)
    model = model_class(config)
    return model, load_weights(model, read_state_dict(folder), str(folder))


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """load_state_dict_into, then the MLM decoder tied to the word embeddings again (models that have one)."""
    report = load_state_dict_into(model, state, source)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return report


def export_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp32 contiguous tensors, tied aliases dropped (Hugging Face re-ties them on load)."""
    state = {}
    for key, value in model.state_dict().items():
        if key in TIED_KEYS:
            continue
        state[key] = value.detach().to("cpu", torch.float32 if value.is_floating_point() else value.dtype).contiguous()
    return state


def save_hf_folder(output_dir, config: BertConfig, state: dict[str, torch.Tensor], vocab_file=None,
                   architecture: str = "BertForPreTraining", do_lower_case: bool | None = None) -> Path:
    """Write config.json, model.safetensors and, with a vocab, vocab.txt + tokenizer_config.json +
    special_tokens_map.json; the folder appears whole or not at all. The casing is `do_lower_case`, else
    that of the tokenizer_config.json beside `vocab_file`, else the vocab's own (bertspeed.model.tokenizer_config)."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared
    try:
        fields = config.to_dict()
        fields["architectures"] = [architecture]
        (tmp / "config.json").write_text(json.dumps(fields, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / "model.safetensors",
                  metadata={"format": "pt"})
        if config.is_nezha:  # model_type nezha already stops transformers' Auto classes; say why
            (tmp / "README.md").write_text(f"# NEZHA model written by bertspeed\n\n{NOT_HF_NOTE}\n")
        if vocab_file is not None:
            shutil.copyfile(vocab_file, tmp / "vocab.txt")
            _write_tokenizer_files(tmp, Path(vocab_file), do_lower_case, config.max_position_embeddings)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def _write_tokenizer_files(folder: Path, vocab_file: Path, do_lower_case, max_length: int) -> None:
    from bertspeed.model.tokenizer import read_vocab
    from bertspeed.model.tokenizer_config import decide_do_lower_case, write_tokenizer_files
    if do_lower_case is None:
        do_lower_case = decide_do_lower_case(read_vocab(vocab_file), vocab_file, folder=vocab_file.parent)
    write_tokenizer_files(folder, do_lower_case, max_length)


def save_pretrained(model, output_dir, vocab_file=None, do_lower_case: bool | None = None) -> Path:
    return save_hf_folder(output_dir, model.config, export_state_dict(model), vocab_file,
                          architecture=type(model).__name__, do_lower_case=do_lower_case)


def find_vocab(folder) -> Path | None:
    candidate = Path(folder) / "vocab.txt"
    return candidate if candidate.is_file() else None
