"""How much the demo does, sized to a wall-time budget from throughput measured on this machine.

The budget covers everything after set-up: sample data, data prep, both pretraining phases, SQuAD
and the report. The corpus is sized from the budget alone (data prep is a small share). With the
time left after data prep, short in-process measurements of training throughput at both phases'
shapes pick the model and split the pretraining time: phase 2 first gets the time for the steps it
needs to learn the positions phase 1 never saw, phase 1 the rest. Phase 2 and SQuAD are sized again
when their turn comes, from the time then left and phase 1's real throughput and start-up cost.
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from bertspeed.model.config import BertConfig

# Phase 1 runs at 32 tokens: a from-scratch model first predicts [MASK] from the unigram distribution and
# leaves that plateau only once attention finds the neighbouring tokens, which is the faster the fewer
# tokens it spreads over. Measured side by side (2x128, global batch 64, same corpus; README, "The demo's
# recipe"): at-[MASK] accuracy 2.4x the unigram baseline after 2,400 steps at seq 32 with AdamW 2e-3 and
# initializer_range 1/sqrt(hidden); every seq-128 recipe tried stayed within 1.1x for 750-1,000 steps.
PHASE1_SEQ = 32
PHASE2_SEQ = 4 * PHASE1_SEQ  # BERT's 128 -> 512, at a quarter of the length
# Model shapes (hidden, layers), largest first, and the phase-1 steps each needs to bring at-[MASK]
# accuracy to 1.5x the unigram baseline (measured for (128, 2): 1.5x at 1,600 steps, 2.0x at 2,000;
# (256, 4) is not measured and asks for more).
SHAPES = ((256, 4, 3000), (128, 2, 2000), (64, 2, 0))
VOCAB_SIZE = 8192  # the demo trains its own WordPiece vocab: a 30k head would cost half of a small model's step
WORLD_SIZE = 2
OPTIMIZER = "AdamW"
PHASE1_MICRO, PHASE1_LR = 32, 2e-3
PHASE2_MICRO, PHASE2_LR = 4, 1e-3
PHASE2_BATCH = PHASE2_MICRO * WORLD_SIZE
# Phase 2 from a phase-1 checkpoint must learn positions PHASE1_SEQ..PHASE2_SEQ-1 from scratch: at-[MASK]
# accuracy (2 x 128, global batch 8) 0.074 after 500 steps, 0.105 (2.0x unigram) after 1,000, 0.139
# after 2,000; 630 steps on a slow host left it at 1.3x. Phase 2 gets the time for these steps when
# it fits in half of the pretraining time.
PHASE2_MIN_STEPS = 1000
# lr 1e-3 (measured, 3,000 questions, 2 x 128: F1 8.5 pretrained vs 6.5 random init; at 1e-4 neither learns: 4.6, 5.5)
SQUAD_SEQ, SQUAD_BATCH, SQUAD_LR = 256, 32, 1e-3
FEATURES_PER_QUESTION = 1.2  # SQuAD windows at 256 tokens, stride 128
EVALUATIONS, EVAL_SAMPLES = 4, 1024
# Of the time left after data prep; SQuAD's share covers two finetunings of the same size: from our
# pretrained checkpoint and from a randomly initialised model (the report compares their F1). Phase 2's
# share is its least: it takes more from phase 1 for PHASE2_MIN_STEPS.
SHARES = {"phase1": 0.66, "phase2": 0.10, "squad": 0.24}
SQUAD_RUNS = 2
REPORT_SECONDS = 10.0  # report, plots and slack at the end
# Two ranks under DeepSpeed against one in-process measurement: 0.77-1.02 measured at seq 128, 0.80 for
# 2 x 128 at seq 32 (905 vs 1,135 seq/s; short steps beside the all-reduce); a phase that would overrun
# is stopped at a checkpoint.
DISTRIBUTED_EFFICIENCY = 0.8
# Phase 2's steps are small (global batch 8): the all-reduce and optimizer step weigh more. Two ranks at
# micro batch 4 against one process at batch 8, measured: 0.63 (2 x 128, bf16, alone), 0.61 and 0.75
# (2 x 64, fp32, a CI run beside it). Phase 1's own ratio varied more (0.79-1.10) and is no guide to it.
PHASE2_EFFICIENCY = 0.6
SQUAD_MAX_QUESTIONS = 6000


@dataclass(frozen=True)
class CorpusPlan:
    corpus_articles: int
    heldout_articles: int
    phase2_seq_len: int


def corpus_plan(budget_minutes: float) -> CorpusPlan:
    """About 20 SQuAD articles (0.65 MB of text) per budget minute, up to 400 (13 MB)."""
    articles = int(min(400, max(24, 20 * budget_minutes)))
    return CorpusPlan(articles, heldout_articles(articles), PHASE2_SEQ)


def heldout_articles(corpus_articles: int) -> int:
    """Articles held out for evaluation: a twentieth as many, at least 4."""
    return max(4, corpus_articles // 20)


def model_config(hidden: int, layers: int, vocab_size: int = VOCAB_SIZE) -> BertConfig:
    # No dropout: a run this short underfits, and dropout only slows it down (~15 % of a CPU step).
    # BERT's initializer_range 0.02 is sized for hidden 768-1024; at 1/sqrt(hidden) a small model's
    # attention and feed-forward paths start at the scale they are trained to.
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                      max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      initializer_range=round(hidden ** -0.5, 4))


def launcher_seconds() -> float:
    """Start-up cost of a pretraining phase (launcher, two ranks importing torch + DeepSpeed, engine,
    first evaluation and checkpoints), estimated from one DeepSpeed import timed in a subprocess."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import deepspeed"], capture_output=True, check=True)
    return 2.5 * (time.perf_counter() - start) + 5.0


@dataclass(frozen=True)
class Phase1Plan:
    hidden_size: int
    num_hidden_layers: int
    steps: int
    seq_per_s_measured: float  # in-process, one rank
    seq_per_s_expected: float  # the two-rank estimate the step count comes from
    phase2_seq_per_s_measured: float  # in-process, at phase 2's length and global batch
    start_seconds: float
    seconds: float  # planned for the whole stage
    phase2_seconds: float  # kept for phase 2
    squad_seconds: float  # kept for SQuAD (both runs)


def pretraining_split(seconds_left: float, start: float, phase2_seq_per_s: float) -> tuple[float, float]:
    """(phase 1's, phase 2's) seconds: phase 2 gets its share, or the time for PHASE2_MIN_STEPS (two-rank
    `phase2_seq_per_s`) up to half of the pretraining time; phase 1 the rest."""
    pretraining = (SHARES["phase1"] + SHARES["phase2"]) * seconds_left
    needed = start + phase2_eval_seconds(phase2_seq_per_s) + PHASE2_MIN_STEPS * PHASE2_BATCH / phase2_seq_per_s
    phase2 = min(max(SHARES["phase2"] * seconds_left, needed), pretraining / 2)
    return pretraining - phase2, phase2


def phase1_plan(seconds_left, vocab_size: int, measure) -> Phase1Plan:
    """The largest shape that gets its learning steps in phase 1's part of the time left (`seconds_left()`,
    asked after each measurement), else the smallest. `measure(config, seq_len, batch)` -> in-process
    training seq/s; the smallest shapes are measured first, larger ones only while they could still qualify."""
    start = launcher_seconds()
    global_batch = PHASE1_MICRO * WORLD_SIZE
    best = None
    for hidden, layers, min_steps in reversed(SHAPES):
        config = model_config(hidden, layers, vocab_size)
        measured = measure(config, PHASE1_SEQ, PHASE1_MICRO)
        measured2 = measure(config, PHASE2_SEQ, PHASE2_BATCH)
        expected = DISTRIBUTED_EFFICIENCY * measured
        left = seconds_left()
        stage, phase2 = pretraining_split(left, start, PHASE2_EFFICIENCY * measured2)
        steps = int(max(0.0, stage - start - eval_seconds(expected)) * expected / global_batch)
        if steps < min_steps and best is not None:
            break  # larger shapes get even fewer steps
        best = Phase1Plan(hidden, layers, max(steps, 10), measured, expected, measured2, start, stage, phase2,
                          SHARES["squad"] * left)
    return best


def eval_seconds(train_seq_per_s: float) -> float:
    """Held-out evaluations (forward only: about a third of a training step per sequence)."""
    return EVALUATIONS * EVAL_SAMPLES / (3 * train_seq_per_s)


def phase2_eval_seconds(train_seq_per_s: float) -> float:
    """Phase 2 evaluates once, at its end."""
    return eval_seconds(train_seq_per_s) / EVALUATIONS


def scaled_seq_per_s(seq_per_s_phase1: float, config: BertConfig, seq_len: int, predictions: int) -> float:
    """Training seq/s at another sequence length, from phase 1's, by the FLOP ratio."""
    return seq_per_s_phase1 * config.pretraining_flops(PHASE1_SEQ, max_predictions(PHASE1_SEQ)) / config.pretraining_flops(
        seq_len, predictions)


def max_predictions(seq_len: int) -> int:
    """Masked positions per sequence: BERT's 20 at 128 and 80 at 512, in proportion."""
    return max(1, seq_len * 20 // 128)


@dataclass(frozen=True)
class Phase2Plan:
    steps: int
    seq_len: int
    seconds: float


def phase2_plan(seconds_left: float, config: BertConfig, seq_per_s_phase1: float, phase1: Phase1Plan,
                start_seconds: float) -> Phase2Plan:
    """What SQuAD will not need of the time left (the time `phase1` kept for it, or less when its question cap
    needs less), but at least the time kept for phase 2 while that is at most half of the time left: a phase 1
    that overran takes from SQuAD, not from the steps phase 2 needs. `seq_per_s_phase1` and `start_seconds` as
    phase 1 really ran."""
    squad = min(phase1.squad_seconds, squad_seconds(SQUAD_MAX_QUESTIONS, config, seq_per_s_phase1, start_seconds / 2))
    stage = max(seconds_left - squad, min(phase1.phase2_seconds, seconds_left / 2))
    speed = PHASE2_EFFICIENCY * phase1.phase2_seq_per_s_measured  # on two ranks
    train = stage - start_seconds - phase2_eval_seconds(speed)
    return Phase2Plan(max(2, int(max(0.0, train) * speed / PHASE2_BATCH)), PHASE2_SEQ, stage)


@dataclass(frozen=True)
class SquadPlan:
    train_questions: int
    eval_questions: int
    seconds: float


def _seconds_per_question(config: BertConfig, seq_per_s_phase1: float) -> float:
    """At phase 1's speed (one process on all cores against two ranks) scaled to SQuAD's length;
    evaluation on 40 % as many questions as training, forward only (a third of a training step)."""
    return FEATURES_PER_QUESTION * (1 + 0.4 / 3) / scaled_seq_per_s(seq_per_s_phase1, config, SQUAD_SEQ, 0)


def squad_seconds(questions: int, config: BertConfig, seq_per_s_phase1: float, start_seconds: float) -> float:
    """Both SQuAD runs (pretrained and random init) of `questions` training questions each."""
    return SQUAD_RUNS * (start_seconds + questions * _seconds_per_question(config, seq_per_s_phase1))


def squad_plan(seconds_left: float, config: BertConfig, seq_per_s_phase1: float, start_seconds: float) -> SquadPlan:
    """As many training questions per run as the time left allows for both runs, up to SQUAD_MAX_QUESTIONS."""
    per_run = seconds_left / SQUAD_RUNS
    train = int(max(0.0, per_run - start_seconds) / _seconds_per_question(config, seq_per_s_phase1))
    train = min(SQUAD_MAX_QUESTIONS, max(64, train))
    return SquadPlan(train, max(32, int(0.4 * train)), seconds_left)


def as_dict(plan) -> dict:
    return asdict(plan)
