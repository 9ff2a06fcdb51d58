"""Probes that go wrong: divergence is reported with its step, Ctrl-C exits 130, and the JSON
writer never emits what JSON cannot hold."""

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from advisor.cli import app
from tests.models import MLP

DIVERGES_AFTER_5_LOSSES = MLP + """
_calls = 0
def loss(model, batch):
    global _calls
    _calls += 1
    x, y = batch
    value = torch.nn.functional.cross_entropy(model(x), y)
    return value * float("nan") if _calls > 5 else value
"""


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_diverging_loss_in_the_throughput_probe_names_the_step(write_model):
    path = write_model(DIVERGES_AFTER_5_LOSSES)
    result = CliRunner().invoke(app, ["throughput", str(path), "--device", "cpu", "--batch-sizes", "4,8"])
    assert result.exit_code == 4
    line = one_error_line(result)
    assert "non-finite loss" in line and "throughput probe" in line and "step" in line


def test_diverging_loss_in_the_noise_probe_names_the_snapshot(write_model):
    path = write_model(DIVERGES_AFTER_5_LOSSES)
    result = CliRunner().invoke(app, ["noise", str(path), "--device", "cpu", "--batch-size", "64",
                                      "--noise-warmup-steps", "0", "--memory", "64MiB", "--noise-budget", "20steps"])
    assert result.exit_code == 4
    line = one_error_line(result)
    assert "non-finite loss" in line and "noise snapshot" in line


def test_ctrl_c_exits_130_and_writes_nothing(write_model, tmp_path):
    path = write_model(MLP + "\n_real = batch\n"
                       "def batch(n):\n"
                       "    if n >= 8:\n"
                       "        raise KeyboardInterrupt\n"
                       "    return _real(n)\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["throughput", str(path), "--device", "cpu", "--batch-sizes", "2,8"])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


finite_or_not = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**18))
positive = st.floats(min_value=1e-9, max_value=1e9)


@settings(max_examples=150, deadline=None)
@given(b_simple=finite_or_not, lo=finite_or_not, hi=finite_or_not, grad=finite_or_not, trace=finite_or_not,
       step=positive, optimizer=positive, per_sample=finite_or_not, fixed=finite_or_not)
def test_json_document_is_always_valid_json_with_the_design_fields(b_simple, lo, hi, grad, trace, step, optimizer,
                                                                  per_sample, fixed):
    """Whatever the measurements, the document parses as strict JSON and keeps its fields; figures
    JSON cannot hold (NaN, infinity) become null."""
    from advisor.advice import Plan, Recommendation, StepTimeFit
    from advisor.noise_scale import NoiseScale
    from advisor.probes.max_batch import MemoryResult
    from advisor.probes.noise import NoiseResult
    from advisor.probes.throughput import ThroughputPoint, ThroughputResult
    from advisor.results import Report
    from advisor.units import Budget
    from tests.test_cli import DESIGN_FIELDS

    report = Report(
        model="model.py", device="cpu", sections=("memory", "throughput", "noise"),
        memory=MemoryResult(Budget(10**9, "test"), 0.1, 100, 90, fixed, per_sample, {1: 10, 100: 10**9}, False,
                            "test", 0.1),
        throughput=ThroughputResult([ThroughputPoint(b, step * b, optimizer) for b in (1, 2, 4, 8, 16)], None,
                                    "test", 1.0),
        fit=StepTimeFit(0.0, step),
        noise=NoiseResult(NoiseScale(b_simple, (lo, hi), grad, trace, 32), 64, 8, 10, False, "test", 1.0),
        recommendation=Recommendation(Plan(8, 1, step), b_simple, 1.0, "rule", 0, "sgd", 32, 0.1, 1.0, b_simple))
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    for section in ("memory", "noise"):
        for name in DESIGN_FIELDS[section]:
            assert name in doc[section]
    for value in (doc["noise"]["b_simple"], *doc["noise"]["ci95"], doc["memory"]["bytes_per_sample"]):
        assert value is None or math.isfinite(value)
