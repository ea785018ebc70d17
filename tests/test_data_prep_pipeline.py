"""create_pretraining_data end to end on real text (SQuAD dev articles): schema, masking and NSP
statistics, balance, determinism across workers, resume after a kill, bad input."""
from __future__ import annotations

import gzip
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from bertspeed.data_prep import schema
from bertspeed.data_prep.create_pretraining_data import main
from bertspeed.data_prep.shards import sha256_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, squad_dev) -> Path:
    """SQuAD dev articles as documents, one (naively split) sentence per line."""
    data = json.loads(squad_dev.read_text(encoding="utf-8"))["data"]
    path = tmp_path_factory.mktemp("corpus") / "squad dev.txt"  # a space in the path on purpose
    with open(path, "w", encoding="utf-8") as f:
        for article in data[:24]:
            for p in article["paragraphs"]:
                f.writelines(s + "\n" for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", p["context"]) if s.strip())
            f.write("\n")
    return path


def run(corpus, vocab_file, out, *extra) -> int:
    return main(["--input", str(corpus), "--vocab_file", str(vocab_file), "--output_dir", str(out),
                 "--num_shards", "3", "--block_bytes", "65536", "--random_seed", "7", *map(str, extra)])


def load(out: Path) -> tuple[dict, list[dict]]:
    manifest = json.loads((out / schema.MANIFEST).read_text())
    shards = []
    for entry in manifest["shards"]:
        with h5py.File(out / entry["file"]) as f:
            shards.append({k: (f[k][()], f[k].dtype, f[k].compression) for k in f})
    return manifest, shards


def concat(shards, name) -> np.ndarray:
    return np.concatenate([s[name][0] for s in shards])


@pytest.fixture(scope="module")
def static_out(tmp_path_factory, corpus, vocab_file):
    out = tmp_path_factory.mktemp("static") / "out dir"
    assert run(corpus, vocab_file, out, "--phases", "128:20", "512:80") == 0
    return out


@pytest.mark.parametrize("length, pred", [(128, 20), (512, 80)])
def test_schema_dtypes_balance_and_manifest(static_out, vocab_file, length, pred):
    out = static_out / f"seq_len_{length}_max_pred_{pred}"
    manifest, shards = load(out)
    assert manifest["schema_version"] == schema.SCHEMA_VERSION
    assert manifest["vocab_sha256"] == sha256_file(vocab_file)
    assert (manifest["max_seq_length"], manifest["max_predictions_per_seq"]) == (length, pred)
    dims = {"L": length, "P": pred}
    sizes = []
    for entry, shard in zip(manifest["shards"], shards):
        assert set(shard) == set(schema.MASKED_FIELDS)
        n = len(shard["input_ids"][0])
        sizes.append(n)
        for name, (dtype, shape) in schema.MASKED_FIELDS.items():
            data, stored_dtype, compression = shard[name]
            assert stored_dtype == dtype and compression == schema.COMPRESSION
            assert data.shape == tuple(n if d == "N" else dims[d] for d in shape)
        assert entry["num_instances"] == n and entry["sha256"] == sha256_file(out / entry["file"])
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == manifest["num_instances"] > 300 * 128 // length * 4
    assert not list(out.glob(".*tmp*")) and not (static_out / ".work").exists()


def test_instance_structure(static_out, vocab_file):
    _, shards = load(static_out / "seq_len_128_max_pred_20")
    ids, mask, seg = (concat(shards, k) for k in ("input_ids", "input_mask", "segment_ids"))
    lengths = mask.sum(1)
    assert (ids[:, 0] == 101).all()  # [CLS]
    rows = np.arange(len(ids))
    assert (ids[rows, lengths - 1] == 102).all()  # final [SEP]
    assert ((ids == 102) | (ids == 103)).sum(1).min() >= 2
    assert (ids[mask == 0] == 0).all() and (seg[mask == 0] == 0).all()
    # segment ids: 0...0 1...1 then padding, B non-empty
    assert (np.diff(seg.astype(int), axis=1)[mask[:, 1:] == 1] >= 0).all()
    assert (seg.sum(1) >= 2).all()
    short = lengths < 128 - 3
    assert 0.05 < short.mean() < 0.6  # short_seq_prob 0.1 plus document ends


def test_masking_statistics(static_out):
    for length, pred in [(128, 20), (512, 80)]:
        _, shards = load(static_out / f"seq_len_{length}_max_pred_{pred}")
        ids, mask = concat(shards, "input_ids"), concat(shards, "input_mask")
        pos, labels = concat(shards, "masked_lm_positions"), concat(shards, "masked_lm_ids")
        lengths = mask.sum(1)
        count = (pos > 0).sum(1)
        expected = np.minimum(pred, np.maximum(1, np.round(lengths * 0.15)))
        assert (count == expected).all()
        assert abs(count.sum() / lengths.sum() - 0.15) < 0.01
        for p, c in zip(pos, count):
            assert (np.diff(p[:c]) > 0).all() and (p[c:] == 0).all()
        rows = np.repeat(np.arange(len(ids)), pred).reshape(len(ids), pred)
        valid = pos > 0
        seen, orig = ids[rows[valid], pos[valid]], labels[valid]
        assert not np.isin(orig, [0, 101, 102]).any()
        frac_mask = (seen == 103).mean()
        frac_same = (seen == orig).mean()
        assert abs(frac_mask - 0.8) < 0.02 and abs(frac_same - 0.1) < 0.02
        assert abs(1 - frac_mask - frac_same - 0.1) < 0.02


def test_nsp_ratio(static_out):
    _, shards = load(static_out / "seq_len_128_max_pred_20")
    nsp = concat(shards, "next_sentence_labels")
    assert set(np.unique(nsp)) == {0, 1}
    assert abs(nsp.mean() - 0.5) < 0.05


def test_dynamic_shards_and_whole_word_starts(tmp_path, corpus, vocab_file):
    out = tmp_path / "dyn"
    assert run(corpus, vocab_file, out, "--masking", "dynamic") == 0
    manifest, shards = load(out)
    name, dtype, _ = schema.WORD_START_FIELD
    assert set(shards[0]) == set(schema.UNMASKED_FIELDS) | {name}
    assert shards[0][name][1] == dtype and manifest["masking"] == "dynamic"
    ids, starts, mask = concat(shards, "input_ids"), concat(shards, name), concat(shards, "input_mask")
    assert not (ids == 103).any()  # nothing masked
    vocab = Path(vocab_file).read_text(encoding="utf-8").split("\n")
    continuation = np.array([t.startswith("##") for t in vocab[:30522]])
    assert ((starts == 1) == (~continuation[ids] & (mask == 1))).all()


def test_whole_word_static_masking(tmp_path, corpus, vocab_file):
    out = tmp_path / "wwm"
    assert run(corpus, vocab_file, out, "--do_whole_word_mask") == 0
    _, shards = load(out)
    pos, labels = concat(shards, "masked_lm_positions"), concat(shards, "masked_lm_ids")
    segments = concat(shards, "segment_ids")
    vocab = Path(vocab_file).read_text(encoding="utf-8").split("\n")
    n_checked = 0
    for p, lab, seg in zip(pos, labels, segments):
        chosen = set(p[p > 0].tolist())
        for q, token in zip(p, lab):
            after_special = q == 1 or seg[q] != seg[q - 1]  # a segment may start mid-word
            if q > 0 and vocab[token].startswith("##") and not after_special:
                assert q - 1 in chosen  # a continuation piece is masked only with its word
                n_checked += 1
    assert n_checked > 50


def test_same_output_for_any_worker_count(tmp_path, corpus, vocab_file):
    a, b = tmp_path / "w1", tmp_path / "w2"
    assert run(corpus, vocab_file, a, "--workers", 1) == 0
    assert run(corpus, vocab_file, b, "--workers", 2) == 0
    (ma, sa), (mb, sb) = load(a), load(b)
    assert ma["num_instances"] == mb["num_instances"]
    for x, y in zip(sa, sb):
        for k in x:
            np.testing.assert_array_equal(x[k][0], y[k][0])
    assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]


def test_python_tokenizer_writes_the_same_shards(tmp_path, corpus, vocab_file, static_out, monkeypatch):
    """Where the compiled WordPiece is not built, data prep falls back to the Python path, same bytes."""
    from bertspeed.data_prep import fast_tokenizer
    assert fast_tokenizer._wordpiece is not None  # static_out came from the compiled path
    monkeypatch.setattr(fast_tokenizer, "_wordpiece", None)
    out = tmp_path / "python"
    with pytest.warns(UserWarning, match="not built"):
        assert run(corpus, vocab_file, out, "--phases", "128:20", "512:80") == 0
    sha = [[s["sha256"] for s in json.loads((o / d / schema.MANIFEST).read_text())["shards"]]
           for o in (static_out, out) for d in sorted(p.name for p in static_out.iterdir() if p.is_dir())]
    assert len(sha) == 4 and sha[:2] == sha[2:] and all(sha)


def test_resume_after_kill(tmp_path, corpus, vocab_file, static_out):
    out = tmp_path / "resumed"
    # The corpus four times over: enough work that the kill lands well before the run could finish.
    cmd = [sys.executable, "-m", "bertspeed.data_prep.create_pretraining_data", "--input", *[str(corpus)] * 4,
           "--vocab_file", str(vocab_file), "--output_dir", str(out), "--num_shards", "3",
           "--block_bytes", "16384", "--random_seed", "7", "--phases", "128:20", "512:80"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / ".work" / "seq_len_512_max_pred_80"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("part-*.npz"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(out.rglob("manifest.json"))
    done_parts = len(list(parts.glob("part-*.npz")))
    assert done_parts >= 3
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    # block size changes the "other document" choice, so compare with a fresh run of the same arguments
    fresh = tmp_path / "fresh"
    fresh_cmd = [x if x != str(out) else str(fresh) for x in cmd]
    assert subprocess.run(fresh_cmd, cwd=ROOT, capture_output=True).returncode == 0
    for phase in ("seq_len_128_max_pred_20", "seq_len_512_max_pred_80"):
        m1 = json.loads((out / phase / schema.MANIFEST).read_text())
        m2 = json.loads((fresh / phase / schema.MANIFEST).read_text())
        assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]


def test_rerun_skips_finished_shards(tmp_path, corpus, vocab_file):
    out = tmp_path / "keep"
    assert run(corpus, vocab_file, out, "--keep_work") == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("training_*.hdf5")}
    victim = out / "training_00001.hdf5"
    victim.unlink()
    assert run(corpus, vocab_file, out, "--keep_work") == 0
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("training_*.hdf5")}
    assert after["training_00000.hdf5"] == before["training_00000.hdf5"]
    assert after["training_00001.hdf5"] != before["training_00001.hdf5"]
    manifest = json.loads((out / schema.MANIFEST).read_text())
    assert manifest["shards"][1]["sha256"] == sha256_file(victim)


@pytest.mark.parametrize("content, message", [
    (b"", "no documents"),
    (b"\n\n  \n", "no documents"),
    (b"caf\xe9 latin-1 text\n", "not valid UTF-8"),
    (gzip.compress(b"hello world\n")[:-8] + b"garbage!", "corrupt"),
])
def test_bad_input_gives_clear_error_and_no_output(tmp_path, vocab_file, capsys, content, message):
    src = tmp_path / ("input.txt.gz" if content.startswith(b"\x1f\x8b") else "input.txt")
    src.write_bytes(content)
    out = tmp_path / "out"
    assert run(src, vocab_file, out) == 2
    err = capsys.readouterr().err
    assert message in err and ("input" in err)
    assert not list(out.glob("*.hdf5")) and not (out / schema.MANIFEST).exists()


def test_bad_arguments(tmp_path, corpus, vocab_file, capsys):
    assert run(tmp_path / "missing.txt", vocab_file, tmp_path / "o") == 2
    assert "missing.txt: input not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # checked with the arguments, before any work
        run(corpus, tmp_path / "nope.txt", tmp_path / "o")
    assert info.value.code == 2 and f"--vocab_file {tmp_path / 'nope.txt'}: does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(corpus, vocab_file, tmp_path / "o", "--num_shards", "0")
    assert "--num_shards must be at least 1" in capsys.readouterr().err
    assert run(corpus, vocab_file, tmp_path / "o", "--phases", "128-20") == 2
    assert "--phases" in capsys.readouterr().err


def test_settings_file_and_recorded_arguments(static_out, tmp_path, corpus, vocab_file, capsys):
    """The manifest records the arguments as JSON; the same arguments from --settings_file find the run
    complete, and changed ones are refused naming what changed."""
    phase = static_out / "seq_len_128_max_pred_20"
    arguments = json.loads((phase / schema.MANIFEST).read_text())["arguments"]
    assert arguments["input"] == [str(corpus)] and arguments["phases"] == ["128:20", "512:80"]
    assert (arguments["num_shards"], arguments["random_seed"], arguments["do_lower_case"]) == (3, 7, True)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({k: arguments[k] for k in ("input", "vocab_file", "output_dir", "phases",
                                                              "num_shards", "block_bytes", "random_seed")}))
    assert main(["--settings_file", str(settings)]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert main(["--settings_file", str(settings), "--random_seed", "8"]) == 2
    assert "is from a run with different random_seed" in capsys.readouterr().err
    settings.write_text(json.dumps({**arguments, "seed": 1}))
    with pytest.raises(SystemExit):
        main(["--settings_file", str(settings)])
    assert "unknown setting(s) seed" in capsys.readouterr().err


def test_nvidia_drop_in_flags(tmp_path, corpus, vocab_file, capsys):
    """NVIDIA's command line: --input_file=DIR/FILE --output_file=X.hdf5 --bert_model ... --do_lower_case."""
    out = tmp_path / "nv out" / "wikicorpus_en_training_0.hdf5"
    out.parent.mkdir()
    argv = [f"--input_file={corpus}", f"--output_file={out}", f"--vocab_file={vocab_file}", "--do_lower_case",
            "--bert_model", "bert-large-uncased", "--max_seq_length", "128", "--max_predictions_per_seq", "20",
            "--masked_lm_prob", "0.15", "--random_seed", "12345", "--dupe_factor", "2"]
    assert main(argv) == 0
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["shards"][0]["file"] == out.name and manifest["shards"][0]["sha256"] == sha256_file(out)
    assert (manifest["arguments"]["output_file"], manifest["arguments"]["output_dir"]) == (str(out), None)
    with h5py.File(out) as f:
        assert set(f) == set(schema.MASKED_FIELDS) and len(f["input_ids"]) == manifest["num_instances"] > 1000
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, out.name + ".manifest.json"]
    with pytest.raises(SystemExit):
        main(argv + ["--num_shards", "2"])
    with pytest.raises(SystemExit):
        main(argv + ["--output_dir", str(tmp_path)])
    assert "exactly one of --output_dir or --output_file" in capsys.readouterr().err


def test_output_dir_of_another_run_is_refused(tmp_path, corpus, vocab_file, capsys):
    out = tmp_path / "o"
    assert run(corpus, vocab_file, out) == 0
    before = sorted(p.name for p in out.iterdir())
    assert run(corpus, vocab_file, out, "--dupe_factor", "2") == 2
    assert "is from a run with different dupe_factor" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_memory_bounds_blocks_and_array_batches(tmp_path, monkeypatch):
    """Issue 20: a block ends at MAX_BLOCK_DOCS documents however small they are, and instances become arrays
    in batches of ARRAY_ROWS rows with the same fields and the same rows as one batch would give."""
    from bertspeed.data_prep import instances, parts
    text = tmp_path / "short.txt"
    text.write_text("".join(f"entry {i} is short.\n\n" for i in range(2 * parts.MAX_BLOCK_DOCS + 5)), encoding="utf-8")
    sizes = [len(docs) for _, _, docs, _ in parts.iter_blocks([str(text)], 1 << 20)]
    assert sizes == [parts.MAX_BLOCK_DOCS, parts.MAX_BLOCK_DOCS, 5]
    docs = [[[5 + (d * 7 + s) % 90 for s in range(9)] for _ in range(3)] for d in range(40)]
    spec = instances.InstanceSpec(32, 5)
    specials = instances.Specials(1, 2, 3, 100, np.zeros(100, bool))
    block = instances.TokenizedBlock.from_lists(docs)
    whole = instances.create_block_instances(block, spec, specials, 1, 1)
    monkeypatch.setattr(instances, "ARRAY_ROWS", 7)
    batched = instances.create_block_instances(block, spec, specials, 1, 1)
    assert len(whole["input_ids"]) > 7 and whole.keys() == batched.keys()
    for k in ("input_mask", "segment_ids", "next_sentence_labels"):  # masking draws differ, the rows do not
        np.testing.assert_array_equal(whole[k], batched[k])
    assert ((batched["masked_lm_positions"] > 0).sum(1) >= 1).all()


def test_reader_documents_line_by_line(tmp_path):
    """Issue 20: the NVIDIA-format reader goes line by line; documents end at blank or whitespace-only lines
    (CR/LF too), lines are stripped, and other line separators (U+2028, \\x85) stay inside a line."""
    from bertspeed.data_prep.readers import iter_segmented_documents
    path = tmp_path / "edge.txt"
    path.write_bytes("a\r\n b \r\n\r\n \t\nc\u2028d\n\u3000\ne\x85f\n\n\n\U0001F600 g".encode())
    assert list(iter_segmented_documents(str(path))) == [["a", "b"], ["c\u2028d"], ["e\x85f"], ["\U0001F600 g"]]
