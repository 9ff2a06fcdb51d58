"""The same advice from the Python API and from the command line: on the bundled examples, with the same seed
and a clock that is a function of the work (tests/clocked.py, plugged in through the device seam), the two
JSON documents are identical but for the wall-clock `seconds` fields."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import advisor
from advisor import api
from advisor.cli import app
from tests.clocked import ClockedCpu

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Small budgets: a few throughput sizes (the step-time limit is on the test clock), one noise point; the sweep
# of rates and batches on the MLP (on the GPT it costs 25 s more here, and runs the same code).
OPTIONS = {"base_batch": 8, "noise_budget": "2steps", "noise_warmup_steps": 2, "max_step_seconds": 0.05, "seed": 1}


def without_timings(value):
    """The document less every `seconds` field (wall-clock time spent, which no two runs share)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def as_flags(options: dict) -> list[str]:
    flags = []
    for name, value in options.items():
        if isinstance(value, bool):
            flags.append(f"--{'' if value else 'no-'}{name.replace('_', '-')}")
        else:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


@pytest.mark.parametrize(("example", "memory", "lr_sweep"), [("mlp_unicode.py", "2MiB", True),
                                                              ("gpt_stdlib.py", "48MiB", False)])
def test_the_api_and_the_cli_give_the_same_document(example, memory, lr_sweep, monkeypatch):
    path = str(EXAMPLES / example)
    options = {**OPTIONS, "lr_sweep": lr_sweep}
    from_api = advisor.recommend(advisor.load(path), device=ClockedCpu(), memory=memory, **options).to_dict()

    monkeypatch.setattr(api, "resolve_device", lambda name: ClockedCpu())
    result = CliRunner().invoke(app, ["recommend", path, "--device", "cpu", "--memory", memory, *as_flags(options),
                                      "--json"])
    assert result.exit_code == 0, result.output
    from_cli = json.loads(result.stdout)

    assert without_timings(from_cli) == without_timings(from_api)
    # the documents hold the figures that could have differed: measured steps, a resolved noise scale, advice
    assert len(from_api["throughput"]["points"]) >= 5 and from_api["noise"]["b_simple"] is not None
    assert from_api["recommendation"]["batch_size"] >= 1 and from_api["recommendation"]["learning_rate"] > 0
    assert (from_api["recommendation"]["lr_source"] == "sweep") == lr_sweep
