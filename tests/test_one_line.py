"""Issue #14: whatever the model file or the flags do, the run ends in ONE line on stderr with its documented
exit code (or a valid report), never a traceback, and stdout holds the JSON document alone."""

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from advisor.cli import app
from tests.test_bad_inputs import GOOD, assert_one_line_error, run_cli

FAST = ["--device", "cpu", "--max-step-seconds", "0.05"]  # throughput's flags

# Exceptions a user's code raises that are not ordinary Exceptions, or whose message is awkward to show.
PRELUDE = """
class Halt(BaseException):
    pass

class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError('no str for you')

class UnprintableRuntime(RuntimeError):  # read by the out-of-memory and device-error predicates
    def __str__(self):
        raise ValueError('no str either')
"""
KINDS = {
    "generator-exit": ("GeneratorExit('closed')", ["GeneratorExit"]),
    "base-exception-subclass": ("Halt('custom stop')", ["Halt", "custom stop"]),
    "memory-error": ("MemoryError('no room')", ["MemoryError"]),
    "str-raises": ("Unprintable()", ["Unprintable", "cannot be shown"]),
    "runtime-error-str-raises": ("UnprintableRuntime()", ["UnprintableRuntime", "cannot be shown"]),
    "multi-line-message": ("ValueError('first\\nsecond\\n\\n  third')", ["first second third"]),
}
# Where the user's code raises it: (code appended to GOOD, exit code, fragment of the line).
PLACES = {
    "import": ("raise {exc}\n", 2, "importing it"),
    "model": ("def model():\n    raise {exc}\n", 2, "model() raised"),
    "batch": ("def batch(n):\n    raise {exc}\n", 2, "batch(2)"),
    "loss": ("def loss(m, b):\n    raise {exc}\n", 2, "loss(model, batch) raised"),
    "optimizer": ("def optimizer(params):\n    raise {exc}\n", 2, "optimizer(params) raised"),
    # model() again, outside the contract check: the probes rebuild it
    "model-rebuilt": ("_built = []\ndef model():\n    _built.append(1)\n    if len(_built) > 2:\n"
                      "        raise {exc}\n    return torch.nn.Linear(4, 3)\n", 2, "model() raised"),
    # the user's own state methods, which the probes call outside any seam (SavedState, its restore)
    "load_state_dict": ("class Net(torch.nn.Linear):\n    def load_state_dict(self, *a, **k):\n        raise {exc}\n"
                        "def model():\n    return Net(4, 3)\n", 4, "the throughput probe failed"),
    "state_dict": ("_built = []\nclass Net(torch.nn.Linear):\n    def state_dict(self, *a, **k):\n"
                   "        raise {exc}\ndef model():\n    return Net(4, 3)\n", 4, "the throughput probe failed"),
}


def write(tmp_path, extra: str):
    path = tmp_path / "model.py"
    path.write_text(GOOD + PRELUDE + extra)
    return path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("place", PLACES)
def test_any_exception_from_the_model_file_is_one_line(tmp_path, place, kind):
    code, expected_exit, where = PLACES[place]
    exc, fragments = KINDS[kind]
    if kind == "memory-error" and place in ("batch", "loss"):  # out of memory in the step: nothing fits
        where = "nothing fits: the contract step at batch 2 ran out of memory"
    path = write(tmp_path, code.format(exc=exc))
    result = run_cli("throughput", path, *FAST, "--batch-sizes", "2", "--json")
    named = [str(path)] if expected_exit == 2 else []  # exit 4: the probe is named, not the file
    assert_one_line_error(result, expected_exit, *named, where, *fragments)


# --- what the model file returns, checked before anything reads it --------------------------------------

RETURNED = {
    "batch-meta": ("def batch(n):\n    return torch.randn(n, 4, device='meta'), torch.randint(0, 3, (n,))\n",
                   ["batch(2) returned a meta tensor"]),
    "batch-sparse": ("def batch(n):\n    return torch.randn(n, 4).to_sparse(), torch.randint(0, 3, (n,))\n",
                     ["batch(2) returned a sparse tensor"]),
    "batch-nested": ("def batch(n):\n    return torch.nested.nested_tensor([torch.randn(4) for _ in range(n)])\n",
                     ["batch(2) returned a nested tensor"]),
    "loss-complex": ("def loss(m, b):\n    return m(b[0]).mean() * (1 + 1j)\n", ["complex64"]),
    "loss-integer": ("def loss(m, b):\n    return m(b[0]).argmax()\n", ["int64"]),
    "loss-meta": ("def loss(m, b):\n    return torch.zeros((), device='meta', requires_grad=True)\n",
                  ["a meta tensor"]),
    "loss-sparse": ("def loss(m, b):\n    return m(b[0]).mean().reshape(1, 1).to_sparse()\n", ["a sparse tensor"]),
    "loss-nested": ("def loss(m, b):\n    return torch.nested.nested_tensor([m(b[0]).mean().reshape(1)])\n",
                    ["a nested tensor"]),
    # differentiable, but through no parameter: it would pass as a loss and advise nonsense
    "loss-leaf": ("def loss(m, b):\n    return torch.zeros((), requires_grad=True)\n", ["no gradient"]),
    "loss-of-a-leaf": ("w = torch.ones((), requires_grad=True)\ndef loss(m, b):\n    return (w * 3).sum()\n",
                       ["no gradient"]),
    "loss-times-zero": ("def loss(m, b):\n    return m(b[0]).mean() * 0\n", ["no gradient"]),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", RETURNED)
def test_a_returned_value_no_probe_can_use_is_one_line(tmp_path, case):
    code, fragments = RETURNED[case]
    path = write(tmp_path, code)
    result = run_cli("max-batch", path, "--device", "cpu", "--json")
    assert_one_line_error(result, 2, str(path), *fragments)


# --- flags: every number bounded ----------------------------------------------------------------------

HUGE = str(10**30)
FLAGS = [
    ("noise", ["--seed", str(2**64 - 1)], "--seed"),
    ("noise", ["--batch-size", HUGE], "--batch-size"),
    ("check", ["--profile", "h100-sxm-80gb", "--batch-size", HUGE], "--batch-size"),
    ("check", ["--profile", "h100-sxm-80gb", "--batch-size", "8", "--min-max-batch", HUGE], "--min-max-batch"),
    ("recommend", ["--base-batch", HUGE], "--base-batch"),
    ("recommend", ["--plan-gpus", HUGE, "--profile", "h100-sxm-80gb"], "--plan-gpus"),
    ("recommend", ["--base-lr", "1e300"], "--base-lr"),
    ("noise", ["--collective-timeout", "1e300"], "--collective-timeout"),
    ("noise", ["--step-timeout", "1e300"], "--step-timeout"),
    ("noise", ["--snapshots", HUGE], "--snapshots"),
    ("noise", ["--snapshots", "1"], "--snapshots"),
    ("noise", ["--snapshots", "3"], "--snapshots"),
    ("noise", ["--noise-warmup-steps", str(10**9)], "--noise-warmup-steps"),
    ("throughput", ["--batch-sizes", f"8,{10**13}"], "--batch-sizes"),
    ("noise", ["--nproc-per-node", HUGE], "--nproc-per-node"),
    ("noise", ["--nproc-per-node", str((os.cpu_count() or 1) + 1), "--device", "cpu"], "--nproc-per-node"),
]


@pytest.mark.parametrize("command, flags, fragment", FLAGS, ids=[f"{c}{' '.join(f)[:40]}" for c, f, _ in FLAGS])
def test_an_out_of_range_number_is_one_line_exit_2(tmp_path, command, flags, fragment):
    path = write(tmp_path, "")
    result = run_cli(command, path, *flags, "--json")
    assert_one_line_error(result, 2, fragment)
    assert len(result.stderr) < 300  # 10**30 is not spelt out


def test_a_message_holding_newlines_stays_one_line(tmp_path):
    result = run_cli("max-batch", tmp_path / "train\nmodel.py", "--json")
    assert_one_line_error(result, 2, "train model.py", "no such model file")
    result = run_cli("check", write(tmp_path, ""), "--profile", "h100\nsxm", "--batch-size", "8", "--json")
    assert_one_line_error(result, 2, "unknown profile")


# --- out of memory in batch() is a measurement, not bad input ------------------------------------------

@pytest.mark.parametrize("error", ["MemoryError('numpy: unable to allocate')",
                                   "torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2 GiB')"])
def test_out_of_memory_in_batch_is_does_not_fit(tmp_path, error):
    path = write(tmp_path, f"def batch(n):\n    if n > 8:\n        raise {error}\n"
                           "    return torch.randn(n, 4), torch.randint(0, 3, (n,))\n")
    result = run_cli("throughput", path, *FAST, "--batch-sizes", "2,16", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [p["batch"] for p in doc["throughput"]["points"]] == [2]
    assert doc["throughput"]["out_of_memory_at"] == 16
    assert "ran out of memory" in result.stderr


# --- the model file's output never lands on stdout ------------------------------------------------------

PRINTS = {
    "import": "print('CHATTER at import')\n",
    "model": "_m = model\ndef model():\n    print('CHATTER in model()')\n    return _m()\n",
    "batch": "_b = batch\ndef batch(n):\n    print('CHATTER in batch()')\n    return _b(n)\n",
    "loss": "import torch.nn.functional as F\ndef loss(m, b):\n    print('CHATTER in loss()')\n"
            "    return F.cross_entropy(m(b[0]), b[1])\n",
    "optimizer": "def optimizer(params):\n    print('CHATTER in optimizer()')\n"
                 "    return torch.optim.SGD(params, lr=0.1)\n",
    "logging": "import logging, sys\nlogging.basicConfig(stream=sys.stdout, level=logging.INFO, force=True)\n"
               "_b = batch\ndef batch(n):\n    logging.info('CHATTER from logging')\n    return _b(n)\n",
    "fd-1": "import os\nos.write(1, b'CHATTER on fd 1\\n')\n",
    "sys.__stdout__": "import sys\nsys.__stdout__.write('CHATTER to sys.__stdout__\\n')\n",
}


@pytest.mark.parametrize("command", [["throughput", *FAST, "--batch-sizes", "2,4"],
                                     ["check", "--profile", "h100-sxm-80gb", "--batch-size", "8"]],
                         ids=["throughput", "check"])
@pytest.mark.parametrize("where", PRINTS)
def test_what_the_model_file_prints_goes_to_stderr(tmp_path, capfd, where, command):
    path = write(tmp_path, PRINTS[where])
    result = CliRunner().invoke(app, [command[0], str(path), *command[1:], "--json"])
    assert result.exit_code == 0, result.stdout + result.stderr
    json.loads(result.stdout)  # the document alone
    captured = capfd.readouterr()
    assert "CHATTER" not in result.stdout and "CHATTER" not in captured.out
    assert "CHATTER" in result.stderr + captured.err


# --- check --json: bytes are integers -----------------------------------------------------------------

def test_check_json_bytes_are_integers(tmp_path):
    result = run_cli("check", write(tmp_path, ""), "--profile", "a100-sxm-40gb", "--batch-size", "8",
                     "--margin", "0.1", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    for key in ("peak_bytes", "budget_bytes", "usable_bytes", "headroom_bytes"):
        assert isinstance(doc[key], int), (key, doc[key])
    assert doc["headroom_bytes"] == doc["budget_bytes"] - doc["peak_bytes"]


def test_a_sparse_gradient_counts_as_a_gradient(tmp_path):
    """The contract's gradient check reads sparse gradients too (nn.Embedding(sparse=True))."""
    from advisor.spec import check_contract, load_spec

    path = write(tmp_path, "def model():\n    return torch.nn.Embedding(10, 3, sparse=True)\n"
                           "def batch(n):\n    return torch.randint(0, 10, (n,)), torch.randn(n, 3)\n"
                           "def optimizer(params):\n    return torch.optim.SGD(params, lr=0.1)\n")
    assert check_contract(load_spec(path)) == 1


@pytest.mark.parametrize("children", [[], ["--isolate"], ["--nproc-per-node", "2"]],
                         ids=["one-process", "isolate", "ranks"])
def test_what_the_model_file_prints_in_a_real_process_goes_to_stderr(tmp_path, children):
    """A real stdout is block-buffered (what reaches sys.__stdout__ must be flushed while it still goes to
    stderr); the --isolate child and the ranks of a job run the model file's code in processes of their own."""
    import subprocess
    import sys

    path = write(tmp_path, PRINTS["loss"] + PRINTS["fd-1"] + PRINTS["sys.__stdout__"])
    done = subprocess.run([sys.executable, "-m", "advisor", "throughput", str(path), *FAST, "--batch-sizes", "2,4",
                           *children, "--json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["throughput"]["points"]
    assert "CHATTER" in done.stderr


@pytest.mark.parametrize("error", [RuntimeError("a bug\nof ours"), GeneratorExit(), KeyError("x")])
def test_a_failure_outside_every_seam_is_still_one_line_exit_4(tmp_path, monkeypatch, error):
    """The last net, in the CLI: an error no seam named (here, rendering the report) is one line, exit 4."""
    from advisor.results import Report

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(Report, "to_dict", broken)
    result = run_cli("throughput", write(tmp_path, ""), *FAST, "--batch-sizes", "2", "--json")
    assert_one_line_error(result, 4, f"unexpected {type(error).__name__}")
