"""data_prep.masking (shared with pretrain's loader) and reading our shards the way NVIDIA's loader does."""
from __future__ import annotations

import numpy as np
import pytest

from bertspeed.data_prep.masking import mask_batch, mask_tokens
from bertspeed.data_prep.schema import num_predictions

VOCAB, MASK = 1000, 103


def random_rows(rng, n, length):
    ids = rng.integers(200, VOCAB, (n, length))
    ids[:, 0], ids[:, -1] = 101, 102
    special = np.zeros((n, length), bool)
    special[:, [0, -1]] = True
    return ids, special


def check_stats(originals, masked, positions, labels):
    seen = masked[positions]
    assert (labels == originals[positions]).all()
    frac_mask, frac_same = (seen == MASK).mean(), (seen == labels).mean()
    assert abs(frac_mask - 0.8) < 0.02 and abs(frac_same - 0.1) < 0.02 and abs(1 - frac_mask - frac_same - 0.1) < 0.02


def test_mask_tokens_rule_and_statistics():
    rng = np.random.default_rng(0)
    ids, special = random_rows(rng, 2000, 128)
    all_lab, all_masked, all_orig = [], [], []
    for row, sp in zip(ids, special):
        masked, pos, lab = mask_tokens(rng, row, sp, VOCAB, 20, MASK)
        assert len(pos) == num_predictions(128, 20) and (np.diff(pos) > 0).all() and not sp[pos].any()
        untouched = ~np.isin(np.arange(128), pos)
        assert (masked[untouched] == row[untouched]).all()
        all_masked.append(masked[pos])
        all_orig.append(row[pos])
        all_lab.append(lab)
    seen, orig, lab = (np.concatenate(x) for x in (all_masked, all_orig, all_lab))
    check_stats(orig, seen, np.arange(len(seen)), lab)


def test_mask_batch_matches_the_rule_with_padding():
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 128, 3000)
    ids = np.zeros((3000, 128), np.int32)
    maskable = np.zeros((3000, 128), bool)
    for r, k in enumerate(lengths):
        ids[r, :k] = rng.integers(200, VOCAB, k)
        ids[r, 0], ids[r, k - 1] = 101, 102
        maskable[r, 1:k - 1] = True
    masked, positions, labels = mask_batch(rng, ids, maskable, lengths, VOCAB, 20, MASK)
    counts = (positions > 0).sum(1)
    assert (counts == np.minimum(20, np.maximum(1, np.round(lengths * 0.15)))).all()
    for r in range(3000):
        p = positions[r, :counts[r]]
        assert (np.diff(p) > 0).all() and maskable[r, p].all() and (positions[r, counts[r]:] == 0).all()
    rows = np.repeat(np.arange(3000)[:, None], 20, 1)
    valid = positions > 0
    check_stats(ids[rows[valid], positions[valid]], masked[rows[valid], positions[valid]], slice(None),
                labels[valid])
    untouched = np.ones_like(maskable)
    untouched[rows[valid], positions[valid]] = False
    assert (masked[untouched] == ids[untouched]).all()
    # at a fixed length, every maskable position is chosen equally often (no positional bias)
    full = np.full(3000, 128)
    fixed = maskable.copy()
    fixed[:, 1:127] = True
    _, pos, _ = mask_batch(rng, ids, fixed, full, VOCAB, 20, MASK)
    hits = np.bincount(pos[pos > 0], minlength=128)[1:127]
    assert abs(hits.mean() - 3000 * 19 / 126) < 1 and hits.std() / hits.mean() < 0.12


def test_whole_word_masking_takes_whole_words():
    rng = np.random.default_rng(2)
    ids, special = random_rows(rng, 500, 64)
    starts = rng.random((500, 64)) < 0.6
    for row, sp, st in zip(ids, special, starts):
        st[0] = st[-1] = True
        _, pos, _ = mask_tokens(rng, row, sp, VOCAB, 10, MASK, word_starts=st)
        chosen = set(pos.tolist())
        assert len(pos) <= num_predictions(64, 10)
        for q in pos:
            if not st[q] and q - 1 > 0:
                assert q - 1 in chosen
            if q + 1 < 63 and not st[q + 1]:
                assert q + 1 in chosen


def nvidia_getitem(f, index, max_pred_length):
    """NVIDIA DeepLearningExamples pretraining_dataset.__getitem__, in numpy."""
    keys = ["input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids", "next_sentence_labels"]
    input_ids, input_mask, segment_ids, positions, ids, nsp = [f[k][index].astype(np.int64) for k in keys]
    labels = np.full(input_ids.shape, -1)
    index_end = max_pred_length
    padded = np.nonzero(positions == 0)[0]
    if len(padded):
        index_end = padded[0]
    labels[positions[:index_end]] = ids[:index_end]
    return input_ids, segment_ids, input_mask, labels, nsp


def test_nvidia_loader_reads_our_shards(tmp_path, vocab_file, squad_dev):
    h5py = pytest.importorskip("h5py")
    import json

    from bertspeed.data_prep.create_pretraining_data import main
    data = json.loads(squad_dev.read_text(encoding="utf-8"))["data"][:5]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join("\n".join(p["context"].split(". ")) for a in data for p in a["paragraphs"]))
    assert main(["--input", str(corpus), "--vocab_file", str(vocab_file), "--output_dir", str(tmp_path / "o"),
                 "--num_shards", "2"]) == 0
    total = 0
    for shard in sorted((tmp_path / "o").glob("*training*")):  # NVIDIA picks files with "training"
        with h5py.File(shard) as f:
            for i in range(len(f["input_ids"])):
                input_ids, segment_ids, input_mask, labels, nsp = nvidia_getitem(f, i, 20)
                n_labels = (labels >= 0).sum()
                assert n_labels == num_predictions(int(input_mask.sum()), 20)
                assert (labels[labels >= 0] != 0).all() and labels[0] == -1
                assert nsp in (0, 1)
                total += 1
    assert total > 100
