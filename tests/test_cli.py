"""The CLI end to end through typer's CliRunner, on small models written into a temp dir."""

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advisor import __version__
from advisor.cli import app
from tests.models import MLP

FAST = ["--device", "cpu", "--max-step-seconds", "0.05", "--noise-budget", "20steps"]
DESIGN_FIELDS = {
    "memory": ["max_batch", "safe_max_batch", "budget_bytes", "bytes_per_sample", "fixed_bytes"],
    "noise": ["b_simple", "ci95", "grad_sq_norm", "trace_sigma"],
    "recommendation": ["batch_size", "micro_batch", "accumulation_steps", "learning_rate", "lr_rule",
                       "warmup_steps"],
}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_finite(value, where):
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            assert_finite(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_finite(item, f"{where}.{key}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        assert math.isfinite(value), where


def assert_design_fields(doc):
    assert doc["schema_version"] == 1
    for section, fields in DESIGN_FIELDS.items():
        for name in fields:
            assert name in doc[section], f"{section}.{name}"
            assert_finite(doc[section][name], f"{section}.{name}")
    assert len(doc["noise"]["ci95"]) == 2
    points = doc["throughput"]["points"]
    assert len(points) >= 5
    for p in points:
        assert {"batch", "step_seconds", "samples_per_second"} <= set(p)
        assert p["samples_per_second"] == pytest.approx(p["batch"] / p["step_seconds"])
        assert_finite(p, "throughput.points")


@pytest.fixture
def mlp(write_model):
    return write_model(MLP)


def test_recommend_json_has_every_design_field_finite(mlp):
    result = invoke("recommend", mlp, *FAST, "--memory", "64MiB", "--noise-warmup-steps", "2", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert_design_fields(doc)
    rec, memory = doc["recommendation"], doc["memory"]
    assert memory["budget_bytes"] == 64 * 2**20 and memory["budget_source"] == "--memory"
    assert 1 <= rec["micro_batch"] <= memory["safe_max_batch"] <= memory["max_batch"]
    assert rec["batch_size"] == rec["micro_batch"] * rec["accumulation_steps"]
    assert rec["optimizer_family"] == "adam" and "sqrt" in rec["lr_rule"]
    assert rec["base_batch"] == 16 and rec["base_lr"] == pytest.approx(1e-3)   # BASE_BATCH_SIZE, AdamW default
    assert rec["learning_rate"] == pytest.approx(rec["base_lr"] * rec["lr_factor"])
    assert sum(row["recommended"] for row in doc["candidates"]) == 1
    assert all(row["peak_source"] in ("tracked", "estimated") for row in doc["candidates"])


def test_recommend_table_goes_to_stdout_and_writes_nothing_beside_the_model(mlp):
    before = sorted(p.name for p in Path(mlp).parent.iterdir())
    result = invoke("recommend", mlp, *FAST, "--memory", "64MiB", "--noise-warmup-steps", "0")
    assert result.exit_code == 0, result.output
    for title in ("Memory", "Candidate batch sizes", "Gradient noise scale", "Recommendation"):
        assert title in result.stdout
    assert sorted(p.name for p in Path(mlp).parent.iterdir()) == before


@pytest.mark.parametrize("command,section,extra", [
    ("max-batch", "memory", ["--memory", "64MiB"]),
    ("noise", "noise", ["--memory", "64MiB", "--noise-warmup-steps", "0", "--noise-budget", "20steps"]),
    ("throughput", "throughput", ["--batch-sizes", "1,4,16", "--max-step-seconds", "1"]),
])
def test_single_probe_commands_print_only_their_section(mlp, command, section, extra):
    result = invoke(command, mlp, "--device", "cpu", *extra, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    sections = {"memory", "throughput", "noise", "recommendation", "candidates"}
    assert sections & set(doc) == {section}
    assert_finite(doc[section], section)


def test_throughput_uses_the_sizes_asked_for(mlp):
    result = invoke("throughput", mlp, "--device", "cpu", "--batch-sizes", "2,8,32", "--json")
    assert [p["batch"] for p in json.loads(result.stdout)["throughput"]["points"]] == [2, 8, 32]


def test_memory_budget_decides_the_largest_batch(mlp):
    small = json.loads(invoke("max-batch", mlp, "--device", "cpu", "--memory", "2MiB", "--json").stdout)
    large = json.loads(invoke("max-batch", mlp, "--device", "cpu", "--memory", "8MiB", "--json").stdout)
    assert 0 < small["memory"]["max_batch"] < large["memory"]["max_batch"]
    per_sample = large["memory"]["bytes_per_sample"]
    assert large["memory"]["max_batch"] - small["memory"]["max_batch"] == pytest.approx(6 * 2**20 / per_sample, abs=2)


def test_margin_keeps_headroom(mlp):
    doc = json.loads(invoke("max-batch", mlp, "--device", "cpu", "--memory", "8MiB", "--margin", "0.5",
                            "--json").stdout)["memory"]
    assert doc["safe_max_batch"] < doc["max_batch"]
    traced = {p["batch"]: p["peak_bytes"] for p in doc["traced"]}
    assert traced[doc["safe_max_batch"]] <= 0.5 * doc["budget_bytes"] < traced[doc["safe_max_batch"] + 1]


def test_missing_base_batch_is_a_stated_assumption(write_model):
    path = write_model(MLP.replace("BASE_BATCH_SIZE = 16", ""))
    result = invoke("recommend", path, *FAST, "--memory", "16MiB", "--noise-warmup-steps", "0", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recommendation"]["base_batch"] == 32
    assert "assuming" in result.stderr


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_unresolved_noise_is_null_in_json_and_still_advised(write_model):
    from tests.models import LINEAR_REGRESSION_AT_OPTIMUM
    path = write_model(LINEAR_REGRESSION_AT_OPTIMUM)
    result = invoke("recommend", path, *FAST, "--memory", "4MiB", "--noise-warmup-steps", "0", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["noise"]["resolved"] is False and doc["noise"]["ci95"][1] is None
    assert "measuring again at a larger batch" in result.stderr and "not resolved" in result.stderr
    assert doc["noise"]["batch_size"] > 8 * 32  # it grew the batch before giving up
    assert 1 <= doc["recommendation"]["micro_batch"] <= doc["memory"]["safe_max_batch"]


def test_geometric_batches_have_at_least_five_sizes_up_to_the_limit():
    from advisor.probes.throughput import geometric_batches
    assert geometric_batches(3) == [1, 2, 3]
    assert geometric_batches(6) == [1, 2, 3, 4, 6]
    assert geometric_batches(100) == [1, 2, 4, 8, 16, 32, 64, 100]


BATCHNORM_MLP = MLP.replace("torch.nn.Linear(20, 64), torch.nn.ReLU()",
                            "torch.nn.Linear(20, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU()")


@pytest.mark.parametrize("timings", ["measured", "loaded"])
def test_batchnorm_model_starts_at_batch_two(write_model, monkeypatch, timings):
    """BatchNorm1d cannot train on one example: every probe starts at batch 2 instead of failing, and so
    does the advice. On a loaded machine the step-time fit can come out with no fixed cost (α = 0), so
    goodput is best at the smallest micro-batch: "loaded" forces that fit, which once advised (and
    traced) batch 1."""
    if timings == "loaded":
        import advisor.pipeline
        from advisor.advice import StepTimeFit
        monkeypatch.setattr(advisor.pipeline, "fit_step_time", lambda points: StepTimeFit(0.0, 1e-4))
    path = write_model(BATCHNORM_MLP)
    result = invoke("recommend", path, *FAST, "--memory", "16MiB", "--noise-warmup-steps", "2", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert min(p["batch"] for p in doc["memory"]["traced"]) == 2
    assert doc["throughput"]["points"][0]["batch"] == 2
    assert doc["noise"]["micro_batch"] >= 2 and doc["recommendation"]["micro_batch"] >= 2


def test_throughput_batch_sizes_respect_the_memory_budget(write_model):
    """Sizes above the largest batch that fits --memory are not timed (noted); none left is bad input."""
    path = write_model(MLP)
    result = invoke("max-batch", path, "--device", "cpu", "--memory", "2MiB", "--json")
    limit = json.loads(result.stdout)["memory"]["safe_max_batch"]
    flags = ["--device", "cpu", "--max-step-seconds", "0.05", "--memory", "2MiB"]
    result = invoke("throughput", path, *flags, "--batch-sizes", f"2,{limit},{limit + 1}", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [p["batch"] for p in doc["throughput"]["points"]] == [2, limit]
    assert any(f"{limit + 1}: not timed" in note for note in doc["notes"])
    result = invoke("throughput", path, *flags, "--batch-sizes", str(10 * limit), "--json")
    assert result.exit_code == 2 and result.stdout == "" and "--batch-sizes" in result.stderr


def test_a_run_says_how_long_first_and_ends_with_one_line_to_paste(write_model, monkeypatch):
    """At a terminal, the first line on stderr says what the run will spend; the tables end with the
    advice as one plain line (not at a terminal, the note is left out: CI logs keep errors one line)."""
    import rich.console
    monkeypatch.setattr(rich.console.Console, "is_terminal", property(lambda self: self.stderr))
    result = invoke("recommend", write_model(MLP), *FAST, "--memory", "16MiB", "--noise-warmup-steps", "2")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0].startswith("note: probing takes roughly the noise probe's budget (20 training")
    last = result.stdout.strip().splitlines()[-1]
    fields = dict(part.split("=") for part in last.split())
    assert set(fields) >= {"batch_size", "micro_batch", "accumulation", "lr", "warmup"}
    assert int(fields["batch_size"]) == int(fields["micro_batch"]) * int(fields["accumulation"])
    float(fields["lr"])
