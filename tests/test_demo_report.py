"""The demo report's verdict sentence, from the numbers alone (the slow test_demo.py checks the numbers)."""
import pytest

from bertspeed.pretrain.report import render

BASE = {"corpus_mb": 13.2, "prep_mb_per_s": 0.3, "phase1_steps": 600, "phase2_steps": 30, "phase1_seq_per_s": 60.0,
        "phase2_seq_per_s": 12.0, "phase1_mlm_acc": 0.14, "nsp_acc": 0.56, "unigram_mlm_acc": 0.062,
        "squad_exact_match": 2.4, "squad_f1": 5.9, "phase1_seq_len": 32, "phase2_seq_len": 128}


@pytest.mark.parametrize("mlm_acc, at_mask, expected", [
    (0.136, 0.060, ["The model learned: held-out MLM accuracy 0.136 is 2.2x the unigram baseline 0.062.",
                    "accuracy is 0.060 after phase 2 (seq 128), 1.0x its unigram baseline 0.062 (under 1.5x: not "
                    "clearly from context yet"]),
    (0.300, 0.250, ["The model learned", "accuracy is 0.250 after phase 2 (seq 128), 4.0x its unigram baseline "
                                         "0.062 (from context)."]),
    (0.080, 0.050, ["The model did NOT clearly learn: held-out MLM accuracy 0.080 against a unigram baseline of 0.062.",
                    "not clearly from context yet"]),
    (0.136, None, ["The model learned"]),
])
def test_verdict_says_whether_the_model_uses_context(mlm_acc, at_mask, expected):
    text = render({**BASE, "mlm_acc": mlm_acc, "mlm_acc_at_mask": at_mask}, minutes=13.0)
    verdict = text.split("\n\n")[-2]
    for phrase in expected:
        assert phrase in verdict
    if at_mask is None:
        assert "[MASK]" not in verdict
    assert "Whole demo run: 13.0 minutes." in text


def test_verdict_judges_each_phase_against_its_own_baseline():
    text = render({**BASE, "mlm_acc": 0.2, "mlm_acc_at_mask": 0.07, "phase1_mlm_acc_at_mask": 0.13,
                   "phase1_unigram_mlm_acc": 0.054}, minutes=13.0)
    verdict = text.split("\n\n")[-2]
    assert ("accuracy is 0.130 after phase 1 (seq 32), 2.4x its unigram baseline 0.054 (from context); 0.070 after "
            "phase 2 (seq 128), 1.1x its unigram baseline 0.062 (under 1.5x") in verdict
    assert "| held-out MLM accuracy at [MASK] positions after phase 1 | 0.130 |" in text


@pytest.mark.parametrize("random_f1, phrase", [(3.1, "against 3.10 from a randomly initialised model (+2.80: pretraining "
                                                     "helps)."),
                                               (7.0, "(pretraining did not help here).")])
def test_report_compares_squad_with_random_init(random_f1, phrase):
    text = render({**BASE, "mlm_acc": 0.136, "mlm_acc_at_mask": 0.1, "squad_random_init_exact_match": 1.0,
                   "squad_random_init_f1": random_f1}, minutes=13.0)
    assert phrase in text.split("\n\n")[-2]
    assert f"| SQuAD v1.1 dev subset F1, same finetuning from random init | {random_f1:.2f} |" in text
