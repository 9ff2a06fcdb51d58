"""The McCandlish estimator: unbiased on synthetic gradients with known Σ, and right on a problem
whose noise scale is known in closed form."""

import json
import math
import random

import pytest
import torch
from typer.testing import CliRunner

from advisor.cli import app
from advisor.noise_scale import Snapshot, noise_scale, ratio_of_means, two_batch_estimates
from tests.models import LINEAR_REGRESSION, LINEAR_REGRESSION_B_SIMPLE


def synthetic_snapshot(gen, mean, sigma_diag, small, k):
    """k micro-batch gradients of `small` examples: gᵢ ~ N(G, Σ/small) with Σ diagonal."""
    grads = mean + torch.randn(k, mean.numel(), generator=gen, dtype=torch.float64) * (sigma_diag / small).sqrt()
    mean_small_sq = grads.pow(2).sum(1).mean().item()
    big_sq = grads.mean(0).pow(2).sum().item()
    return two_batch_estimates(mean_small_sq, big_sq, small, small * k)


def test_estimates_are_unbiased_on_synthetic_gradients():
    gen = torch.Generator().manual_seed(0)
    mean = torch.linspace(-0.3, 0.5, 50, dtype=torch.float64)
    sigma = torch.linspace(0.5, 3.0, 50, dtype=torch.float64)
    true_g2, true_tr = mean.pow(2).sum().item(), sigma.sum().item()
    snaps = [synthetic_snapshot(gen, mean, sigma, small=4, k=8) for _ in range(4000)]
    g2 = sum(s.grad_sq_norm for s in snaps) / len(snaps)
    tr = sum(s.trace_sigma for s in snaps) / len(snaps)
    assert g2 == pytest.approx(true_g2, rel=0.03)
    assert tr == pytest.approx(true_tr, rel=0.03)
    # The naive big-batch norm is biased upwards by tr Σ / B: the estimator must not be.
    naive = sum(s.grad_sq_norm + s.trace_sigma / 32 for s in snaps) / len(snaps)
    assert naive > true_g2 * 1.1


def test_ratio_of_means_not_mean_of_ratios():
    snaps = [Snapshot(0.1, 10.0), Snapshot(1.9, 10.0)]
    assert ratio_of_means(snaps) == pytest.approx(10.0)  # the mean of ratios would say 52.6


def test_interval_holds_the_estimate_and_is_reproducible():
    rng = random.Random(1)
    snaps = [Snapshot(1 + rng.gauss(0, 0.2), 20 + rng.gauss(0, 4)) for _ in range(30)]
    a, b = noise_scale(snaps, seed=3), noise_scale(snaps, seed=3)
    assert a == b
    assert a.ci95[0] < a.b_simple < a.ci95[1]


def test_two_batch_estimates_rejects_equal_sizes():
    with pytest.raises(ValueError):
        two_batch_estimates(1.0, 1.0, 8, 8)


def test_noise_command_recovers_the_closed_form_noise_scale(write_model):
    """Within 15% on every seed; a 95% interval may miss now and then, so over ten seeds it must hold
    the truth at least eight times (the seeds are fixed: the test is deterministic)."""
    path = write_model(LINEAR_REGRESSION)
    truth = LINEAR_REGRESSION_B_SIMPLE
    held = 0
    for seed in range(10):
        result = CliRunner().invoke(app, ["noise", str(path), "--device", "cpu", "--batch-size", "1024",
                                          "--noise-warmup-steps", "0", "--noise-budget", "1steps", "--snapshots", "32",
                                          "--seed", str(seed), "--json"])
        assert result.exit_code == 0, result.output
        noise = json.loads(result.stdout)["noise"]
        assert noise["b_simple"] == pytest.approx(truth, rel=0.15)
        assert noise["grad_sq_norm"] == pytest.approx(1.0, rel=0.15)   # |δ|²
        assert noise["trace_sigma"] == pytest.approx(truth, rel=0.15)
        assert not noise["preconditioned"] and noise["snapshots"] == 32
        held += noise["ci95"][0] <= truth <= noise["ci95"][1]
    assert held >= 8


# --- the series along training, and the learning-rate sweep ------------------------------------------

def _spec(write_model, source):
    from advisor.spec import load_spec
    return load_spec(write_model(source))


def test_the_series_follows_training_until_its_step_budget(write_model):
    from advisor.devices.cpu import CpuBackend
    from advisor.probes.noise import NoiseBudget, measure_noise
    from tests.models import MLP

    spec = _spec(write_model, MLP)
    result = measure_noise(spec, CpuBackend(), 64, snapshots=4, warmup_steps=5, warmup_batch=16,
                           budget=NoiseBudget(seconds=None, steps=160))
    steps = [p.step for p in result.series]
    assert steps[0] == 5 and steps == sorted(steps) and len(steps) >= 4 and steps[-1] <= 160 + 4
    assert [p.examples for p in result.series] == sorted(p.examples for p in result.series)
    assert result.series[-1].loss < result.series[0].loss  # it trained
    assert result.scale.snapshots == 8  # the last two points pooled
    assert "budget" in result.stopped


def test_the_series_stops_at_the_target_loss(write_model):
    from advisor.devices.cpu import CpuBackend
    from advisor.probes.noise import NoiseBudget, measure_noise
    from tests.models import MLP

    spec = _spec(write_model, MLP)
    free = measure_noise(spec, CpuBackend(), 64, snapshots=4, warmup_steps=5, warmup_batch=16,
                         budget=NoiseBudget(seconds=None, steps=640))
    target = free.series[2].loss
    stopped = measure_noise(spec, CpuBackend(), 64, snapshots=4, warmup_steps=5, warmup_batch=16,
                            budget=NoiseBudget(seconds=None, steps=640), target_loss=target)
    assert len(stopped.series) <= 3 and stopped.series[-1].loss <= target
    assert "target loss" in stopped.stopped


def test_the_noise_scale_in_adam_geometry_is_finite_from_the_first_step(write_model):
    """With the divisor updated by the step's own gradient, an Adam model is preconditioned at step 0 too."""
    from tests.models import MLP
    path = write_model(MLP)
    result = CliRunner().invoke(app, ["noise", str(path), "--device", "cpu", "--noise-warmup-steps", "0",
                                      "--noise-budget", "1steps", "--json"])
    assert result.exit_code == 0, result.output
    noise = json.loads(result.stdout)["noise"]
    assert noise["preconditioned"] and noise["geometry"] == "adam" and noise["resolved"]


SWEEP_TASK = LINEAR_REGRESSION.replace("return torch.optim.SGD(params, lr=0.0)", "return torch.optim.SGD(params, lr=0.3)")


def test_the_sweep_never_picks_a_rate_at_or_above_one_that_diverged(write_model):
    """Least squares with x ~ N(0, I): SGD diverges above lr 2; from centre 1.2 the sweep's upper rates
    (1.7, 2.4) are unstable, and it must choose below the first of them that diverged."""
    from advisor.devices.cpu import CpuBackend
    from advisor.probes.sweep import Candidate, sweep

    spec = _spec(write_model, SWEEP_TASK)
    torch.manual_seed(0)
    model = spec.model()
    opt = spec.optimizer(model)
    before = [p.detach().clone() for p in model.parameters()]
    result = sweep(spec, CpuBackend(), model, opt, [Candidate(64, 1, centre=1.2, steps=20)])
    diverged = [r.learning_rate for r in result.runs if r.diverged]
    assert diverged and result.chosen is not None and result.chosen < min(diverged)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the model is restored
    assert opt.param_groups[0]["lr"] == 0.3


def test_a_proposed_beta2_is_advised_only_when_the_sweep_measures_it_better(write_model):
    """beta2 = 1 makes Adam's bias correction divide by zero: the run is not finite, so it is not kept."""
    from advisor.devices.cpu import CpuBackend
    from advisor.probes.sweep import Candidate, sweep
    from tests.models import MLP

    spec = _spec(write_model, MLP)
    torch.manual_seed(0)
    model = spec.model()
    opt = spec.optimizer(model)
    result = sweep(spec, CpuBackend(), model, opt, [Candidate(16, 1, centre=1e-3, steps=20, beta2=1.0)])
    assert result.chosen is not None and result.beta2_loss is not None and not result.beta2_kept
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)  # put back


@pytest.mark.parametrize("candidates", [[(4, 64), (64, 4)], [(64, 4), (4, 64)]], ids=["first", "second"])
def test_the_sweep_picks_the_batch_that_trained_furthest(write_model, candidates):
    """The same counted time with a step cost proportional to the batch: 64 steps of 4 train further than 4
    of 64 on this problem, wherever the plateau rule's batch stands in the list."""
    from advisor.devices.cpu import CpuBackend
    from advisor.probes.sweep import Candidate, sweep

    spec = _spec(write_model, SWEEP_TASK)
    torch.manual_seed(0)
    model = spec.model()
    opt = spec.optimizer(model)
    result = sweep(spec, CpuBackend(), model, opt,
                   [Candidate(batch, 1, centre=0.02, steps=steps) for batch, steps in candidates])
    assert result.chosen_batch == 4
    assert [t.candidate.batch for t in result.trials] == [b for b, _ in candidates]
    best = min(result.trials, key=lambda t: t.loss)
    assert best.candidate.batch == 4 and result.chosen == best.chosen
    assert result.runs == best.runs and result.steps == best.candidate.steps


def test_a_tie_between_batches_goes_to_the_plateau_rules(write_model):
    """The same batch twice scores within a tie: the first candidate (the plateau rule's) is kept."""
    from advisor.devices.cpu import CpuBackend
    from advisor.probes.sweep import Candidate, sweep

    spec = _spec(write_model, SWEEP_TASK)
    torch.manual_seed(0)
    model = spec.model()
    opt = spec.optimizer(model)
    first, second = Candidate(16, 1, centre=0.3, steps=20), Candidate(16, 1, centre=0.3, steps=20)
    result = sweep(spec, CpuBackend(), model, opt, [first, second])
    assert result.trials[0].loss == pytest.approx(result.trials[1].loss, rel=0.01)
    assert result.chosen_batch == 16 and result.runs == result.trials[0].runs != result.trials[1].runs


def test_another_batch_replaces_the_rules_only_when_it_wins_from_initialisation_and_late():
    """Progress is the fall from where the runs start (5.5 from initialisation, 2.4 late)."""
    from advisor.probes.sweep import BatchTrial, Candidate, _best_trial

    def trial(batch, loss, late):
        return BatchTrial(Candidate(batch, 1, 0.1, 10), (), 0.1, loss, late)

    def best(*trials):
        return _best_trial(list(trials), start_loss=5.5, hold_loss=2.4)

    rule = trial(13, 2.70, 2.314)
    assert best(rule, trial(6, 2.58, 2.318)) is rule               # wins early only (the GPT example)
    assert best(rule, trial(6, 2.69, 2.0)) is rule                 # within a tie (1% of 2.8) early
    small, smaller = trial(16, 2.05, 1.90), trial(8, 2.01, 1.93)
    assert best(trial(32, 2.14, 1.925), small) is small            # wins both ways (the LSTM)
    assert best(trial(32, 2.14, 1.95), small, smaller) is smaller  # of the winners, the furthest early
    assert best(trial(32, 2.14, 2.5), trial(16, 2.05, 2.45)).candidate.batch == 16  # less lost late is progress
    failed = BatchTrial(Candidate(32, 1, 0.1, 10), (), None, math.inf)
    assert best(failed, small) is small and best(failed) is None


def test_the_rate_is_the_vertex_of_a_flat_valley_and_an_edge_stays_an_edge():
    from advisor.probes.sweep import SweepRun, _best_rate

    def runs(*scores, rates=(0.1, 0.2, 0.4, 0.8, 1.6), diverged=()):
        return [SweepRun(r, s, 0.0, r in diverged) for r, s in zip(rates, scores)]

    rate, loss = _best_rate(runs(3.0, 2.0, 1.0, 2.0, 3.0))
    assert rate == pytest.approx(0.4) and loss == 1.0               # symmetric: the middle
    lower, _ = _best_rate(runs(3.0, 1.02, 1.0, 1.5, 3.0))
    higher, _ = _best_rate(runs(3.0, 1.5, 1.0, 1.02, 3.0))
    assert 0.2 < lower < 0.4 < higher < 0.8                         # leans to the flatter side, inside the bracket
    assert _best_rate(runs(3.0, 2.0, 1.5, 1.2, 1.0))[0] == 1.6      # lowest at an end: that rate
    # the first unstable rate bounds it: 0.8 diverged, so 0.4 is an end
    assert _best_rate(runs(3.0, 2.0, 1.0, 0.5, 0.4, diverged=(0.8,)))[0] == 0.4
    assert _best_rate(runs(1.0, 1.0, diverged=(0.1, 0.2))) is None



def test_at_another_batch_a_tie_goes_to_the_calibrated_centre_and_only_a_tie():
    from advisor.probes.sweep import SweepRun, _best_rate

    def runs(*scores, rates=(0.1, 0.2, 0.4, 0.8, 1.6)):
        return [SweepRun(r, s, 0.0, False) for r, s in zip(rates, scores)]

    clean = runs(5.0, 2.0, 1.0, 2.0, 5.0)  # a parabola in log rate: no residual, no tie
    assert _best_rate(clean, anchor=0.1)[0] == pytest.approx(0.4) == _best_rate(clean, anchor=1.6)[0]
    nearly = runs(5.0, 2.02, 1.0, 1.98, 5.0)  # a little scatter: a little way toward the anchor
    alone = _best_rate(nearly)[0]
    assert 0.3 < _best_rate(nearly, anchor=0.1)[0] < alone < _best_rate(nearly, anchor=1.6)[0] < 0.5
    scattered = runs(3.0, 1.3, 1.6, 1.0, 2.5)  # scatter as deep as the valley: the anchor decides
    assert _best_rate(scattered, anchor=0.25)[0] == pytest.approx(0.25)
    assert _best_rate(scattered, anchor=0.05)[0] == pytest.approx(0.2)  # never outside the runs' span
    assert _best_rate(scattered)[1] == _best_rate(scattered, anchor=0.25)[1] == 1.0  # the score: the lowest run's


def test_a_budget_in_steps_ends_the_series_where_it_says_and_its_plan_moves_smoothly():
    from advisor.probes.noise import planned_steps, series_steps, steps_within

    lattice = series_steps(10)  # 10, 20, 40, 80, 160, 320, ...
    assert steps_within(lattice, 300, snapshots=16) == [10, 20, 40, 80, 160, 300]
    assert steps_within(lattice, 160, snapshots=16) == [10, 20, 40, 80, 160]
    assert steps_within(lattice, 170, snapshots=16) == [10, 20, 40, 80, 160]  # its snapshots reach 176 already
    assert steps_within(lattice, 5, snapshots=16) == [10]
    # the GPT example under load: 160 steps took about 21 s, 320 about 28 s, against a 30 s budget
    plans = [planned_steps(lattice, 30.0, step_seconds, 2.0) for step_seconds in (0.0600, 0.0775, 0.0785, 0.0900)]
    assert plans == [269, 226, 226, 190]  # 160 x 2^(k/4): a few per cent of timing noise moves nothing,
    #                                       more, a quarter-octave a step, never the whole doubling to 160
    assert planned_steps(lattice, 30.0, 10.0, 2.0) == 10                # not even one step more: the first point
