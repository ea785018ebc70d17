"""Score any pretraining checkpoint on held-out shards (BERT-THOR's pretrain_eval.py): masked-LM accuracy,
accuracy at the positions whose input is [MASK], NSP accuracy and both losses.

    bertspeed evaluate --model RUN_OR_HF_OR_TF --eval_dir SHARDS [--eval_samples 4096] [--output_file scores.json]
    deepspeed --num_gpus 8 --module bertspeed.pretrain.evaluate --model ... --eval_dir ...      # ranks split the work

The model may be one of our run folders (its latest checkpoint), a Hugging Face folder, a Google TF
checkpoint or an NVIDIA .pt (anything `bertspeed convert` reads); it must carry the pretraining heads.
Unmasked (dynamic-masking) shards are masked with a fixed seed, so every model sees the same positions.
Ranks split the shards as training does and their sums are added.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch

from bertspeed.model.foreign import from_opened, open_checkpoint
from bertspeed.model.model import BertForPreTraining
from bertspeed.model.tokenizer import read_vocab
from bertspeed.pretrain.data import dynamic_masking, eval_batches, list_shards
from bertspeed.pretrain.scoring import all_ranks, results_of, score_sums
from bertspeed.training.atomic import write_json_atomic
from bertspeed.training.distributed import exit_process, setup_runtime, shutdown_distributed
from bertspeed.training.pathcheck import check_input_dir, check_input_file, check_model_path, check_output_file
from bertspeed.training.settings import parse, setting


@dataclass(kw_only=True)
class EvaluateSettings:
    model: str = setting(help="checkpoint to score: run folder, Hugging Face folder, TF checkpoint, NVIDIA .pt")
    eval_dir: str = setting(help="held-out HDF5 shards (ours or NVIDIA's schema)")
    config_file: str | None = setting(None, help="model config.json, when the checkpoint has none beside it")
    vocab_file: str | None = setting(None, help="vocab.txt (default: the checkpoint's): the [MASK] id, and "
                                                "dynamic masking of unmasked shards")
    eval_samples: int = setting(4096, help="sequences to score, over all ranks")
    batch_size: int = setting(32, help="sequences per forward pass per rank")
    max_predictions_per_seq: int | None = setting(None, help="dynamic masking: masked positions per sequence "
                                                             "(default 20 at 128, 80 at 512)")
    output_file: str | None = setting(None, help="also write the scores here as JSON")
    dist_timeout: float = setting(600.0, help="seconds a collective may wait before the run fails")
    local_rank: int = setting(-1, help="set by the deepspeed launcher", aliases=("--local-rank",))

    def __post_init__(self):
        for name in ("eval_samples", "batch_size", "dist_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")


def load_model(settings: EvaluateSettings):
    opened = open_checkpoint(settings.model, settings.config_file)
    model, report = from_opened(BertForPreTraining, opened)
    heads = [key for key in report.initialized if key.startswith("cls.")]
    if heads:
        raise ValueError(f"{opened.source} has no pretraining heads ({', '.join(heads)}): nothing to score")
    vocab_file = settings.vocab_file or opened.vocab
    return model.eval(), (read_vocab(vocab_file) if vocab_file else None), opened.source


def check_paths(settings: EvaluateSettings) -> None:
    check_model_path("--model", settings.model)
    check_input_dir("--eval_dir", settings.eval_dir)
    for flag, path in (("--config_file", settings.config_file), ("--vocab_file", settings.vocab_file)):
        if path:
            check_input_file(flag, path, text=True)
    if settings.output_file:
        check_output_file("--output_file", settings.output_file)


def evaluate(settings: EvaluateSettings) -> dict:
    check_paths(settings)
    rt = setup_runtime(None, settings.dist_timeout, settings.local_rank)
    model, vocab, source = load_model(settings)
    shards = list_shards(settings.eval_dir)
    masking = dynamic_masking(shards, vocab, model.config.vocab_size, settings.max_predictions_per_seq,
                              source=f"--eval_dir {settings.eval_dir}")
    batches = eval_batches(shards, settings.batch_size, rt.rank, rt.world_size, settings.eval_samples, masking)
    sums = all_ranks(score_sums(model.to(rt.device), batches, vocab["[MASK]"] if vocab else None, rt.device),
                     rt.device)
    if sums[2] == 0:
        raise ValueError(f"--eval_dir {settings.eval_dir}: no masked position in the first {settings.eval_samples} "
                         f"sequences (raise --eval_samples or lower --batch_size)")
    scores = {"model": source, "sequences": int(sums[5]), **results_of(sums, prefix="")}
    if rt.is_main and settings.output_file:
        write_json_atomic(settings.output_file, scores)
    return scores if rt.is_main else None


def main(argv=None) -> int:
    settings = parse(EvaluateSettings, argv, prog="bertspeed evaluate", description=__doc__.split("\n\n")[0])
    try:
        with torch.no_grad():
            scores = evaluate(settings)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()
    if scores is not None:  # rank 0
        print(json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    exit_process(main())
