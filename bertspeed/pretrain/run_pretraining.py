"""BERT pretraining with DeepSpeed (phase 1 or phase 2).

    deepspeed --num_gpus 2 pretrain/run_pretraining.py --deepspeed_config ds_configs/X.json \\
        --input_dir SHARDS --config_file MODEL_CONFIG.json --output_dir OUT --max_steps N \\
        [--checkpoint_interval K] [--resume] [--init_checkpoint PHASE1_OUT]
    python pretrain/run_pretraining.py ...          # one process, no launcher
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from bertspeed.model.checkpoint import load_state_dict_into, read_state_dict, resolve_model_dir
from bertspeed.model.config import BertConfig
from bertspeed.model.layers import use_fused_kernels
from bertspeed.model.model import BertForPreTraining
from bertspeed.model.tokenizer import read_vocab
from bertspeed.model.unpad import set_unpad
from bertspeed.pretrain.args import PretrainArgs, optimizer_spec, parse_args, read_ds_config, resolve_batch
from bertspeed.pretrain.data import MaskingSpec, PretrainingData, ShardError, dynamic_masking, list_shards
from bertspeed.pretrain.guard import EXIT_DIVERGED, EXIT_SIGNALLED, TrainingDiverged
from bertspeed.pretrain.lamb import Lamb, partition_layout
from bertspeed.pretrain.nvidia import BUILTIN_DS_CONFIG, BUILTIN_SOURCE, batch_override, loss_scale_override, note
from bertspeed.pretrain.optim import build_optimizer, build_schedule, use_deepspeed_fused_lamb
from bertspeed.pretrain.trainer import Trainer
from bertspeed.training import runs
from bertspeed.training.atomic import write_json_atomic
from bertspeed.training.cpu_allocator import keep_freed_memory
from bertspeed.training.distributed import exit_process, init_distributed, shutdown_distributed
from bertspeed.training.hardware import choose_precision, with_precision
from bertspeed.training.metrics import MetricsWriter
from bertspeed.training.params import param_groups
from bertspeed.training.settings import as_dict


def model_config(args: PretrainArgs) -> BertConfig:
    if args.config_file:
        return BertConfig.from_json_file(args.config_file)
    if args.model_preset:
        vocab = len(Path(args.vocab_file).read_text().splitlines()) if args.vocab_file else 30522
        return BertConfig.preset(args.model_preset, vocab_size=vocab)
    return BertConfig.from_json_file(resolve_model_dir(args.init_checkpoint) / "config.json")


def build_model(args: PretrainArgs, config: BertConfig) -> BertForPreTraining:
    if args.fused_kernels:  # only when asked: the model's default is PyTorch's own attention and LayerNorm
        use_fused_kernels(True)
    torch.manual_seed(args.seed)
    model = BertForPreTraining(config)
    if args.unpad:
        set_unpad(model)
    if args.init_checkpoint:  # phase 2: the phase-1 weights, a fresh optimizer and schedule
        folder = resolve_model_dir(args.init_checkpoint)
        report = load_state_dict_into(model, read_state_dict(folder), str(folder))
        model.tie_weights()
        print(report.summary(), flush=True)
    model.set_gradient_checkpointing(args.gradient_checkpointing)
    if args.compile:  # per layer: static shapes, no graph breaks, state-dict names unchanged
        for layer in model.bert.encoder.layer:
            layer.compile()
    return model


def masking_spec(args: PretrainArgs, config: BertConfig, shards, vocab: dict | None) -> MaskingSpec | None:
    """Dynamic masking for unmasked shards (data_prep --masking dynamic); needs the vocab."""
    return dynamic_masking(shards, vocab, config.vocab_size, args.max_predictions_per_seq, args.whole_word_mask,
                           args.input_dir)


def git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def build_engine(args, model, ds_config, zero_stage, spec, total_steps):
    import deepspeed

    end_ratio = args.end_learning_rate / spec.lr
    schedule = lambda opt: build_schedule(opt, total_steps, args.num_warmup_steps, args.schedule_power,  # noqa: E731
                                          end_ratio)
    config = {k: v for k, v in ds_config.items() if k != "optimizer"}
    if use_deepspeed_fused_lamb(spec.kind, zero_stage):
        config["optimizer"] = {"type": "Lamb", "params": {**spec.params, "lr": spec.lr,
                                                            "weight_decay": spec.weight_decay}}
        engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, spec.weight_decay),
                                          lr_scheduler=schedule, config=config)
        return engine
    if zero_stage > 0:
        config.setdefault("zero_allow_untested_optimizer", True)
    optimizer = build_optimizer(model, spec.kind, spec.lr, spec.weight_decay, spec.betas, spec.eps, args.use_nvlamb,
                                spec.params, total_steps, config["train_batch_size"],
                                config["gradient_accumulation_steps"])
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=config)
    if isinstance(optimizer, Lamb):
        optimizer.attach_layout(*partition_layout(engine.module, optimizer))
    return engine


def describe_optimizer(engine) -> dict:
    """Which optimizer runs, and for our LAMB how it sees the parameters (for run_config.json)."""
    basic = engine.basic_optimizer
    info = {"class": type(basic).__name__, "wrapper": type(engine.optimizer).__name__}
    if isinstance(basic, Lamb):
        info["flat_tensors_with_layout"] = len(basic._layout)
        info["parameter_slices"] = sum(len(s) for s in basic._layout.values())
        info["partitioned_over_ranks"] = basic._group is not None
    return info


def fp16_supported() -> bool:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().is_fp16_supported()


def read_batch_config(args: PretrainArgs, world_size: int) -> tuple[dict, str]:
    """The DeepSpeed config (or the built-in one for NVIDIA's command line) with NVIDIA's batch flags
    applied, and how to name it in messages."""
    if args.deepspeed_config is None:
        ds_config, source = dict(BUILTIN_DS_CONFIG), BUILTIN_SOURCE
        note(f"no --deepspeed_config: using {BUILTIN_SOURCE}")
    else:
        source = f"--deepspeed_config {args.deepspeed_config}"
        ds_config = read_ds_config(args.deepspeed_config)
    has_batch = any(k in ds_config for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                              "train_batch_size"))
    try:
        json_batch = resolve_batch(ds_config, world_size, source) if has_batch else None
    except ValueError:  # e.g. sized for another world size: fine if both NVIDIA flags replace it
        if args.train_batch_size is None or args.gradient_accumulation_steps is None:
            raise
        json_batch = None
    return batch_override(ds_config, args, world_size, source, json_batch), source


def prepare(args: PretrainArgs, world_size: int) -> dict:
    """Read and check every input before any training state exists; raises ValueError or
    FileNotFoundError naming the file, field or flag at fault."""
    ds_config, source = read_batch_config(args, world_size)
    batch = resolve_batch(ds_config, world_size, source)
    ds_config = {"gradient_clipping": 0.0,  # DeepSpeed's default when absent would be 1.0
                 **ds_config, "train_micro_batch_size_per_gpu": batch.micro,
                 "gradient_accumulation_steps": batch.accumulation, "train_batch_size": batch.global_}
    precision = choose_precision(args.precision, ds_config, "cuda" if torch.cuda.is_available() else "cpu",
                                 flag_name="--fp16" if args.fp16 else "--precision", config_name=source)
    if precision.name == "fp16" and not fp16_supported():
        raise ValueError(f"{precision.source} asks for fp16, which DeepSpeed does not support on this device: "
                         "use --precision fp32 or bf16 (or auto)")
    ds_config = loss_scale_override(with_precision(ds_config, precision.name), args, precision.name, source)
    spec = optimizer_spec(ds_config, args, source)
    zero_stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    if spec.kind == "lamb" and zero_stage == 3:
        raise ValueError("LAMB under ZeRO stage 3 is refused: per-parameter trust ratios are "
                         "implemented for ZeRO 0-2; use ZeRO 1 or 2, or --optimizer adamw")
    if spec.kind == "thor" and (zero_stage != 0 or precision.name != "fp32"):
        raise ValueError(f"THOR runs with ZeRO stage 0 in fp32 only (its hooks read the model's own weights and "
                         f"gradients): {source} asks for ZeRO {zero_stage} in {precision.name}")
    config = model_config(args)
    shards = list_shards(args.input_dir)
    if args.max_seq_length and args.max_seq_length != shards[0].seq_len:
        raise ValueError(f"--max_seq_length {args.max_seq_length} disagrees with the shards in --input_dir "
                         f"{args.input_dir}, whose sequence length is {shards[0].seq_len}")
    if not config.is_nezha and shards[0].seq_len > config.max_position_embeddings:  # NEZHA: any length
        raise ValueError(f"shards in {args.input_dir} have sequence length {shards[0].seq_len} > "
                         f"max_position_embeddings {config.max_position_embeddings}")
    args.set_steps_from_epochs(sum(s.num_rows for s in shards), batch.global_)  # the same on any world size
    eval_shards = list_shards(args.eval_dir) if args.eval_dir else None
    if args.use_tensorboard:
        try:
            from torch.utils import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError("--report_to tensorboard needs the tensorboard package (pip install "
                             "bertspeed[tensorboard])") from None
    latest = runs.read_latest(args.output_dir) if Path(args.output_dir).is_dir() else None
    if latest and not args.resume:
        raise ValueError(f"--output_dir {args.output_dir} already holds checkpoint {latest}: pass --resume "
                         "to continue it, or choose another --output_dir")
    vocab = read_vocab(args.vocab_file) if args.vocab_file else None
    return dict(ds_config=ds_config, precision=precision, batch=batch, spec=spec, zero_stage=zero_stage, config=config,
                shards=shards, eval_shards=eval_shards, masking=masking_spec(args, config, shards, vocab),
                mask_id=vocab["[MASK]"] if vocab else None, model=build_model(args, config))


def main(argv=None) -> int:
    args = parse_args(argv)
    keep_freed_memory()
    rank, world_size = init_distributed(args.dist_timeout)
    try:
        setup = prepare(args, world_size)
        data = PretrainingData(setup["shards"], setup["batch"].micro, rank, world_size, args.seed,
                               shuffle=not args.no_shuffle, masking=setup["masking"],
                               vocab_size=setup["config"].vocab_size, accumulation=setup["batch"].accumulation)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError and ShardError are ValueErrors
        print(f"run_pretraining.py: error: {e}", file=sys.stderr)
        return 2
    config, batch, spec = setup["config"], setup["batch"], setup["spec"]
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    engine = build_engine(args, setup["model"], setup["ds_config"], setup["zero_stage"], spec, args.max_steps)
    metrics = MetricsWriter(args.output_dir, enabled=rank == 0, tensorboard=args.use_tensorboard)
    trainer = Trainer(args, engine, config, batch, data, setup["eval_shards"], metrics, rank, world_size,
                      mask_id=setup["mask_id"])
    try:
        resumed = args.resume and trainer.resume()
    except ValueError as e:  # e.g. the world size or the shards changed since the checkpoint
        print(f"run_pretraining.py: error: cannot resume from {args.output_dir}: {e}", file=sys.stderr, flush=True)
        return 2
    if not resumed:
        metrics.truncate_after(0)  # a fresh run: no records of an earlier attempt
    if rank == 0:
        print(f"precision: {setup['precision']}", flush=True)
        write_json_atomic(Path(args.output_dir) / "run_config.json", {"precision": setup["precision"].as_dict(),
            "args": as_dict(args), "model_config": config.to_dict(), "deepspeed_config": setup["ds_config"],
            "optimizer": spec.kind, "optimizer_runtime": describe_optimizer(engine), "zero_stage": setup["zero_stage"], "world_size": world_size,
            "batch": {"micro": batch.micro, "accumulation": batch.accumulation, "global": batch.global_},
            "git_revision": git_revision(), "resumed_from_step": trainer.step if resumed else None}, default=str)
    try:
        summary = trainer.run()
    except TrainingDiverged as e:
        print(f"run_pretraining.py: error: {e}; last good checkpoint: "
              f"{runs.read_latest(args.output_dir)}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    except ShardError as e:  # a shard found unreadable or out of vocab when its turn came
        print(f"run_pretraining.py: error: {e}; last checkpoint: {runs.read_latest(args.output_dir)}",
              file=sys.stderr, flush=True)
        return 2
    if rank == 0:
        write_json_atomic(Path(args.output_dir) / "summary.json", summary, default=str)
        print("summary: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in summary.items() if k != "rank_param_checksums"), flush=True)
    data.close()
    metrics.close()
    shutdown_distributed()
    return EXIT_SIGNALLED if summary["stopped_by_signal"] else 0


if __name__ == "__main__":
    exit_process(main())
