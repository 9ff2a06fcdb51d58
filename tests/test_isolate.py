"""--isolate: probes in a child process; a crash there is one line and exit 4, and the advisor lives on."""

import json
import signal

import pytest
from typer.testing import CliRunner

from advisor.cli import app
from advisor.isolate import crash_message
from tests.models import MLP

CRASHING = MLP + """
import os
_real_batch = batch

def batch(n):
    if n >= 64:
        CRASH
    return _real_batch(n)
"""


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def keys(value):
    """The document's shape: every key path, without the values (timings differ between runs)."""
    if isinstance(value, dict):
        return {k: keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [keys(v) for v in value[:1]]
    return None


@pytest.mark.parametrize(("crash", "said"), [
    ("os.abort()", "the probe process was killed by SIGABRT (signal 6)"),
    ("os._exit(9)", "the probe process exited with code 9 before reporting"),
])
def test_a_crash_in_the_model_file_is_one_line_and_exit_4(write_model, crash, said):
    path = write_model(CRASHING.replace("CRASH", crash))
    result = invoke("throughput", path, "--device", "cpu", "--batch-sizes", "2,64", "--isolate")
    assert result.exit_code == 4, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"bsadvisor: error: {said}"), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    # The advisor survived: the next command in this process works.
    assert invoke("throughput", path, "--device", "cpu", "--batch-sizes", "2,4", "--json").exit_code == 0


def test_isolated_report_has_the_same_fields_and_figures(write_model):
    path = write_model(MLP)
    flags = ["max-batch", path, "--device", "cpu", "--memory", "1MiB", "--json"]
    here, there = invoke(*flags), invoke(*flags, "--isolate")
    assert here.exit_code == there.exit_code == 0, there.output
    here, there = json.loads(here.stdout), json.loads(there.stdout)
    assert keys(here) == keys(there)
    assert here["memory"]["max_batch"] == there["memory"]["max_batch"]
    assert here["memory"]["traced"] == there["memory"]["traced"]


def test_an_expected_error_in_the_child_keeps_its_line_and_exit_code(tmp_path):
    result = invoke("max-batch", tmp_path / "missing.py", "--device", "cpu", "--isolate")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"bsadvisor: error: {tmp_path / 'missing.py'}: no such model file"


def test_crash_messages():
    assert crash_message(-signal.SIGSEGV, "") == ("the probe process was killed by SIGSEGV (signal 11): "
                                                  "a crash in the model file's code or the driver")
    last = "terminate called after throwing an instance of 'c10::Error'\n  what():  CUDA error: unspecified launch failure"
    assert crash_message(-signal.SIGABRT, last).endswith("; its last words: what():  CUDA error: unspecified launch failure")
    assert crash_message(4, "bsadvisor: error: noise probe: batch(64) did not finish within 2 s\n") == \
        "noise probe: batch(64) did not finish within 2 s"
    assert "unknown signal" in crash_message(-200, "")


def test_the_noise_probe_runs_isolated_too(write_model):
    """The child rebuilds every setting from JSON (the noise budget arrived as a plain dict, once)."""
    path = write_model(MLP)
    result = invoke("noise", path, "--device", "cpu", "--noise-budget", "2steps", "--noise-warmup-steps", "1",
                    "--snapshots", "4", "--isolate", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["noise"]["stopped"] == "the probe's budget (2 training steps)"
