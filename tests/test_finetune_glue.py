"""GLUE readers on every task's file layout (real files where ../shared/data has them, hand-made
rows in the official column layout otherwise) and the submission format."""
from __future__ import annotations

import pytest

from bertspeed.finetune import glue

# One hand-made row per task, in the column layout of the glue_data files (header, then data).
HAND_MADE = {
    "QQP": ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            "7\t15\t16\tHow do I learn Python?\tWhat is the best way to learn Python?\t1",
            "id\tquestion1\tquestion2", "0\tIs it raining?\tWill it rain today?"),
    "MNLI": ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
             "0\t31193\t31193n\tgovernment\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tThe cat sat.\tA cat is sitting.\t"
             "neutral\tentailment",
             "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2",
             "0\t31193\t31193n\tgovernment\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tThe dog ran.\tNo dog ran."),
    "QNLI": ("index\tquestion\tsentence\tlabel", "0\tWhat sat?\tThe cat sat.\tnot_entailment",
             "index\tquestion\tsentence", "0\tWho ran?\tThe dog ran."),
    "RTE": ("index\tsentence1\tsentence2\tlabel", "0\tThe cat sat on the mat.\tA cat sat.\tentailment",
            "index\tsentence1\tsentence2", "0\tThe dog ran \"fast\".\tA dog ran."),
    "WNLI": ("index\tsentence1\tsentence2\tlabel", "0\tI put the cake in the box because it was small.\t"
             "The box was small.\t0", "index\tsentence1\tsentence2", "0\tJohn saw Bill.\tBill was seen."),
}


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_hand_made_layouts(tmp_path, name):
    header, row, test_header, test_row = HAND_MADE[name]
    task = glue.get_task(name)
    (tmp_path / "dev.tsv").write_text(f"{header}\n{row}\n")
    (tmp_path / "test.tsv").write_text(f"{test_header}\n{test_row}\n")
    [example] = glue.read_examples(task, tmp_path / "dev.tsv")
    fields = row.split("\t")
    assert (example.text_a, example.text_b) == (fields[task.columns[0]], fields[task.columns[1]])
    assert task.labels[example.label] == fields[-1]
    [test_example] = glue.read_examples(task, tmp_path / "test.tsv", test=True)
    test_fields = test_row.split("\t")
    assert test_example.guid == "0" and test_example.label is None
    assert (test_example.text_a, test_example.text_b) == (test_fields[task.test_columns[0]],
                                                          test_fields[task.test_columns[1]])


def test_real_files(glue_dir):
    cola = glue.read_examples(glue.get_task("cola"), glue_dir / "CoLA" / "dev.tsv")
    assert len(cola) == 1043  # no header line in CoLA dev
    assert cola[0].text_a == "The sailors rode the breeze clear of the rocks." and cola[0].label == 1
    mrpc = glue.read_examples(glue.get_task("MRPC"), glue_dir / "MRPC" / "dev.tsv")
    assert len(mrpc) == 408 and mrpc[0].text_b.startswith('" The foodservice pie')  # quotes kept
    sts = glue.read_examples(glue.get_task("STS-B"), glue_dir / "STS-B" / "dev.tsv")
    assert len(sts) == 1500 and sts[0].label == 5.0 and sts[0].text_b == "A man wearing a hard hat is dancing."
    sst_test = glue.read_examples(glue.get_task("sst2"), glue_dir / "SST-2" / "test.tsv", test=True)
    assert len(sst_test) == 1821 and sst_test[0].guid == "0"


def test_bad_input_names_file_and_line(tmp_path):
    rte = glue.get_task("RTE")
    (tmp_path / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match=r"dev.tsv:3: label 'maybe' is not one of"):
        glue.read_examples(rte, tmp_path / "dev.tsv")
    (tmp_path / "short.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tonly one field\n")
    with pytest.raises(ValueError, match=r"short.tsv:2: expected at least 3 tab-separated fields"):
        glue.read_examples(rte, tmp_path / "short.tsv")
    with pytest.raises(FileNotFoundError, match="GLUE file not found"):
        glue.read_examples(rte, tmp_path / "absent.tsv")
    with pytest.raises(ValueError, match="not a GLUE task"):
        glue.get_task("SQuAD")


def test_submission_format(tmp_path):
    mnli = glue.get_task("MNLI")
    examples = [glue.Example("0", "a", "b", None), glue.Example("1", "c", "d", None)]
    glue.write_submission(tmp_path / "MNLI-m.tsv", mnli, examples, [1, 2])
    assert (tmp_path / "MNLI-m.tsv").read_text() == "index\tprediction\n0\tentailment\n1\tneutral\n"
    sts = glue.get_task("STS-B")
    glue.write_submission(tmp_path / "STS-B.tsv", sts, examples, [4.12345, 0.5])
    assert (tmp_path / "STS-B.tsv").read_text() == "index\tprediction\n0\t4.123\n1\t0.500\n"
    assert [t.name for t in glue.TASKS.values()] == ["CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI",
                                                     "RTE", "WNLI"]
