"""Security: no code path unpickles an untrusted file (static check of every loader call; the
pickle payload refusal itself: test_bert_checkpoint.py::test_pickled_objects_are_refused), and the
shell pipeline takes paths with spaces and shell metacharacters literally. (Credentials never in
messages: test_data_prep_s3.py::test_missing_bucket_and_bad_credentials.)"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from pretrain_helpers import ROOT, env

PACKAGES = ("bertspeed", "pretrain", "finetune", "data_prep", "kernels", "bench")
# The one torch.load without weights_only: NVIDIA DeepLearningExamples checkpoints hold objects (a pickled
# DataLoader) that weights_only refuses. Safe because its pickle_module resolves every global through
# restricted_pickle.Unpickler.find_class: tensor-rebuild functions, dtypes and plain containers, and a
# do-nothing Placeholder for any other name, so nothing named in the file is imported or called
# (tests/test_foreign_checkpoints.py runs a payload through it).
RESTRICTED_LOADER = ("bertspeed/model/restricted_pickle.py", "pickle_module=module, weights_only=False")


def source_lines():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                yield f"{path.relative_to(ROOT)}:{number}", line


def test_no_loader_call_can_unpickle():
    unsafe = []
    for where, line in source_lines():
        code = line.split("#")[0]
        restricted = where.startswith(RESTRICTED_LOADER[0]) and RESTRICTED_LOADER[1] in code
        if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code and not restricted:
            unsafe.append(where)
        if re.search(r"\bnp\.load\(", code) and "allow_pickle=False" not in code:
            unsafe.append(where)
        if re.search(r"\b(pickle|cPickle|dill|joblib)\.loads?\(|yaml\.load\(|shell=True", code):
            unsafe.append(where)
    assert not unsafe, f"possible unpickling or shell injection at {unsafe}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_shell_pipeline_takes_metacharacter_paths_literally(tmp_path, squad_dev):
    weird = "dir with spaces; $(touch PWNED) `touch PWNED2` & 'q' \"dq\" *"
    src = tmp_path / weird
    src.mkdir()
    data = json.loads(squad_dev.read_text(encoding="utf-8"))["data"]
    text = "\n\n".join(" ".join(p["context"] for p in a["paragraphs"]) for a in data[:4])
    (src / "my $HOME text;.txt").write_text(text, encoding="utf-8")
    out = tmp_path / f"out {weird}"
    result = subprocess.run(
        ["bash", str(ROOT / "data_prep" / "create_datasets.sh"), "--output", str(out), "--input",
         str(src / "my $HOME text;.txt"), "--vocab_size", "2000", "--phases", "64:10", "--num_shards", "1",
         "--num_text_shards", "1", "--workers", "1"],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "hdf5" / "seq_len_64_max_pred_10" / "manifest.json").read_text())
    assert manifest["num_instances"] > 10
    assert not list(tmp_path.rglob("PWNED*")) and not (ROOT / "PWNED").exists()
    shutil.rmtree(out)
