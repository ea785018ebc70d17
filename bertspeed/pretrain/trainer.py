"""The training loop: optimizer steps of micro-batches through a DeepSpeed engine, metrics,
evaluation and checkpoints. Setup (arguments, model, engine) lives in run_pretraining.py."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

from bertspeed.model.config import BertConfig
from bertspeed.pretrain import checkpoint
from bertspeed.pretrain.args import BatchSizes, PretrainArgs
from bertspeed.pretrain.data import PretrainingData, eval_batches
from bertspeed.pretrain.guard import EXIT_SIGNALLED, BadStepCounter, StopOnSignal, TrainingDiverged
from bertspeed.pretrain.packing import pack_batch, packing_ratio
from bertspeed.pretrain.scoring import all_ranks, results_of, score_sums
from bertspeed.training.metrics import MetricsWriter, throughput

# Test-only fault injection (tests/test_faults_fp16.py): comma-separated step numbers whose loss is
# multiplied by NaN before backward. Inert unless set.
FAULT_NAN_STEPS = "BERTSPEED_FAULT_NAN_STEPS"


def injected_nan_steps() -> frozenset[int]:
    return frozenset(int(x) for x in os.environ.get(FAULT_NAN_STEPS, "").split(",") if x.strip())


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


@dataclass
class Trainer:
    args: PretrainArgs
    engine: object  # deepspeed.DeepSpeedEngine
    model_config: BertConfig
    batch: BatchSizes
    data: PretrainingData
    eval_shards: list | None
    metrics: MetricsWriter
    rank: int
    world_size: int
    step: int = 0  # optimizer steps done
    mask_id: int | None = None  # the vocab's [MASK] id: adds eval/mlm_acc_at_mask (accuracy where the input is [MASK])

    def __post_init__(self):
        self._nan_steps = injected_nan_steps()

    @property
    def device(self):
        return self.engine.device

    def _seed_micro_batch(self, i: int) -> None:
        """Dropout randomness from (seed, step, micro-batch of the global batch): a resumed run draws the
        same masks, on any world size with the same micro and global batch (bertspeed/pretrain/data.py)."""
        micro_batch = self.rank * self.batch.accumulation + i
        torch.manual_seed(hash((self.args.seed, self.step, micro_batch)) & 0x7FFF_FFFF_FFFF_FFFF)

    def train_step(self) -> dict:
        self.engine.train()
        lr = self.engine.get_lr()[0]  # the rate this step uses
        totals = torch.zeros(3)  # loss, mlm, nsp summed over micro-batches
        poisoned = self.step + 1 in self._nan_steps
        pack_ratios = []
        for i in range(self.batch.accumulation):
            self._seed_micro_batch(i)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in next(self.data).items()}
            if self.args.pack:
                packed = pack_batch(batch)
                pack_ratios.append(packing_ratio(batch, packed))
                out = self.engine(packed=packed)
            else:
                out = self.engine(**batch)
            loss = out.loss * float("nan") if poisoned else out.loss
            self.engine.backward(loss)
            totals += torch.stack([loss.detach(), out.mlm_loss.detach(), out.nsp_loss.detach()]).float().cpu()
            grad_norm = self._grad_norm_if_boundary()
            self.engine.step()
        self.step += 1
        loss, mlm, nsp = (all_reduce_mean(totals.to(self.device)).cpu() / self.batch.accumulation).tolist()
        engine_norm = self.engine.get_global_grad_norm()
        grad_norm = engine_norm if engine_norm is not None else grad_norm
        values = {"train/loss": loss, "train/mlm_loss": mlm, "train/nsp_loss": nsp,
                  "optim/lr": lr,
                  "optim/grad_norm": float(grad_norm) if grad_norm is not None else None,
                  "optim/skipped_steps": self.engine.skipped_steps}
        if pack_ratios:  # this rank's
            values["perf/instances_per_row"] = sum(pack_ratios) / len(pack_ratios)
        if self.engine.fp16_enabled():
            values["optim/loss_scale"] = getattr(self.engine.optimizer, "cur_scale",
                                                 getattr(self.engine.optimizer, "loss_scale", None))
        return values

    def _grad_norm_if_boundary(self):
        """Global gradient norm where DeepSpeed does not report one (no ZeRO, no fp16/bf16
        wrapper): the gradients are already averaged over ranks at the accumulation boundary."""
        if not self.engine.is_gradient_accumulation_boundary() or self.engine.optimizer is not self.engine.basic_optimizer:
            return None
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        if not grads:
            return None
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.engine.eval()
        batches = eval_batches(self.eval_shards, self.batch.micro, self.rank, self.world_size,
                               self.args.eval_samples, self.data.masking)
        sums = all_ranks(score_sums(self.engine, batches, self.mask_id, self.device), self.device)
        self.engine.train()
        return results_of(sums)

    def save(self) -> str:
        client_state = {"data": self.data.state(), "step": self.step, "seed": self.args.seed}
        return checkpoint.save(self.engine, self.args.output_dir, self.step, client_state, self.model_config,
                               self.args.vocab_file, self.args.keep_checkpoints)

    def resume(self) -> bool:
        client_state = checkpoint.load(self.engine, self.args.output_dir, self.model_config)
        if client_state is None:
            return False
        self.step = client_state["step"]
        self.data.load_state(client_state["data"])
        self.metrics.truncate_after(self.step)
        return True

    def parameter_checksums(self) -> list[float] | None:
        """A checksum of this rank's model parameters, gathered from every rank: ranks that
        train in lockstep end with identical values. None under ZeRO 3 (parameters are partitioned)."""
        if self.engine.zero_optimization_stage() == 3:
            return None
        with torch.no_grad():
            params = list(self.engine.module.parameters())
            local = torch.stack([p.detach().double().square().sum() + p.detach().double().sum() for p in params]).sum()
        gathered = [torch.zeros((), dtype=torch.float64, device=self.device) for _ in range(self.world_size)]
        if self.world_size > 1:
            dist.all_gather(gathered, local.to(self.device))
        else:
            gathered = [local]
        return [float(x) for x in gathered]

    def _loss_scale_floor(self) -> float | None:
        if not (self.engine.fp16_enabled() and self.engine.dynamic_loss_scale()):
            return None
        return float(self.engine.dynamic_loss_scale_args()["min_scale"])

    def _want_eval(self) -> bool:
        if not self.eval_shards:
            return False
        interval = self.args.eval_interval
        return (interval > 0 and self.step % interval == 0) or self.step == self.args.max_steps

    def run(self) -> dict:
        args = self.args
        flops = self.model_config.flops_per_token(self.data.seq_len)
        progress = tqdm(total=args.max_steps, initial=self.step, desc="pretrain", dynamic_ncols=True,
                        disable=self.rank != 0 or args.disable_progress_bar)
        stop, bad_steps = StopOnSignal(), BadStepCounter(args.max_bad_steps, self.engine.skipped_steps)
        first_step, started, last, stopped = self.step, time.perf_counter(), {}, False
        try:
            while self.step < args.max_steps and not stopped:
                t0 = time.perf_counter()
                values = self.train_step()
                seconds = time.perf_counter() - t0
                values.update(throughput(self.batch.global_, self.data.seq_len, seconds, flops,
                                         args.peak_tflops, self.world_size))
                if self._want_eval():
                    values.update(self.evaluate())
                if self.step % args.log_interval == 0 or self.step == args.max_steps or "eval/loss" in values:
                    self.metrics.write(self.step, values)
                try:
                    bad_steps.update(self.step, values["train/loss"], values["optim/skipped_steps"],
                                     values.get("optim/loss_scale"), self._loss_scale_floor())
                except TrainingDiverged:
                    if bad_steps.all_skipped:  # skipped updates left the last good step's weights and optimizer
                        self.save()
                    raise
                stopped = stop.agreed(self.device)
                if stopped or self.step % args.checkpoint_interval == 0 or self.step == args.max_steps:
                    if bad_steps.run == 0:
                        self.save()
                    elif self.rank == 0:  # never let `latest` point at a non-finite state
                        print(f"step {self.step} was bad: no checkpoint written", flush=True)
                if stopped and self.rank == 0:
                    print(f"stopping at step {self.step} ({stop.reason}): exit {EXIT_SIGNALLED}; continue with "
                          "--resume", flush=True)
                progress.update(1)
                progress.set_postfix(loss=f"{values['train/loss']:.4f}", lr=f"{values['optim/lr']:.2e}")
                last = values
        finally:
            stop.restore()
            progress.close()
        elapsed = time.perf_counter() - started
        steps = self.step - first_step
        checksums = self.parameter_checksums()
        summary = {"steps": self.step, "steps_this_run": steps, "stopped_by_signal": stopped,
                   "stop_reason": stop.reason if stopped else None,
                   "seconds": elapsed, "seq_per_s": steps * self.batch.global_ / elapsed if steps else None,
                   **{k: float(v) for k, v in last.items() if v is not None},
                   "rank_param_checksums": checksums}
        if checksums is not None:
            summary["ranks_identical"] = len(set(checksums)) == 1
        return summary

