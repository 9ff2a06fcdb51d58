"""The pure maths from measurements to advice."""

import math

import pytest

from advisor.advice import (StepTimeFit, best_plan, fit_step_time, goodput, learning_rate_factor, make_plan,
                            optimizer_family, plan_for_batch, recommend, statistical_efficiency, warmup_steps)


def test_fit_recovers_alpha_and_beta():
    points = [(b, 0.004 + 0.0003 * b) for b in (1, 2, 4, 8, 16, 64)]
    fit = fit_step_time(points)
    assert fit.alpha == pytest.approx(0.004) and fit.beta == pytest.approx(0.0003)


def test_fit_keeps_alpha_non_negative():
    fit = fit_step_time([(1, 0.001), (10, 0.02), (100, 0.3)])
    assert fit.alpha >= 0 and fit.beta > 0


def test_single_point_fit_is_proportional():
    assert fit_step_time([(10, 0.5)]) == StepTimeFit(0.0, 0.05)


def test_efficiency_is_one_at_the_base_and_falls_with_batch():
    assert statistical_efficiency(32, 100, 32) == 1
    assert statistical_efficiency(1000, 100, 32) == pytest.approx(132 / 1100)


@pytest.mark.parametrize("phi,alpha,beta", [(100, 0.01, 0.0001), (2000, 0.05, 0.00002), (5, 0.002, 0.001)])
def test_goodput_optimum_is_sqrt_phi_alpha_over_beta(phi, alpha, beta):
    fit = StepTimeFit(alpha, beta)
    plan = best_plan(fit, optimizer_seconds=0.0, noise_scale=phi, base_batch=32, max_micro=10**7)
    ideal = math.sqrt(phi * alpha / beta)
    assert plan.accumulation_steps == 1
    assert abs(plan.batch_size - ideal) <= 1
    scan = max(range(1, 20 * int(ideal) + 10), key=lambda b: goodput(make_plan(fit, 0.0, b), phi, 32))
    assert plan.batch_size == scan


def test_optimum_is_clipped_to_memory_and_accumulation_does_not_pay_without_optimizer_cost():
    fit = StepTimeFit(0.05, 0.00001)  # B* = sqrt(1000 * 5000) ≈ 2236
    plan = best_plan(fit, optimizer_seconds=0.0, noise_scale=1000, base_batch=32, max_micro=256)
    assert (plan.micro_batch, plan.accumulation_steps) == (256, 1)


def test_accumulation_pays_when_the_optimizer_step_dominates():
    fit = StepTimeFit(0.5, 0.00001)  # the optimizer step is 0.49 s of the 0.5 s fixed cost
    plan = best_plan(fit, optimizer_seconds=0.49, noise_scale=5000, base_batch=32, max_micro=256)
    assert plan.accumulation_steps > 1 and plan.micro_batch == 256
    one = make_plan(fit, 0.49, 256, 1)
    assert goodput(plan, 5000, 32) > goodput(one, 5000, 32)


def test_no_plan_goes_below_the_smallest_batch_that_trains():
    fit = StepTimeFit(0.0, 1e-4)  # no fixed cost: goodput alone would pick micro-batch 1
    assert best_plan(fit, 0.0, noise_scale=5.0, base_batch=16, max_micro=1000).micro_batch == 1
    assert best_plan(fit, 0.0, noise_scale=5.0, base_batch=16, max_micro=1000, min_micro=2).micro_batch == 2
    assert recommend(fit, 0.0, 5.0, 16, 1e-3, "adam", 1000, min_micro=2).plan.micro_batch == 2
    assert plan_for_batch(fit, 0.0, batch=1, max_micro=1000, min_micro=2).micro_batch == 2


def test_plan_for_batch_above_memory_accumulates():
    plan = plan_for_batch(StepTimeFit(0.01, 0.001), 0.0, batch=1000, max_micro=300)
    assert plan.accumulation_steps == 4 and plan.micro_batch == 250 and plan.batch_size == 1000


def test_sgd_rule_is_linear_for_small_batches_and_saturates():
    linear, _ = learning_rate_factor(noise_scale=1e6, base_batch=32, batch=64, family="sgd")
    assert linear == pytest.approx(2.0, rel=1e-3)
    saturated, _ = learning_rate_factor(noise_scale=10, base_batch=32, batch=10**6, family="sgd")
    assert saturated == pytest.approx(1 + 10 / 32, rel=1e-3)


def test_adam_rule_is_the_square_root():
    sgd, _ = learning_rate_factor(100, 32, 512, "sgd")
    adam, rule = learning_rate_factor(100, 32, 512, "adam")
    assert adam == pytest.approx(math.sqrt(sgd)) and "sqrt" in rule


def test_families():
    assert optimizer_family(["AdamW", "Adam", "Optimizer", "object"]) == "adam"
    assert optimizer_family(["SGD", "Optimizer", "object"]) == "sgd"


def test_warmup_only_when_the_rate_more_than_doubles():
    assert warmup_steps(1.5) == 0 and warmup_steps(2.0) == 0
    assert warmup_steps(4.0) == 200


def test_recommendation_names_rule_lr_and_reasons():
    rec = recommend(StepTimeFit(0.01, 0.0001), 0.001, noise_scale=400, base_batch=32, base_lr=0.1, family="sgd",
                    max_micro=10**6)
    assert rec.plan.batch_size == 200
    factor = (1 + 400 / 32) / (1 + 400 / 200)
    assert rec.learning_rate == pytest.approx(0.1 * factor)
    assert rec.warmup_steps > 0 and rec.goodput_vs_base > 1
    assert any("goodput" in r for r in rec.reasons)
