"""NVIDIA's create_pretraining_data.py pipeline, rebuilt from Google's code, for side-by-side speed runs.

    python bench/nvidia_reference.py --bert_dir DIR --input_file corpus.txt --vocab_file vocab.txt \\
        --output_file out.hdf5 [--max_seq_length 128 --max_predictions_per_seq 20 --dupe_factor 1]

NVIDIA's script (DeepLearningExamples, PyTorch/LanguageModeling/BERT) is Google's create_pretraining_data.py
with argparse and an HDF5 writer in place of TFRecords: the same pure-Python tokenizer (tokenization.py without
TensorFlow), the same create_training_instances, then a per-instance loop that converts tokens to ids and pads
them into numpy arrays, and h5py create_dataset with gzip. This runs Google's published code from the PyPI wheel
bert-tensorflow 1.0.4 (`pip download --no-deps bert-tensorflow==1.0.4` and unzip it; DIR holds bert/), with a
stand-in `tensorflow` module giving it plain file reading, followed by that HDF5 writer.
"""
from __future__ import annotations

import argparse
import random
import sys
import types

import h5py
import numpy as np


def _stub_tensorflow() -> None:
    """The few tf names Google's tokenization/create_pretraining_data use for files, flags and logging."""
    tf = types.ModuleType("tensorflow")
    tf.gfile = types.SimpleNamespace(GFile=open, Glob=lambda p: [p])
    tf.logging = types.SimpleNamespace(info=lambda *a, **k: None, set_verbosity=lambda *a: None, INFO=0)
    tf.flags = types.SimpleNamespace(FLAGS=types.SimpleNamespace(do_whole_word_mask=False, preserve_unused_tokens=False), **{
        n: (lambda *a, **k: None) for n in ("DEFINE_string", "DEFINE_bool", "DEFINE_integer", "DEFINE_float",
                                            "mark_flag_as_required")})
    tf.compat = types.SimpleNamespace(v1=tf)
    sys.modules.update({"tensorflow": tf, "tensorflow.compat": tf.compat, "tensorflow.compat.v1": tf})
    # 1.0.4's tokenization reads absl's FLAGS.preserve_unused_tokens per word (NVIDIA's copy predates that flag)
    absl = types.ModuleType("absl")
    absl.flags = tf.flags
    sys.modules.update({"absl": absl, "absl.flags": absl.flags})


def write_hdf5(instances, tokenizer, max_seq_length: int, max_predictions: int, path: str) -> None:
    """NVIDIA's writer: per instance, ids padded into preallocated arrays; then gzip datasets."""
    n = len(instances)
    feats = {k: np.zeros((n, max_seq_length), "int32") for k in ("input_ids", "input_mask", "segment_ids")}
    feats.update({k: np.zeros((n, max_predictions), "int32") for k in ("masked_lm_positions", "masked_lm_ids")})
    feats["next_sentence_labels"] = np.zeros(n, "int32")
    for i, inst in enumerate(instances):
        ids = tokenizer.convert_tokens_to_ids(inst.tokens)
        pad = max_seq_length - len(ids)
        feats["input_ids"][i] = ids + [0] * pad
        feats["input_mask"][i] = [1] * len(ids) + [0] * pad
        feats["segment_ids"][i] = list(inst.segment_ids) + [0] * pad
        lm_ids = tokenizer.convert_tokens_to_ids(inst.masked_lm_labels)
        p = max_predictions - len(lm_ids)
        feats["masked_lm_positions"][i] = list(inst.masked_lm_positions) + [0] * p
        feats["masked_lm_ids"][i] = lm_ids + [0] * p
        feats["next_sentence_labels"][i] = 1 if inst.is_random_next else 0
    dtypes = {"input_ids": "i4", "input_mask": "i1", "segment_ids": "i1", "masked_lm_positions": "i4",
              "masked_lm_ids": "i4", "next_sentence_labels": "i1"}
    with h5py.File(path, "w") as f:
        for name, dtype in dtypes.items():
            f.create_dataset(name, data=feats[name], dtype=dtype, compression="gzip")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bert_dir", required=True, help="folder holding bert/ from the bert-tensorflow 1.0.4 wheel")
    p.add_argument("--input_file", required=True)
    p.add_argument("--vocab_file", required=True)
    p.add_argument("--output_file", required=True)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--max_predictions_per_seq", type=int, default=20)
    p.add_argument("--dupe_factor", type=int, default=1)
    p.add_argument("--random_seed", type=int, default=12345)
    args = p.parse_args()
    _stub_tensorflow()
    sys.path.insert(0, args.bert_dir)
    try:
        from bert import create_pretraining_data as cpd, tokenization
    except ImportError as err:
        raise SystemExit(f"--bert_dir {args.bert_dir}: no bert/ package from bert-tensorflow 1.0.4 ({err})")
    tokenizer = tokenization.FullTokenizer(args.vocab_file, do_lower_case=True)
    instances = cpd.create_training_instances([args.input_file], tokenizer, args.max_seq_length, args.dupe_factor,
                                              0.1, 0.15, args.max_predictions_per_seq, random.Random(args.random_seed))
    write_hdf5(instances, tokenizer, args.max_seq_length, args.max_predictions_per_seq, args.output_file)
    print(f"{len(instances)} instances")


if __name__ == "__main__":
    main()
