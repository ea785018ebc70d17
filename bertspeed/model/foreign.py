"""Checkpoints other toolkits wrote, under our (= Hugging Face) parameter names.

- Google BERT TensorFlow checkpoints (bert_model.ckpt.index + .data-*, bert_config.json, vocab.txt),
  pretrained or finetuned (`cls/squad/output_*` = SQuAD, top-level `output_*` = run_classifier.py),
  read by bertspeed.model.tf_checkpoint without TensorFlow. Adam slots and global_step are skipped and
  reported. Google's "gelu" is the tanh approximation, so the config says gelu_new.
- NVIDIA DeepLearningExamples `.pt` files ({"model": state_dict, "optimizer": ..., "files": ...}),
  `dense_act` layer names, with or without DDP's `module.` prefix, read with weights_only or, when the file
  holds other objects, with bertspeed.model.restricted_pickle (objects replaced unexecuted, reported).
- Hugging Face folders and our run directories, as bertspeed.model.checkpoint reads them.

open_checkpoint() gives any of these as an Opened: config, state dict, the folder of its vocab, notes.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bertspeed.model.architectures import model_class_for
from bertspeed.model.checkpoint import (
    ENCODER_PREFIX,
    TIED_KEYS,
    CheckpointError,
    find_vocab,
    load_weights,
    read_state_dict,
    resolve_model_dir,
)
from bertspeed.model.config import BertConfig

TF_SKIPPED = re.compile(r"(^|/)(global_step|adam_m|adam_v)$")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
STATE_KEYS = ("model", "state_dict", "module")  # NVIDIA, Lightning-style, DeepSpeed mp_rank files


@dataclass
class Opened:
    """A checkpoint read into memory under our names."""
    source: str
    config: BertConfig
    state: dict[str, torch.Tensor]
    folder: Path | None = None  # where vocab.txt and tokenizer_config.json are looked for
    vocab: Path | None = None
    notes: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # our key -> the name in the source, where it differs
    foreign: bool = False  # not a Hugging Face folder or one of our runs: every variable must fit (check_shapes)
    name_for_missing: Callable[[str], str] | None = None  # our key -> the source's name for one it lacks

    def name_of(self, key: str) -> str:
        if key in self.names:
            return self.names[key]
        return self.name_for_missing(key) if self.name_for_missing else key


# ---- Google TensorFlow names ----------------------------------------------------------------------
TF_HEADS = {"cls/predictions/output_bias": "cls.predictions.bias",
            "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
            "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
            "cls/squad/output_weights": "qa_outputs.weight", "cls/squad/output_bias": "qa_outputs.bias",
            "output_weights": "classifier.weight", "output_bias": "classifier.bias"}
TF_LEAVES = {"kernel": "weight", "gamma": "weight", "beta": "bias", "bias": "bias"}


def tf_key(name: str) -> tuple[str, bool] | None:
    """(our key, transpose?) for a TF variable name, None when it is not a BERT variable."""
    if name in TF_HEADS:
        return TF_HEADS[name], False
    if not name.startswith(("bert/", "cls/predictions/transform/")):
        return None
    *path, leaf = name.split("/")
    path = [f"layer.{p[6:]}" if re.fullmatch(r"layer_\d+", p) else p for p in path]
    if leaf.endswith("_embeddings"):
        return ".".join(path + [leaf, "weight"]), False
    if leaf not in TF_LEAVES:
        return None
    return ".".join(path + [TF_LEAVES[leaf]]), leaf == "kernel"  # TF kernels are (in, out)


def tf_name(key: str) -> str:
    """The TF variable name of our key (the inverse of tf_key), for messages about missing variables."""
    heads = {ours: name for name, ours in TF_HEADS.items()}
    if key in heads:
        return heads[key]
    *path, leaf = key.split(".")
    path = "/".join(path).replace("layer/", "layer_").split("/")
    if path[-1].endswith("_embeddings"):
        return "/".join(path)
    names = {"weight": "gamma", "bias": "beta"} if path[-1] == "LayerNorm" else {"weight": "kernel", "bias": "bias"}
    return "/".join(path + [names[leaf]])


def read_tf(prefix: Path, config: BertConfig, config_path: Path) -> Opened:
    from bertspeed.model.tf_checkpoint import BundleReader
    reader = BundleReader(prefix)
    skipped = {name for name in reader.entries if TF_SKIPPED.search(name)}
    mapped = {name: tf_key(name) for name in sorted(reader.entries) if name not in skipped}
    unknown = [name for name, ours in mapped.items() if ours is None]
    if unknown:  # before any data is read
        raise CheckpointError(f"{reader.index}: unknown variables {', '.join(unknown)} (not BERT variables we can map)")
    state, names = {}, {}
    for name, (key, transpose) in mapped.items():
        tensor = reader.tensor(name)
        state[key], names[key] = (tensor.t().contiguous() if transpose else tensor), name
    notes = [f"skipped {len(skipped)} optimizer variables (Adam slots, global_step)"] if skipped else []
    changes = {}
    if config.hidden_act == "gelu":
        changes["hidden_act"] = "gelu_new"
        notes.append(f"{config_path}: hidden_act gelu -> gelu_new (Google's BERT computes gelu with the tanh "
                     "approximation)")
    if "classifier.weight" in state:
        changes["num_labels"] = state["classifier.weight"].shape[0]
    return Opened(str(reader.index), config.replace(**changes), state, notes=notes, names=names, foreign=True,
                  name_for_missing=tf_name)


# ---- NVIDIA DeepLearningExamples (and other torch.save) files -------------------------------------
def read_torch_file(path: Path, config: BertConfig) -> Opened:
    obj, notes = _load_torch(path)
    state = _state_dict_in(obj, path, notes)
    renamed, names = {}, {}
    for key, tensor in state.items():
        ours = key.removeprefix("module.").replace(".dense_act.", ".dense.")
        renamed[ours] = tensor.detach().clone() if isinstance(tensor, torch.nn.Parameter) else tensor
        if ours != key:
            names[ours] = key
    _unpad_vocab(renamed, config.vocab_size, path, notes)
    return Opened(str(path), config, renamed, notes=notes, names=names, foreign=True)


def _load_torch(path: Path) -> tuple[object, list[str]]:
    """weights_only first; a file it refuses goes through the restricted unpickler (objects reported)."""
    from bertspeed.model.restricted_pickle import restricted_load
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except Exception:  # noqa: BLE001 - refused objects (or an unreadable file): the restricted loader decides
        pass
    try:
        obj, replaced = restricted_load(path)
    except Exception as e:  # noqa: BLE001 - any failure of a foreign file is bad input
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint ({type(e).__name__}: {e})") from None
    return obj, [f"{path}: objects not loaded (never executed): {', '.join(replaced)}"] if replaced else []


def _state_dict_in(obj, path: Path, notes: list[str]) -> dict:
    """The mapping of names to tensors: the object itself, or its "model" / "state_dict" / "module" entry."""
    if isinstance(obj, dict) and not _all_tensors(obj):
        holder = next((k for k in STATE_KEYS if isinstance(obj.get(k), dict)), None)
        if holder is None:
            raise CheckpointError(f"{path}: no state dict of tensors (top-level keys {', '.join(map(str, obj))})")
        others = [str(k) for k in obj if k != holder]
        if others:
            notes.append(f"{path}: weights from {holder!r}; skipped {', '.join(others)}")
        obj = obj[holder]
    if not isinstance(obj, dict) or not _all_tensors(obj):
        bad = [str(k) for k, v in (obj.items() if isinstance(obj, dict) else []) if not torch.is_tensor(v)]
        raise CheckpointError(f"{path}: not a mapping of parameter names to tensors ({', '.join(bad[:5])})")
    return obj


def _all_tensors(mapping: dict) -> bool:
    return bool(mapping) and all(torch.is_tensor(v) for v in mapping.values())


def _unpad_vocab(state: dict, vocab_size: int, path: Path, notes: list[str]) -> None:
    """NVIDIA's modeling.py pads the vocabulary to a multiple of 8 rows; the rows past vocab_size go."""
    key = next((k for k in state if k.endswith("word_embeddings.weight")), None)
    rows = state[key].shape[0] if key else vocab_size
    if rows % 8 or not 0 < rows - vocab_size < 8:
        return
    for k in list(state):
        if k.endswith(("word_embeddings.weight", "predictions.bias", "decoder.weight", "decoder.bias")):
            state[k] = state[k][:vocab_size].clone()
    notes.append(f"{path}: vocabulary padded to {rows} rows (a multiple of 8); rows past vocab_size {vocab_size} dropped")


# ---- finding the parts --------------------------------------------------------------------------
def _tf_prefix(path: Path) -> Path | None:
    """The checkpoint prefix when PATH is a TF checkpoint (prefix, .index file, or folder holding one)."""
    if path.name.endswith(".index") and path.is_file():
        return path.with_name(path.name.removesuffix(".index"))
    if not path.exists() and path.with_name(path.name + ".index").is_file():
        return path
    if path.is_dir():
        state_file = path / "checkpoint"  # TF's own pointer to the newest checkpoint
        if state_file.is_file():
            match = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state_file.read_text(), re.M)
            if match and (path / (Path(match.group(1)).name + ".index")).is_file():
                return path / Path(match.group(1)).name
        indexes = sorted(path.glob("*.index"))
        if len(indexes) > 1:
            raise CheckpointError(f"{path}: several TensorFlow checkpoints ({', '.join(p.name for p in indexes)}); "
                                  "name one (its prefix or .index file)")
        if indexes:
            return indexes[0].with_name(indexes[0].name.removesuffix(".index"))
    return None


def _torch_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix in TORCH_SUFFIXES:
        return path
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".pt", ".pth"))
        if len(files) == 1:
            return files[0]
    return None


def _config_beside(folder: Path, config_file) -> tuple[BertConfig, Path]:
    path = Path(config_file) if config_file else next(
        (folder / n for n in ("config.json", "bert_config.json") if (folder / n).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{folder}: no config.json or bert_config.json (pass --config_file)")
    return BertConfig.from_json_file(path), path


def _is_model_dir(path: Path) -> bool:
    """A Hugging Face folder with weights, or one of our run directories."""
    try:
        return path.is_dir() and resolve_model_dir(path) is not None
    except (CheckpointError, FileNotFoundError):
        return False


def _read(path: Path, config_file) -> tuple[Opened, Path]:
    """(the checkpoint, the folder its vocab.txt and tokenizer_config.json are looked for in)."""
    if _is_model_dir(path):
        folder = resolve_model_dir(path)
        return Opened(str(folder), _config_beside(folder, config_file)[0], read_state_dict(folder)), folder
    prefix = _tf_prefix(path)
    if prefix is not None:
        return read_tf(prefix, *_config_beside(prefix.parent, config_file)), prefix.parent
    if path.is_file() and path.name.endswith((".safetensors", ".index.json")):
        return Opened(str(path), _config_beside(path.parent, config_file)[0], read_state_dict(path)), path.parent
    torch_file = _torch_file(path)
    if torch_file is not None:
        return read_torch_file(torch_file, _config_beside(torch_file.parent, config_file)[0]), torch_file.parent
    if path.is_dir():
        resolve_model_dir(path)  # raises, naming the weights files it looked for
    raise CheckpointError(f"{path}: neither a model folder nor a TensorFlow or PyTorch checkpoint")


def open_checkpoint(path, config_file=None) -> Opened:
    """Any checkpoint we read: a Hugging Face folder or run directory, a TF checkpoint (prefix, .index or
    folder), a torch.save file (or a folder holding one .pt), a weights file; config.json or
    bert_config.json beside it unless `config_file` names one."""
    path = Path(path)
    if not path.exists() and _tf_prefix(path) is None:
        raise FileNotFoundError(f"checkpoint not found: {path}")
    opened, folder = _read(path, config_file)
    opened.folder, opened.vocab = folder, find_vocab(folder)
    return opened


def check_complete(opened: Opened) -> None:
    """A foreign checkpoint must fill the architecture its config or keys name exactly (check_shapes);
    checked on the meta device, so no memory is spent."""
    if opened.foreign:
        with torch.device("meta"):
            check_shapes(opened, model_class_for(opened.config, opened.state, opened.source)(opened.config))


def from_opened(model_class, opened: Opened, **config_changes):
    """`model_class` built from the checkpoint's config (with changes) and loaded with its weights; heads
    it lacks are created and reported, as in checkpoint.from_pretrained. Returns (model, LoadReport)."""
    check_complete(opened)
    model = model_class(opened.config.replace(**config_changes) if config_changes else opened.config)
    return model, load_weights(model, opened.state, opened.source)


def check_shapes(opened: Opened, model: torch.nn.Module) -> None:
    """Every tensor has the shape the config gives its parameter, and none the model needs is missing:
    errors name the source's own variable and the config."""
    target = model.state_dict()
    model_prefixed = any(k.startswith(ENCODER_PREFIX) for k in target)
    if any(k.startswith(ENCODER_PREFIX) for k in opened.state) != model_prefixed:  # a bare encoder, or heads
        target = {(k.removeprefix(ENCODER_PREFIX) if model_prefixed else ENCODER_PREFIX + k): v for k, v in target.items()}
    for key, tensor in opened.state.items():
        if key in target and tuple(tensor.shape) != tuple(target[key].shape):
            raise CheckpointError(f"{opened.source}: variable {opened.name_of(key)!r} has shape {tuple(tensor.shape)}"
                                  f" but the config gives {key} the shape {tuple(target[key].shape)}")
    missing = [opened.name_of(k) for k in target if k not in opened.state and k not in TIED_KEYS]
    if missing:
        raise CheckpointError(f"{opened.source}: missing variables {', '.join(missing)} "
                              f"(needed by {type(model).__name__})")

