"""Test helpers for pretrain tests: NVIDIA-schema HDF5 shards built from real SQuAD paragraphs,
small DeepSpeed configs, and running run_pretraining.py through the deepspeed launcher."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from bertspeed.data_prep.schema import COMPRESSION, MASKED_FIELDS
from bertspeed.model.tokenizer import BertTokenizer, read_vocab

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def squad_paragraphs(squad_json: Path) -> list[str]:
    data = json.loads(Path(squad_json).read_text())["data"]
    return [p["context"] for article in data for p in article["paragraphs"]]


def make_instances(paragraphs, tokenizer: BertTokenizer, seq_len: int, max_pred: int, rng) -> dict:
    """Sentence pairs (first half / second half of a paragraph, or a random paragraph's half),
    static masking 15 % with 80/10/10, in the NVIDIA schema."""
    ids = tokenizer.token_ids(paragraphs)
    vocab = tokenizer.vocab
    n = len(ids)
    rows = {name: [] for name in MASKED_FIELDS}
    budget = seq_len - 3
    for i, tokens in enumerate(ids):
        if len(tokens) < 8:
            continue
        half = min(len(tokens) // 2, budget // 2)
        a = tokens[:half]
        if rng.random() < 0.5:
            b, label = tokens[half:half + budget - len(a)], 0
        else:
            other = ids[(i + 1 + int(rng.integers(n - 1))) % n]
            b, label = other[len(other) // 2:][:budget - len(a)], 1
        if not b:
            continue
        seq = [vocab["[CLS]"]] + a + [vocab["[SEP]"]] + b + [vocab["[SEP]"]]
        segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        candidates = [k for k, t in enumerate(seq) if t not in (vocab["[CLS]"], vocab["[SEP]"])]
        count = min(max_pred, max(1, round(len(candidates) * 0.15)))
        positions = sorted(rng.choice(candidates, size=count, replace=False).tolist())
        masked_ids = [seq[p] for p in positions]
        for p in positions:
            r = rng.random()
            if r < 0.8:
                seq[p] = vocab["[MASK]"]
            elif r < 0.9:
                seq[p] = int(rng.integers(len(vocab)))
        pad = seq_len - len(seq)
        rows["input_ids"].append(seq + [0] * pad)
        rows["input_mask"].append([1] * len(seq) + [0] * pad)
        rows["segment_ids"].append(segments + [0] * pad)
        rows["masked_lm_positions"].append(positions + [0] * (max_pred - count))
        rows["masked_lm_ids"].append(masked_ids + [0] * (max_pred - count))
        rows["next_sentence_labels"].append(label)
    return {name: np.asarray(v, dtype=MASKED_FIELDS[name][0]) for name, v in rows.items()}


def write_shard(path: Path, instances: dict) -> None:
    with h5py.File(path, "w") as f:
        for name, values in instances.items():
            f.create_dataset(name, data=values, compression=COMPRESSION)


def make_shards(out_dir: Path, squad_json: Path, vocab_file: Path, num_shards: int, seq_len: int = 64,
                max_pred: int = 10, paragraphs_per_shard: int = 96, offset: int = 0, seed: int = 0) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(read_vocab(vocab_file))
    paragraphs = squad_paragraphs(squad_json)
    rng = np.random.default_rng(seed)
    for k in range(num_shards):
        lo = offset + k * paragraphs_per_shard
        # Shards of unequal size, as in real corpora.
        chunk = paragraphs[lo:lo + paragraphs_per_shard - 7 * k]
        write_shard(out_dir / f"shard_{k:03d}.hdf5", make_instances(chunk, tokenizer, seq_len, max_pred, rng))
    return out_dir


def tiny_model_config(path: Path, vocab_size: int = 30522, **overrides) -> Path:
    config = {"model_type": "bert", "vocab_size": vocab_size, "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128,
              "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, **overrides}
    path.write_text(json.dumps(config))
    return path


def ds_config(path: Path, micro: int = 4, accumulation: int = 2, world: int = 1, stage: int = 0,
              optimizer: str = "Lamb", lr: float = 2e-3, precision: str | None = None,
              clipping: float = 1.0) -> Path:
    config = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accumulation,
              "train_batch_size": micro * accumulation * world, "gradient_clipping": clipping,
              "steps_per_print": 10 ** 9, "wall_clock_breakdown": False,
              "optimizer": {"type": optimizer, "params": {"lr": lr, "weight_decay": 0.01, "eps": 1e-6}},
              "zero_optimization": {"stage": stage}}
    if precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "fp16":
        config["fp16"] = {"enabled": True, "initial_scale_power": 12, "loss_scale_window": 100}
    path.write_text(json.dumps(config))
    return path


def env() -> dict:
    e = dict(os.environ)
    e.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))
    e["PYTHONPATH"] = str(ROOT)
    e["OMP_NUM_THREADS"] = "1"
    e["PYTHONUNBUFFERED"] = "1"
    e["PYTHONFAULTHANDLER"] = "1"  # a rank that aborts or crashes prints every thread's Python stack
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def run_pretraining(args: list[str], ranks: int = 1, timeout: float = 240, check: bool = True,
                    port: int = 29611) -> subprocess.CompletedProcess:
    """ranks == 0: plain python (no launcher); otherwise `deepspeed --num_gpus ranks`."""
    script = str(ROOT / "pretrain" / "run_pretraining.py")
    if ranks == 0:
        cmd = [sys.executable, script, *args]
    else:
        cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(port), script, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def losses(out_dir: Path, key: str = "train/loss") -> dict[int, float]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r[key] for r in records if key in r}
