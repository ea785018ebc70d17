"""The demo's sizing rules, from given throughputs (the slow test_demo.py runs the real thing)."""
import dataclasses
import json

import pytest

from bertspeed.pretrain import demo_plan

SPEED = {64: 1600.0, 128: 640.0, 256: 160.0}  # in-process training seq/s at PHASE1_SEQ by hidden size
SPEED2 = {64: 200.0, 128: 80.0, 256: 20.0}  # the same at PHASE2_SEQ, global batch PHASE2_BATCH
MIN_STEPS = {hidden: steps for hidden, _, steps in demo_plan.SHAPES}


@pytest.fixture
def plan1(monkeypatch):
    """phase1_plan(seconds) with the throughputs above; also returns the hidden sizes it measured."""
    monkeypatch.setattr(demo_plan, "launcher_seconds", lambda: 12.0)

    def plan(seconds):
        measured = []

        def measure(config, seq, batch):
            assert config.vocab_size == 8000 and config.hidden_dropout_prob == 0.0
            if seq == demo_plan.PHASE2_SEQ:
                assert batch == demo_plan.PHASE2_BATCH
                return SPEED2[config.hidden_size]
            assert (seq, batch) == (demo_plan.PHASE1_SEQ, demo_plan.PHASE1_MICRO)
            measured.append(config.hidden_size)
            return SPEED[config.hidden_size]

        return demo_plan.phase1_plan(lambda: seconds, 8000, measure), measured

    return plan


def test_phase1_takes_the_largest_shape_that_gets_its_learning_steps(plan1):
    plan, measured = plan1(3000.0)
    assert (plan.hidden_size, plan.num_hidden_layers) == (256, 4) and measured == [64, 128, 256]
    expected = demo_plan.DISTRIBUTED_EFFICIENCY * SPEED[256]
    stage, phase2 = demo_plan.pretraining_split(3000, 12, demo_plan.PHASE2_EFFICIENCY * SPEED2[256])
    assert (plan.seconds, plan.phase2_seconds) == (stage, phase2)
    train = stage - 12 - demo_plan.eval_seconds(expected)
    assert plan.steps == int(train * expected / 64) >= MIN_STEPS[256]
    assert plan.squad_seconds == demo_plan.SHARES["squad"] * 3000


def test_phase2_gets_the_time_for_its_steps_up_to_half_of_pretraining():
    shares, batch = demo_plan.SHARES, demo_plan.PHASE2_BATCH
    pretraining = (shares["phase1"] + shares["phase2"]) * 1000
    for speed in (20.0, 40.0, 400.0, 4000.0):
        phase1, phase2 = demo_plan.pretraining_split(1000, 12, speed)
        assert phase1 + phase2 == pytest.approx(pretraining)
        steps = (phase2 - 12 - demo_plan.eval_seconds(speed) / demo_plan.EVALUATIONS) * speed / batch
        if phase2 == pretraining / 2:  # too slow for its steps in half of pretraining
            assert steps < demo_plan.PHASE2_MIN_STEPS
        elif phase2 == shares["phase2"] * 1000:  # its share holds more than its steps
            assert steps >= demo_plan.PHASE2_MIN_STEPS
        else:
            assert steps == pytest.approx(demo_plan.PHASE2_MIN_STEPS)
    assert demo_plan.pretraining_split(1000, 12, 20.0)[1] == pretraining / 2
    assert demo_plan.pretraining_split(1000, 12, 4000.0)[1] == shares["phase2"] * 1000


def test_phase1_stops_measuring_once_a_shape_falls_short(plan1):
    plan, measured = plan1(900.0)
    assert plan.hidden_size == 128 and plan.steps >= MIN_STEPS[128] and measured == [64, 128, 256]
    plan, measured = plan1(200.0)
    assert plan.hidden_size == 64 and measured == [64, 128]


def test_no_time_left_still_gives_a_minimal_run(plan1):
    plan, _ = plan1(-50.0)
    assert plan.hidden_size == 64 and plan.steps == 10


def test_later_stages_scale_with_the_time_left():
    config = demo_plan.model_config(128, 2, 8000)
    phase1 = demo_plan.Phase1Plan(128, 2, 2000, 200.0, 160.0, 50.0, 12.0, 500.0, 100.0, 100.0)
    short, long_ = (demo_plan.phase2_plan(seconds, config, 160.0, phase1, 12.0) for seconds in (200.0, 300.0))
    assert long_.steps > short.steps > 2 and long_.seconds == 300.0 - min(
        100.0, demo_plan.squad_seconds(demo_plan.SQUAD_MAX_QUESTIONS, config, 160.0, 6.0))
    speed = demo_plan.PHASE2_EFFICIENCY * 50.0  # phase 2's in-process speed at its two-rank efficiency
    assert long_.steps == int((long_.seconds - 12 - demo_plan.eval_seconds(speed) / demo_plan.EVALUATIONS) * speed / 8)
    assert demo_plan.phase2_plan(5.0, config, 160.0, phase1, 12.0).steps == 2
    # phase 1 overran into the 60 s kept for phase 2 (SQuAD's 100 s are whole): SQuAD gives way, down to half
    phase1 = dataclasses.replace(phase1, phase2_seconds=60.0)
    assert demo_plan.phase2_plan(140.0, config, 160.0, phase1, 12.0).seconds == 60.0
    assert demo_plan.phase2_plan(100.0, config, 160.0, phase1, 12.0).seconds == 50.0
    assert demo_plan.phase2_plan(200.0, config, 160.0, phase1, 12.0).seconds == 100.0  # time to spare: phase 2's
    small, large = (demo_plan.squad_plan(s, config, 170.0, 6.0) for s in (60.0, 120.0))
    assert large.train_questions > small.train_questions >= 64
    assert demo_plan.squad_plan(1e6, config, 170.0, 6.0).train_questions == demo_plan.SQUAD_MAX_QUESTIONS
    # two runs (pretrained and random init) of the planned size fit the time they were planned in
    plan = demo_plan.squad_plan(120.0, config, 170.0, 6.0)
    assert demo_plan.squad_seconds(plan.train_questions, config, 170.0, 6.0) <= 120.0 < demo_plan.squad_seconds(
        plan.train_questions + 2, config, 170.0, 6.0)


def test_corpus_grows_with_the_budget():
    assert demo_plan.corpus_plan(2) == demo_plan.CorpusPlan(40, 4, demo_plan.PHASE2_SEQ)
    assert demo_plan.corpus_plan(20) == demo_plan.CorpusPlan(400, 20, 4 * demo_plan.PHASE1_SEQ)
    assert demo_plan.corpus_plan(60).corpus_articles == 400


def test_the_time_is_split_as_left_after_the_measurements(monkeypatch):
    monkeypatch.setattr(demo_plan, "launcher_seconds", lambda: 12.0)
    left = [1000.0]

    def measure(config, seq, batch):
        left[0] -= 50.0  # each measurement takes time from the budget
        return (SPEED2 if seq == demo_plan.PHASE2_SEQ else SPEED)[config.hidden_size]

    plan = demo_plan.phase1_plan(lambda: left[0], 8000, measure)
    assert plan.hidden_size == 128 and left[0] == 700.0  # 256 measured too, and rejected
    assert plan.squad_seconds == demo_plan.SHARES["squad"] * 800.0  # as left when 128's were measured
    assert plan.seconds + plan.phase2_seconds == pytest.approx(
        (demo_plan.SHARES["phase1"] + demo_plan.SHARES["phase2"]) * 800.0)


def test_a_plan_from_another_version_is_refused_by_name(tmp_path):
    from bertspeed.pretrain.demo import PLAN, load_plan

    old = {"budget_minutes": 20.0, "phase1": {"hidden_size": 128, "num_hidden_layers": 2, "steps": 10}}
    (tmp_path / PLAN).write_text(json.dumps(old))
    with pytest.raises(SystemExit, match=f"{tmp_path / PLAN} was planned by another bertspeed version"):
        load_plan(tmp_path, 20.0, "auto")
    current = demo_plan.Phase1Plan(128, 2, 2000, 200.0, 160.0, 50.0, 12.0, 500.0, 100.0, 100.0)
    (tmp_path / PLAN).write_text(json.dumps({**old, "phase1": demo_plan.as_dict(current)}))
    assert load_plan(tmp_path, 20.0, "auto")["phase1"]["steps"] == 2000
