"""Speed of the padded model against unpadding (--unpad) and sequence packing (--pack), on real data:
SQuAD v1.1 dev windows at seq 384 (BertForQuestionAnswering) and phase-2 shards at seq 512 built by the
repo's own data prep from the shared Wikipedia dump (BertForPreTraining). One training step = forward +
backward (the optimizer step is the same in every mode and left out). Modes run interleaved, round by
round on the same batch; a ratio is the median over rounds of the per-round ratio (range beside it).

    python bench/unpad_speed.py --model mini --batch 16 --rounds 5

Rows: squad padded_384 (NVIDIA's fixed padding), padded_dynamic (padded to the batch's longest, our
finetuning's collate), unpadded; phase2 padded_512, unpadded, packed (rows after packing printed).
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

from bertspeed.finetune import squad  # noqa: E402
from bertspeed.finetune.batches import collate_padded  # noqa: E402
from bertspeed.model.config import BertConfig  # noqa: E402
from bertspeed.model.heads import BertForQuestionAnswering  # noqa: E402
from bertspeed.model.model import BertForPreTraining  # noqa: E402
from bertspeed.model.tokenizer import BertTokenizer  # noqa: E402
from bertspeed.model.unpad import set_unpad  # noqa: E402
from bertspeed.pretrain.data import PretrainingData, list_shards  # noqa: E402
from bertspeed.pretrain.packing import pack_batch  # noqa: E402
from bertspeed.training.hardware import host_info, host_label  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
WIKI = DATA / "wiki" / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def squad_batches(squad_json: Path, vocab: Path, batch: int, count: int, seed: int) -> list[dict]:
    tokenizer = BertTokenizer.from_vocab_file(vocab)
    _, contexts, examples = squad.read_squad(squad_json)
    g = torch.Generator().manual_seed(seed)
    chosen = [examples[i] for i in torch.randperm(len(examples), generator=g)[:batch * count].tolist()]
    features, _ = squad.featurize(chosen, contexts, tokenizer, max_seq_length=384, doc_stride=128,
                                  max_query_length=64, training=True)
    return [collate_padded(features[k * batch:(k + 1) * batch]) for k in range(count)]


def pad_to(batch: dict, T: int) -> dict:
    return {k: (F.pad(v, (0, T - v.shape[1])) if v.dim() == 2 else v) for k, v in batch.items()}


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


def step_time(model, run) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    run().loss.backward()
    return time.perf_counter() - start


def measure(modes: dict, batches: list, rounds: int) -> dict[str, list[float]]:
    """modes: name -> (model, make_run(batch) -> callable); interleaved per round, one warm-up round."""
    times = {name: [] for name in modes}
    for r in range(rounds + 1):
        batch = batches[r % len(batches)]
        for name, (model, make_run) in modes.items():
            t = step_time(model, make_run(batch))
            if r:
                times[name].append(t)
    return times


def report(title: str, times: dict, base: str, real_fraction: float, notes: str = "") -> None:
    """Per round (same batch in every mode) the base's time over the mode's; median and range of those."""
    print(f"{title}: real tokens {100 * real_fraction:.0f} % of the padded batch{notes}")
    for name, t in times.items():
        ratios = sorted(b / x for b, x in zip(times[base], t))
        print(f"  {name:<15} median {statistics.median(t):7.3f} s  min {min(t):7.3f} s  "
              f"{statistics.median(ratios):5.2f}x vs {base} (median of rounds; {ratios[0]:.2f}-{ratios[-1]:.2f})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini", help="BertConfig preset (default: mini)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default: 16)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up (default: 5)")
    parser.add_argument("--work_dir", default=str(ROOT / "bench_out" / "unpad"),
                        help="where the phase-2 shards are built (reused when present)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    vocab, squad_json = DATA / "vocab" / "bert-base-uncased-vocab.txt", DATA / "squad" / "v1.1" / "dev-v1.1.json"
    for path in (vocab, squad_json, WIKI):
        if not path.exists():
            parser.error(f"real data {path} not found (see ../shared/data/README.md)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BertConfig.preset(args.model, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    print(f"host: {host_label(host_info())}; model {args.model}, batch {args.batch}, fp32, forward+backward, "
          f"{args.rounds} interleaved rounds")

    batches = squad_batches(squad_json, vocab, args.batch, args.rounds + 1, seed=0)
    padded, unpadded = BertForQuestionAnswering(config), BertForQuestionAnswering(config)
    unpadded.load_state_dict(padded.state_dict())
    set_unpad(unpadded)
    times = measure({"padded_384": (padded, lambda b: lambda: padded(**pad_to(b, 384))),
                     "padded_dynamic": (padded, lambda b: lambda: padded(**b)),
                     "unpadded": (unpadded, lambda b: lambda: unpadded(**pad_to(b, 384)))}, batches, args.rounds)
    real = sum(int(b["attention_mask"].sum()) for b in batches) / (384 * sum(len(b["input_ids"]) for b in batches))
    report("SQuAD v1.1 dev, seq 384", times, "padded_384", real)

    data = PretrainingData(list_shards(phase2_shards(Path(args.work_dir), vocab)), args.batch, 0, 1, seed=0)
    batches = [next(data) for _ in range(args.rounds + 1)]
    padded, unpadded = BertForPreTraining(config), BertForPreTraining(config)
    unpadded.load_state_dict(padded.state_dict())
    set_unpad(unpadded)
    packed = [pack_batch(b) for b in batches]
    index = {id(b): k for k, b in enumerate(batches)}
    times = measure({"padded_512": (padded, lambda b: lambda: padded(**b)),
                     "unpadded": (unpadded, lambda b: lambda: unpadded(**b)),
                     "packed": (padded, lambda b: lambda: padded(packed=packed[index[id(b)]]))}, batches, args.rounds)
    real = sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)
    rows = sum(len(p["input_ids"]) for p in packed) / len(packed)
    report("phase 2 (Wikipedia, repo's data prep), seq 512", times, "padded_512", real,
           f"; packed: {rows:.1f} rows per {args.batch} instances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
