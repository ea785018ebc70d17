"""Speed of the padded model against unpadding (--unpad) and sequence packing (--pack), on real data:
SQuAD v1.1 dev windows at seq 384 (BertForQuestionAnswering), GLUE MRPC train pairs at seq 128
(BertForSequenceClassification), and phase-2 shards at seq 512 built by the repo's own data prep from the
shared Wikipedia dump (BertForPreTraining). One training step = forward + backward (the optimizer step is the
same in every mode and left out). Modes run interleaved, round by round on the same batch; a ratio is the median
over rounds of the per-round ratio (range beside it).

    python bench/unpad_speed.py --model mini --batch 16 --rounds 5

Finetuning (SQuAD at --batch, MRPC at 2 x --batch; random batches): first the share of real tokens in the
tokens computed by the finetuning loop's own batching over the whole file (fixed padding; dynamic padding with
length-grouped batches, the default, or shuffled ones; packed rows), then timed rows padded_<max> (fixed padding,
as NVIDIA's and HF's pad-to-max-length), padded_dynamic (padded to the batch's longest, our collate), unpadded
(--unpad), packed (--pack: rows of the max length; rows per batch printed). Phase 2: padded_512, unpadded, packed,
packed_whole_last (packed with the whole last layer computed, as before it ran at [CLS] and the masked tokens only).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bertspeed.finetune import glue, squad  # noqa: E402
from bertspeed.finetune.batches import collate_padded, length_grouped_batches  # noqa: E402
from bertspeed.model.config import BertConfig  # noqa: E402
from bertspeed.model.heads import BertForQuestionAnswering, BertForSequenceClassification  # noqa: E402
from bertspeed.model.model import BertForPreTraining  # noqa: E402
from bertspeed.model.packing import assign_rows, plan_packing  # noqa: E402
from bertspeed.model.tokenizer import BertTokenizer  # noqa: E402
from bertspeed.model.unpad import set_pack, set_unpad  # noqa: E402
from bertspeed.pretrain.data import PretrainingData, list_shards  # noqa: E402
from bertspeed.pretrain.packing import pack_batch  # noqa: E402
from bertspeed.training.hardware import host_info, host_label  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
WIKI = DATA / "wiki" / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def squad_features(squad_json: Path, vocab: Path) -> list[dict]:
    """Every training window (seq 384, stride 128) of the SQuAD file."""
    _, contexts, examples = squad.read_squad(squad_json)
    return squad.featurize(examples, contexts, BertTokenizer.from_vocab_file(vocab), max_seq_length=384,
                           doc_stride=128, max_query_length=64, training=True)[0]


def glue_features(task_dir: Path, vocab: Path) -> list[dict]:
    """Every MRPC training pair (seq 128) with its label."""
    examples = glue.read_examples(glue.get_task("MRPC"), task_dir / "train.tsv")
    return glue.featurize(examples, BertTokenizer.from_vocab_file(vocab), 128)


def random_batches(features: list[dict], batch: int, count: int, seed: int) -> list[dict]:
    """`count` batches of random features, each padded to its longest."""
    chosen = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:batch * count].tolist()
    return [collate_padded([features[i] for i in chosen[k * batch:(k + 1) * batch]]) for k in range(count)]


def pad_to(batch: dict, T: int) -> dict:
    return {k: (F.pad(v, (0, T - v.shape[1])) if v.dim() == 2 else v) for k, v in batch.items()}


def batching_fill(title: str, lengths: list[int], T: int, batch: int) -> None:
    """Real tokens over the tokens computed, for the finetuning loop's batches of `batch` sequences (its own
    length_grouped_batches) under each layout: no model, just the counts."""
    real = sum(lengths)
    fills = {"fixed padding": real / (len(lengths) * T)}
    for grouped in (True, False):
        batches = length_grouped_batches(lengths, batch, seed=0, group_by_length=grouped)
        order = "length-grouped" if grouped else "shuffled"
        fills[f"dynamic padding, {order}"] = real / sum(len(b) * max(lengths[i] for i in b) for b in batches)
        fills[f"packed, {order}"] = real / sum(len(assign_rows([lengths[i] for i in b], T)) * T for b in batches)
    print(f"{title}: real tokens / computed tokens, batches of {batch} ({len(lengths)} sequences): " +
          "; ".join(f"{name} {100 * fill:.0f} %" for name, fill in fills.items()))


def finetune_rows(title: str, model_class, config, batches: list, T: int, rounds: int, clock) -> None:
    """padded to T, padded to the batch's longest, unpadded, packed into rows of T: one model's weights."""
    models = [model_class(config) for _ in range(3)]
    padded, unpadded, packed = models
    for model in (unpadded, packed):
        model.load_state_dict(padded.state_dict())
    set_unpad(unpadded)
    set_pack(packed, T)
    times = measure({f"padded_{T}": (padded, lambda b: lambda: padded(**pad_to(b, T))),
                     "padded_dynamic": (padded, lambda b: lambda: padded(**b)),
                     "unpadded": (unpadded, lambda b: lambda: unpadded(**pad_to(b, T))),
                     "packed": (packed, lambda b: lambda: packed(**b))}, batches, rounds, clock)
    real = sum(int(b["attention_mask"].sum()) for b in batches) / (T * sum(len(b["input_ids"]) for b in batches))
    rows = statistics.mean(plan_packing(b["attention_mask"], T).num_rows for b in batches)
    report(title, times, f"padded_{T}", real, f"; packed: {rows:.1f} rows per {len(batches[0]['input_ids'])}")
    print(f"  packed: {ratio(times['padded_dynamic'], times['packed'], 'padded_dynamic')}")


def phase2_shards(work: Path, vocab: Path) -> Path:
    """Wikipedia -> sentence-split text -> seq-512 shards, with the repo's data prep (reused when present)."""
    shards = work / "hdf5" / "seq_len_512_max_pred_80"
    if not (shards / "manifest.json").exists():
        python = sys.executable
        subprocess.run([python, "-m", "bertspeed.data_prep.extract", "--input", str(WIKI), "--output_dir",
                        str(work / "text"), "--num_shards", "1"], check=True, cwd=ROOT)
        subprocess.run([python, "-m", "bertspeed.data_prep.create_pretraining_data", "--input", str(work / "text"),
                        "--vocab_file", str(vocab), "--output_dir", str(work / "hdf5"), "--phases", "512:80",
                        "--do_lower_case"], check=True, cwd=ROOT)
    return shards


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def step_time(model, run, clock) -> float:
    model.zero_grad(set_to_none=True)
    start = clock()
    run().loss.backward()
    return clock() - start


def measure(modes: dict, batches: list, rounds: int, clock) -> dict[str, list[float]]:
    """modes: name -> (model, make_run(batch) -> callable); interleaved per round, one warm-up round."""
    times = {name: [] for name in modes}
    for r in range(rounds + 1):
        batch = batches[r % len(batches)]
        for name, (model, make_run) in modes.items():
            t = step_time(model, make_run(batch), clock)
            if r:
                times[name].append(t)
    return times


def ratio(base: list[float], mode: list[float], base_name: str) -> str:
    """Per round (same batch in both modes) the base's time over the mode's: median and range."""
    ratios = sorted(b / x for b, x in zip(base, mode))
    return f"{statistics.median(ratios):5.2f}x vs {base_name} (median of rounds; {ratios[0]:.2f}-{ratios[-1]:.2f})"


def report(title: str, times: dict, base: str, real_fraction: float, notes: str = "") -> None:
    print(f"{title}: real tokens {100 * real_fraction:.0f} % of the padded batch{notes}")
    for name, t in times.items():
        print(f"  {name:<15} median {statistics.median(t):7.3f} s  min {min(t):7.3f} s  "
              f"{ratio(times[base], t, base)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini", help="BertConfig preset (default: mini)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default: 16)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up (default: 5)")
    parser.add_argument("--work_dir", default=str(ROOT / "bench_out" / "unpad"),
                        help="where the phase-2 shards are built (reused when present)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="time of a step: the process's CPU time (default; steadier on a shared host, meant "
                             "with --threads 1) or wall time")
    args = parser.parse_args(argv)
    vocab, squad_json = DATA / "vocab" / "bert-base-uncased-vocab.txt", DATA / "squad" / "v1.1" / "dev-v1.1.json"
    for path in (vocab, squad_json, WIKI, DATA / "glue" / "MRPC" / "train.tsv"):
        if not path.exists():
            parser.error(f"real data {path} not found (see ../shared/data/README.md)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BertConfig.preset(args.model, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    print(f"host: {host_label(host_info())}; model {args.model}, batch {args.batch}, fp32, forward+backward, "
          f"{args.clock} time, {args.rounds} interleaved rounds")

    for title, features, model_class, T, batch in (
            ("SQuAD v1.1 dev, seq 384", squad_features(squad_json, vocab), BertForQuestionAnswering, 384, args.batch),
            ("GLUE MRPC train, seq 128", glue_features(DATA / "glue" / "MRPC", vocab),
             BertForSequenceClassification, 128, 2 * args.batch)):
        batching_fill(title, [len(f["input_ids"]) for f in features], T, 32)
        batches = random_batches(features, batch, args.rounds + 1, seed=0)
        finetune_rows(title, model_class, config.replace(num_labels=2), batches, T, args.rounds, CLOCKS[args.clock])

    data = PretrainingData(list_shards(phase2_shards(Path(args.work_dir), vocab)), args.batch, 0, 1, seed=0)
    batches = [next(data) for _ in range(args.rounds + 1)]
    padded, unpadded, whole_last = BertForPreTraining(config), BertForPreTraining(config), BertForPreTraining(config)
    unpadded.load_state_dict(padded.state_dict())
    whole_last.load_state_dict(padded.state_dict())
    set_unpad(unpadded)
    whole_last.last_layer_at_loss_positions = False
    packed = [pack_batch(b) for b in batches]
    index = {id(b): k for k, b in enumerate(batches)}
    times = measure({"padded_512": (padded, lambda b: lambda: padded(**b)),
                     "unpadded": (unpadded, lambda b: lambda: unpadded(**b)),
                     "packed": (padded, lambda b: lambda: padded(packed=packed[index[id(b)]])),
                     "packed_whole_last": (whole_last, lambda b: lambda: whole_last(packed=packed[index[id(b)]]))},
                    batches, args.rounds, CLOCKS[args.clock])
    real = sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)
    rows = sum(len(p["input_ids"]) for p in packed) / len(packed)
    report("phase 2 (Wikipedia, repo's data prep), seq 512", times, "padded_512", real,
           f"; packed: {rows:.1f} rows per {args.batch} instances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
