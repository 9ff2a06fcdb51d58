"""advisor.schedule.Advice: a training loop asks it for the batch and rate at a step."""

import json

import pytest

from advisor.schedule import Advice, Step

SINGLE = {"recommendation": {"batch_size": 64, "micro_batch": 32, "accumulation_steps": 2, "learning_rate": 0.4,
                             "warmup_steps": 4, "base_lr": 0.1, "beta2": None, "schedule": []}}
RAMP = {"recommendation": {**SINGLE["recommendation"], "warmup_steps": 0, "schedule": [
    {"from_step": 0, "batch_size": 16, "micro_batch": 16, "accumulation_steps": 1, "learning_rate": 0.1},
    {"from_step": 100, "batch_size": 32, "micro_batch": 32, "accumulation_steps": 1, "learning_rate": 0.2},
    {"from_step": 150, "batch_size": 64, "micro_batch": 32, "accumulation_steps": 2, "learning_rate": 0.4}]}}


def test_a_single_recommendation_with_a_linear_warm_up():
    advice = Advice.from_json(SINGLE)
    assert [advice.at(s).lr for s in range(5)] == pytest.approx([0.175, 0.25, 0.325, 0.4, 0.4])
    assert advice.at(10_000) == Step(64, 32, 2, 0.4)


def test_a_schedule_changes_batch_and_rate_at_its_steps(tmp_path):
    path = tmp_path / "advice.json"
    path.write_text(json.dumps(RAMP))
    advice = Advice.from_json(path)
    assert [advice.at(s).batch_size for s in (0, 99, 100, 149, 150, 10**6)] == [16, 16, 32, 32, 64, 64]
    assert advice.at(120).lr == 0.2 and advice.at(150).accumulation_steps == 2
