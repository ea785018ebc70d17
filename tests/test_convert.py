"""bertspeed/convert.py and bertspeed/model/architectures.py: the class comes from config.json's
`architectures` (else the keys), heads that do not fit it are an error, run directories by --tag, and
`python -m pretrain.export` as the converter's old name."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bertspeed.convert import convert
from bertspeed.finetune import predict
from bertspeed.model.architectures import ARCHITECTURES, build_model, class_from_keys, model_class_for
from bertspeed.model.checkpoint import CheckpointError, read_state_dict, save_pretrained
from bertspeed.model.config import BertConfig
from bertspeed.model.crf import BertCRFForTokenClassification
from bertspeed.model.heads import BertForSequenceClassification, BertForTokenClassification
from bertspeed.model.model import BertForPreTraining, BertModel
from bertspeed.pretrain import export

ROOT = Path(__file__).resolve().parents[1]
LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(45)]


def tiny_config(**changes) -> BertConfig:
    return BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32, num_labels=len(LABELS), id2label=LABELS,
                      **changes)


def saved(model_class, folder: Path, seed: int = 0) -> Path:
    """A model with non-trivial weights (CRF transitions included), saved with save_pretrained."""
    torch.manual_seed(seed)
    model = model_class(tiny_config())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    save_pretrained(model, folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return folder


def set_architectures(folder: Path, names) -> None:
    config = json.loads((folder / "config.json").read_text())
    if names is None:
        del config["architectures"]
    else:
        config["architectures"] = names
    (folder / "config.json").write_text(json.dumps(config))


def viterbi_tags(model) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, len(VOCAB), (3, 12), generator=g)
    attention_mask = torch.ones(3, 12, dtype=torch.long)
    attention_mask[1, 8:] = 0
    word_mask = torch.zeros(3, 12, dtype=torch.long)
    word_mask[:, 1:11:2] = 1
    word_mask[1, 7:] = 0
    with torch.no_grad():
        return model.eval()(input_ids, attention_mask, word_mask=word_mask).tags


def test_crf_checkpoint_round_trips_to_the_same_class_and_tags(tmp_path):
    source = saved(BertCRFForTokenClassification, tmp_path / "ner")
    original, _ = build_model(BertConfig.from_json_file(source), read_state_dict(source), str(source))
    message = convert(source, tmp_path / "hf")
    assert "wrote BertCRFForTokenClassification" in message
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert written["architectures"] == ["BertCRFForTokenClassification"]
    assert {int(k): v for k, v in written["id2label"].items()} == LABELS
    back, report = build_model(BertConfig.from_json_file(tmp_path / "hf"), read_state_dict(tmp_path / "hf"),
                               str(tmp_path / "hf"))
    assert type(back) is BertCRFForTokenClassification and not report.initialized and not report.unused
    tags = viterbi_tags(back)
    assert tags == viterbi_tags(original) and len(set(sum(tags, []))) > 1


@pytest.mark.parametrize("architecture,named", [
    ("BertForTokenClassification", "crf.end_transitions, crf.start_transitions, crf.transitions"),
    ("BertForSequenceClassification", "crf.end_transitions"),
    ("BertModel", "classifier.bias, classifier.weight, crf."),
])
def test_heads_that_do_not_fit_the_architecture_name_the_keys(tmp_path, architecture, named):
    source = saved(BertCRFForTokenClassification, tmp_path / "ner")
    set_architectures(source, [architecture])
    with pytest.raises(CheckpointError, match=f"{source}.*{named}.*do not fit {architecture}"):
        convert(source, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_token_classifier_is_not_a_sequence_classifier(tmp_path):
    source = saved(BertForTokenClassification, tmp_path / "ner")
    set_architectures(source, ["BertForSequenceClassification"])
    with pytest.raises(CheckpointError, match="holds classifier.bias, classifier.weight but not "
                                              "bert.pooler.dense.bias, bert.pooler.dense.weight"):
        convert(source, tmp_path / "hf")
    set_architectures(source, ["BertCRFForTokenClassification"])  # a token classifier without its CRF
    with pytest.raises(CheckpointError, match="but not crf.end_transitions"):
        convert(source, tmp_path / "hf")


def test_unknown_architecture_is_an_error(tmp_path):
    source = saved(BertForTokenClassification, tmp_path / "ner")
    set_architectures(source, ["BertForMaskedLM"])
    with pytest.raises(CheckpointError, match="architectures 'BertForMaskedLM' is not one we can build"):
        convert(source, tmp_path / "hf")


@pytest.mark.parametrize("model_class", [BertCRFForTokenClassification, BertForTokenClassification,
                                         BertForSequenceClassification, BertForPreTraining, BertModel])
def test_without_architectures_the_keys_decide(tmp_path, model_class):
    source = saved(model_class, tmp_path / "m")
    set_architectures(source, None)
    config = BertConfig.from_json_file(source)
    assert model_class_for(config, read_state_dict(source), str(source)) is model_class
    convert(source, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [model_class.__name__]


def test_table_covers_every_model_and_save_pretrained_names_it(tmp_path):
    assert set(ARCHITECTURES) == {"BertModel", "BertForPreTraining", "BertForQuestionAnswering",
                                  "BertForSequenceClassification", "BertForTokenClassification",
                                  "BertCRFForTokenClassification"}
    for name, model_class in ARCHITECTURES.items():
        save_pretrained(model_class(tiny_config()), tmp_path / name)
        assert json.loads((tmp_path / name / "config.json").read_text())["architectures"] == [name]
        assert class_from_keys(read_state_dict(tmp_path / name)) is model_class


def test_predict_loads_the_class_of_the_table_and_refuses_misfits(tmp_path):
    source = saved(BertCRFForTokenClassification, tmp_path / "ner")
    model, tokenizer = predict.load(source)
    assert type(model) is BertCRFForTokenClassification and not model.training
    set_architectures(source, ["BertForTokenClassification"])
    with pytest.raises(CheckpointError, match="crf.end_transitions.*do not fit BertForTokenClassification"):
        predict.load(source)
    encoder = saved(BertModel, tmp_path / "encoder")
    set_architectures(encoder, ["BertForTokenClassification"])
    with pytest.raises(CheckpointError, match="no weights for classifier.weight, classifier.bias"):
        predict.load(encoder)


def run_dir(tmp_path) -> Path:
    """A pretraining run folder: two checkpoints, `latest` naming the second."""
    run = tmp_path / "run"
    for seed, tag in enumerate(("global_step1", "global_step2")):
        saved(BertForPreTraining, run / tag, seed=seed)
    (run / "latest").write_text("global_step2\n")
    return run


def test_tag_picks_a_run_directory_checkpoint(tmp_path):
    run = run_dir(tmp_path)
    key = "bert.encoder.layer.0.attention.self.query.weight"
    convert(run, tmp_path / "latest")
    assert torch.equal(read_state_dict(tmp_path / "latest")[key], read_state_dict(run / "global_step2")[key])
    convert(run, tmp_path / "first", tag="global_step1")
    assert torch.equal(read_state_dict(tmp_path / "first")[key], read_state_dict(run / "global_step1")[key])
    assert (tmp_path / "first" / "vocab.txt").is_file()
    with pytest.raises(FileNotFoundError, match="no checkpoint 'global_step9'.*global_step1, global_step2"):
        convert(run, tmp_path / "x", tag="global_step9")
    with pytest.raises(CheckpointError, match="--tag '../run'"):
        convert(run, tmp_path / "x", tag="../run")


def test_export_is_the_converter_with_its_prefix(tmp_path, capsys):
    run = run_dir(tmp_path)
    assert export.main([str(run), "--output_dir", str(tmp_path / "hf"), "--tag", "global_step1"]) == 0
    assert "wrote BertForPreTraining to" in capsys.readouterr().out
    assert export.main([str(run), "--output_dir", str(tmp_path / "x"), "--tag", "global_step9"]) == 2
    assert capsys.readouterr().err.startswith("pretrain.export: error: ")
    assert not (tmp_path / "x").exists()


def test_python_m_pretrain_export_from_the_repository_root(tmp_path):
    run = run_dir(tmp_path)
    done = subprocess.run([sys.executable, "-m", "pretrain.export", str(run), "--output_dir", str(tmp_path / "hf")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    bad = subprocess.run([sys.executable, "-m", "pretrain.export", str(tmp_path / "nowhere"), "--output_dir",
                          str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("pretrain.export: error: ") and "nowhere" in bad.stderr
