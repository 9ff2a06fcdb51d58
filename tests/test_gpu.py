"""On a real GPU (skipped without CUDA): the fake-mode trace against the allocator, the confirmed largest
batch against real steps, out-of-memory recovery, and a run beside a process holding half the card."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from advisor.cli import app
from advisor.devices import resolve_device
from advisor.units import Budget
from advisor.probes.real_steps import RealSteps
from advisor.probes.max_batch import MEASURED_ON_CUDA, find_max_batch
from advisor.memory.trace import StepTracer
from advisor.pipeline import Advisor
from advisor.settings import Settings
from advisor.spec import check_contract, load_spec
from tests.test_memory import CNN

pytestmark = pytest.mark.gpu

GiB = 1 << 30
EXAMPLES = Path(__file__).parent.parent / "examples"

# Wide activations from a tiny input: batch 400 000 wants over 100 GB per activation on the GPU, 32 MB on the host.
WIDE = """
import torch
BASE_BATCH_SIZE = 8

def model():
    return torch.nn.Sequential(torch.nn.Linear(20, 65536), torch.nn.ReLU(), torch.nn.Linear(65536, 2))

def batch(n):
    return torch.randn(n, 20), torch.randint(0, 2, (n,))
"""


@pytest.fixture(params=["gpt_stdlib", "mlp_unicode", "cnn"])
def spec(request, write_model):
    path = EXAMPLES / f"{request.param}.py" if request.param != "cnn" else write_model(CNN)
    return load_spec(path)


def test_fake_trace_is_within_5_percent_of_real_max_memory_reserved(spec):
    """At a batch whose traced peak is about 1 GiB, where the allocator's fixed costs are small."""
    smallest = check_contract(spec)
    batch = find_max_batch(spec, Budget(GiB, "test"), 0.0, smallest=smallest).max_batch
    traced = StepTracer(spec, smallest=smallest, batch_on_host=False).peak(batch)  # each tensor copied to the GPU
    real = RealSteps(spec, resolve_device("cuda"), smallest=smallest).peak(batch)
    assert real is not None
    assert abs(traced - real) <= 0.05 * real, f"batch {batch}: traced {traced}, max_memory_reserved {real}"


def test_reported_largest_batch_runs_and_3_percent_more_does_not_fit(spec):
    smallest = check_contract(spec)
    advisor = Advisor(spec, resolve_device("cuda"), Settings(memory_bytes=2 * GiB))
    memory = advisor.memory()
    assert memory.method == MEASURED_ON_CUDA and memory.budget.bytes == 2 * GiB
    assert memory.real_steps <= 4, memory.measured  # three in the usual case, four with a fixed workspace
    room = memory.budget.bytes - memory.context_bytes
    real = RealSteps(spec, advisor.backend, smallest=smallest)
    assert real.peak(memory.max_batch) <= room
    above = real.peak(math.ceil(1.03 * memory.max_batch))
    assert above is None or above > room  # out of memory, or over the budget


def test_out_of_memory_in_the_throughput_probe_is_recovered(write_model):
    path = write_model(WIDE)
    result = CliRunner().invoke(app, ["throughput", str(path), "--device", "cuda", "--batch-sizes", "8,400000",
                                      "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [p["batch"] for p in doc["throughput"]["points"]] == [8]
    assert doc["throughput"]["out_of_memory_at"] == 400000
    # Nothing of the failed step is left behind: the next work on the device has the memory.
    assert torch.cuda.memory_allocated() < 64 * 2**20
    torch.empty(GiB, dtype=torch.uint8, device="cuda")


def test_a_run_beside_a_process_holding_half_the_card_respects_it():
    free, total = torch.cuda.mem_get_info()
    hog_bytes = free // 2
    hog = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, torch\n"
        f"x = torch.empty({hog_bytes}, dtype=torch.uint8, device='cuda')\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout.readline().strip() == "ready"
        run = subprocess.run([sys.executable, "-m", "advisor", "max-batch", str(EXAMPLES / "gpt_stdlib.py"),
                              "--device", "cuda", "--isolate", "--json"], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        memory = json.loads(run.stdout)["memory"]
        assert memory["budget_source"].startswith("NVML free memory")
        assert memory["budget_bytes"] <= total - hog_bytes
        confirmed = next(m for m in memory["measured"] if m["batch"] == memory["max_batch"])
        assert confirmed["reserved_bytes"] + memory["context_bytes"] <= memory["budget_bytes"]
    finally:
        hog.kill()
        hog.wait()
