"""The pure maths from measurements to advice."""

import math

import pytest

from advisor.advice import (PLATEAU_TOLERANCE, StepTimeFit, batch_schedule, best_plan, beta2_for, fit_step_time,
                            goodput, goodput_plateau, learning_rate_factor, plan_at, make_plan, optimizer_family,
                            plan_for_batch, rule_recommendation, statistical_efficiency, warmup_steps, with_swept_rate)


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
    assert rule_recommendation(fit, 0.0, 5.0, 16, 1e-3, "adam", 1000, min_micro=2).plan.micro_batch == 2
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
    assert warmup_steps(1.5, 10_000, 100) == 0 and warmup_steps(2.0, 10_000, 100) == 0
    assert warmup_steps(4.0, 10_000, 100) == 10  # a tenth of the probe's 10 000 examples, at batch 100
    assert warmup_steps(4.0, 10, 100) == 1


def test_recommendation_names_rule_lr_and_reasons():
    rec = rule_recommendation(StepTimeFit(0.01, 0.0001), 0.001, noise_scale=400, base_batch=32, base_lr=0.1, family="sgd",
                    max_micro=10**6)
    assert rec.plateau.low <= 200 <= rec.plateau.high and abs(rec.plateau.best - 200) <= 2  # B* = sqrt(phi a / b)
    assert rec.plan.batch_size == rec.plateau.low  # the base (32) is below the plateau: its nearest end
    factor = (1 + 400 / 32) / (1 + 400 / rec.plan.batch_size)
    assert rec.learning_rate == pytest.approx(0.1 * factor)
    assert rec.warmup_steps > 0 and rec.goodput_vs_base > 1
    assert any("goodput" in r for r in rec.reasons)


@pytest.mark.parametrize("phi,alpha,beta,optimizer", [(400, 0.01, 1e-4, 0.0), (30, 0.002, 1e-5, 0.0),
                                                      (5000, 0.5, 1e-5, 0.49), (math.inf, 0.01, 1e-4, 0.0)])
def test_plateau_edges_are_exact(phi, alpha, beta, optimizer):
    """Every batch from low to high is within the tolerance of the best goodput; the next ones out are not."""
    fit, base, limit = StepTimeFit(alpha, beta), 32, 512

    def value(b):
        return goodput(plan_at(fit, optimizer, b, limit), phi, base)

    plateau = goodput_plateau(fit, optimizer, phi, base, limit)
    best = value(plateau.best)
    threshold = (1 - PLATEAU_TOLERANCE) * best
    assert all(value(b) >= threshold for b in range(plateau.low, plateau.high + 1, max(1, (plateau.high - plateau.low) // 50)))
    assert plateau.low == 1 or value(plateau.low - 1) < threshold
    assert plateau.high == limit * 64 or value(plateau.high + 1) < threshold
    assert best >= max(value(b) for b in range(1, 4 * limit, 7)) * (1 - 1e-9)


def test_the_base_batch_stays_when_it_is_on_the_plateau():
    rec = rule_recommendation(StepTimeFit(0.01, 0.0001), 0.0, noise_scale=400, base_batch=180, base_lr=0.1, family="sgd",
                    max_micro=10**6)
    assert rec.plan.batch_size == 180 and rec.learning_rate == pytest.approx(0.1) and rec.warmup_steps == 0


def test_timing_noise_moves_the_batch_less_than_the_noise():
    """Step-time fits 20% apart (a busy machine's spread) move the chosen batch by less than 1.3x."""
    chosen = [rule_recommendation(StepTimeFit(0.01 * a, 0.0001 * b), 0.0, 400, 32, 0.1, "sgd", 10**6).plan.batch_size
              for a in (0.9, 1.1) for b in (0.9, 1.1)]
    assert max(chosen) / min(chosen) < 1.3


def test_beta2_keeps_its_half_life_in_examples():
    assert beta2_for(0.95, 32, 48) is None  # within 2x of the base: left alone
    assert beta2_for(0.95, 32, 128) == pytest.approx(0.95 ** 4)
    assert beta2_for(0.999, 256, 32) == pytest.approx(0.999 ** (1 / 8))
    rec = rule_recommendation(StepTimeFit(0.01, 0.0001), 0.0, 400, 32, 1e-3, "adam", 10**6, base_beta2=0.95)
    assert rec.beta2 == pytest.approx(0.95 ** (rec.plan.batch_size / 32))
    assert rule_recommendation(StepTimeFit(0.01, 0.0001), 0.0, 400, 32, 0.1, "sgd", 10**6, base_beta2=0.95).beta2 is None


def test_a_swept_rate_replaces_the_rule_and_keeps_it_reported():
    rec = rule_recommendation(StepTimeFit(0.01, 0.0001), 0.0, 400, 32, 0.1, "sgd", 10**6, warmup_examples=10_000)
    swept = with_swept_rate(rec, 0.9, "5 runs")
    assert swept.learning_rate == 0.9 and swept.rule_learning_rate == rec.learning_rate
    assert swept.lr_source == "sweep" and swept.lr_factor == pytest.approx(9.0)


def test_a_swept_rate_needs_no_warmup_but_the_rules_does():
    """The sweep ran its rate from initialisation without a warm-up, stably: that is the evidence a warm-up
    stands in for. The rule's rate, unmeasured, keeps the Goyal warm-up when it grows more than 2x."""
    rec = rule_recommendation(StepTimeFit(0.01, 0.0001), 0.0, 4000, 32, 0.1, "sgd", 10**6, warmup_examples=10_000)
    assert rec.lr_factor > 2 and rec.warmup_steps == math.ceil(0.1 * 10_000 / rec.plan.batch_size)
    swept = with_swept_rate(rec, 0.9, "5 runs")
    assert swept.warmup_steps == 0 and not any(r.startswith("warm up") for r in swept.reasons)
    assert any(r.startswith("no warm-up") for r in swept.reasons)


def test_the_sweeps_candidates_are_the_rules_batch_then_the_plateaus_ends_far_enough_from_it():
    from advisor.advice import Plateau, plateau_candidates
    assert plateau_candidates(Plateau(16, 54, 29, 0.05), 32) == [32, 16, 54]
    assert plateau_candidates(Plateau(5, 13, 6, 0.05), 13) == [13, 5]        # 13 is an end itself
    assert plateau_candidates(Plateau(90, 120, 100, 0.05), 100) == [100]     # nothing 1.5x away
    assert plateau_candidates(Plateau(10, 40, 20, 0.05), 10) == [10, 40]


def test_a_plateau_end_moves_to_a_timed_batch_within_a_quarter_octave_and_the_base_stays():
    from advisor.advice import Plateau, plateau_candidates, snapped
    powers = [2 ** k for k in range(12)]
    assert [snapped(b, powers) for b in (18, 19, 20, 61, 219, 563, 41, 45)] == [16, 16, 20, 64, 256, 512, 41, 45]
    assert snapped(24, [16, 32]) == 24 and snapped(18, []) == 18
    assert snapped(23, [20, 26]) == 26 and snapped(110, [121, 100]) == 100  # nearer in ratio; a tie: smaller
    assert plateau_candidates(Plateau(18, 61, 30, 0.05), 32, timed=powers) == [32, 16, 64]
    assert plateau_candidates(Plateau(41, 132, 60, 0.05), 64, timed=powers) == [64, 41, 128]
    # the plateau rule's own batch: an end (the base 32 is below the plateau [124, 323]) moves and says so
    fit = StepTimeFit(0.01, 0.0001)
    assert rule_recommendation(fit, 0.0, 400, 32, 0.1, "sgd", 10**6).plan.batch_size == 124
    timed = rule_recommendation(fit, 0.0, 400, 32, 0.1, "sgd", 10**6, timed=powers)
    assert timed.plan.batch_size == 128 and "plateau's end nearest the base batch (124)" in timed.reasons[0]
    assert rule_recommendation(fit, 0.0, 400, 150, 0.1, "sgd", 10**6, timed=powers).plan.batch_size == 150


def test_a_measured_batch_replaces_the_plateau_rules_and_says_why():
    fit = StepTimeFit(0.01, 0.0001)
    rule = rule_recommendation(fit, 0.0, 400, 32, 0.1, "sgd", 10**6)
    high = rule.plateau.high
    measured = rule_recommendation(fit, 0.0, 400, 32, 0.1, "sgd", 10**6, measured=(high, "short runs said so"))
    assert measured.plan.batch_size == high != rule.plan.batch_size and measured.plateau == rule.plateau
    assert "short runs said so" in measured.reasons[0]
    assert measured.learning_rate == pytest.approx(0.1 * learning_rate_factor(400, 32, high, "sgd")[0])


def test_a_growing_noise_scale_gives_a_rising_schedule_that_ends_at_the_recommendation():
    fit = StepTimeFit(0.01, 0.0001)
    final = with_swept_rate(rule_recommendation(fit, 0.0, 4000, 32, 0.1, "sgd", 10**6), 1.0, "test")
    series = [(0, 10.0), (3200, 40.0), (12800, 400.0), (51200, 4000.0)]
    schedule = batch_schedule(fit, 0.0, series, final, 10**6)
    batches = [e.plan.batch_size for e in schedule]
    assert len(schedule) >= 3 and batches == sorted(batches) and batches[-1] == final.plan.batch_size
    assert all(b2 >= 1.5 * b1 for b1, b2 in zip(batches, batches[1:]))
    assert [e.from_step for e in schedule] == sorted(e.from_step for e in schedule) and schedule[0].from_step == 0
    assert schedule[-1].learning_rate == final.learning_rate
    assert batch_schedule(fit, 0.0, [(0, 4000.0), (100, 4000.0)], final, 10**6) == ()  # flat: no schedule


def test_the_step_time_fit_near_a_batch_follows_the_local_slope():
    points = [(1, 0.001), (2, 0.001), (4, 0.001), (256, 0.0266), (512, 0.0522), (1024, 0.2)]  # curving up late
    near = fit_step_time(points, around=384)
    assert near.beta == pytest.approx(0.0001, rel=0.2)
