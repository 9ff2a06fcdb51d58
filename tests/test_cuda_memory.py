"""The CUDA path on the CPU: real-step confirmation of the predicted largest batch, out-of-memory
recovery, the NVML budget and device resolution, each through the real seams with fakes behind them
(a simulated allocator in tests/fake_cuda.py, a fake pynvml from tests/test_nvml.py)."""

import json
import math
import types
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from advisor import api, pipeline
from advisor.probes.noise import NoiseBudget
from advisor.cli import app
from advisor.devices import resolve_device
from advisor.devices.cpu import CpuBackend
from advisor.devices.cuda import CudaBackend, nvml_index
from advisor.devices.recovery import try_step
from advisor.errors import BadInput, DeviceUnavailable, ProbeFailed
from advisor.hardware import nvml
from advisor.units import Budget
from advisor.probes.real_steps import RealSteps
from advisor.probes.max_batch import MEASURED_ON_CUDA, calibration, find_max_batch
from advisor.memory.search import confirm_max_batch, largest_fitting_batch
from advisor.memory.trace import StepTracer
from advisor.probes.throughput import measure_throughput
from advisor.settings import Settings
from advisor.spec import load_spec
from tests.fake_cuda import MiB, FakeCudaBackend
from tests.models import MLP
from tests.test_nvml import GiB, FakeGpu, FakeNvml, mig_slice, real as real_pynvml

CONTEXT = 300 * MiB
ROOM = 1 * MiB  # what tensors may use on the fake card: the MLP fits about 1,200 examples


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bsadvisor: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def mlp(write_model):
    return write_model(MLP)


def card(others=0, **kw) -> FakeCudaBackend:
    """A card with ROOM bytes for tensors once other processes and this one's CUDA context are in."""
    return FakeCudaBackend(total=others + CONTEXT + ROOM, context=CONTEXT, others=others, **kw)


def truth(spec, backend: FakeCudaBackend, usable: int) -> int:
    """The largest batch the fake card really fits: its reserve is a known function of the exact trace."""
    tracer = StepTracer(spec)
    return largest_fitting_batch(lambda b: backend.reserved(tracer.peak(b)), usable).max_batch


# ----------------------------------------------------------------------------- confirm_max_batch (pure)

def test_a_right_prediction_costs_two_real_steps():
    tested = []
    assert confirm_max_batch(1000, lambda b: tested.append(b) or b <= 1000) == (1000, 2)
    assert tested == [1000, 1001]


def test_a_prediction_5_percent_high_is_bisected_to_the_true_boundary():
    batch, steps = confirm_max_batch(1000, lambda b: b <= 952)
    assert batch == 952 and steps <= 12


def test_a_low_prediction_walks_up():
    batch, steps = confirm_max_batch(952, lambda b: b <= 1000)
    assert batch == 1000 and steps <= 12


@pytest.mark.parametrize(("true", "steps"), [(999, 2), (1000, 2)])
def test_off_by_one_below_is_two_steps(true, steps):
    assert confirm_max_batch(1000, lambda b: b <= true) == (true, steps)


def test_nothing_fits_is_zero():
    assert confirm_max_batch(64, lambda b: False, smallest=2)[0] == 0


@settings(max_examples=300, deadline=None)
@given(predicted=st.integers(1, 5000), true=st.integers(0, 5000), smallest=st.integers(1, 3))
def test_confirm_finds_the_boundary_of_any_monotone_fit(predicted, true, smallest):
    batch, steps = confirm_max_batch(predicted, lambda b: b <= true, smallest=smallest)
    assert batch == (true if true >= smallest else 0)
    assert steps <= 2 * math.log2(abs(predicted - true) + 2) + 4


# ----------------------------------------------------------------------------- try_step (the one OOM helper)

def test_out_of_memory_is_recovered_after_the_except_block(monkeypatch):
    held, order = [], []

    def step():
        big = torch.empty(1 << 20)
        held.append(weakref.ref(big))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 MiB")

    class Recorded(CpuBackend):
        def release_memory(self):  # by now the traceback, and with it the failed step's tensors, must be gone
            order.append(("free", held[0]() is None))

    assert try_step(step, Recorded(), "a step", restore=lambda: order.append(("restore", True))) is None
    assert order == [("free", True), ("restore", True)]


def test_a_cuda_error_that_is_not_oom_is_a_probe_failure_naming_the_step():
    def step():
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be ...")

    with pytest.raises(ProbeFailed) as caught:
        try_step(step, CpuBackend(), "the real step at batch 512")
    assert str(caught.value) == ("the real step at batch 512: RuntimeError: CUDA error: an illegal memory access "
                                 "was encountered CUDA kernel errors might be ...")
    assert caught.value.exit_code == 4


def test_other_errors_pass_through_and_values_come_back():
    with pytest.raises(KeyError):
        try_step(lambda: {}["x"], CpuBackend(), "a step")
    assert try_step(lambda: 7, CpuBackend(), "a step") == 7


# ----------------------------------------------------------------------------- real steps through the seams

def test_real_steps_on_the_cpu_measure_exactly_what_the_trace_predicts(mlp):
    spec = load_spec(mlp)
    real, tracer = RealSteps(spec, CpuBackend()), StepTracer(spec)
    for batch in (1, 17, 300):
        assert real.peak(batch) == tracer.peak(batch)
    assert real.context_bytes == 0


def test_context_is_measured_from_free_memory_around_the_first_cuda_work(mlp):
    backend = card(others=5 * MiB)
    assert RealSteps(load_spec(mlp), backend).context_bytes == CONTEXT


def confirmed(mlp, backend):
    spec = load_spec(mlp)
    budget = backend.memory_budget(None)
    result = find_max_batch(spec, budget, 0.1, real=RealSteps(spec, backend))
    return spec, budget, result


def test_prediction_right_confirms_with_three_real_steps(mlp):
    backend = card()
    spec, budget, result = confirmed(mlp, backend)
    assert budget == Budget(CONTEXT + ROOM, "NVML free memory (v2)")
    assert result.context_bytes == CONTEXT
    assert result.max_batch == result.predicted_max_batch == truth(spec, backend, ROOM) > 1000
    safe = largest_fitting_batch(StepTracer(spec).peak, ROOM * 0.9).max_batch
    assert result.real_steps == 3 and backend.steps == 1 + 3  # the warm step, the safe batch, B, B + 1
    assert sorted(result.measured) == [safe, result.max_batch, result.max_batch + 1]
    assert result.method == MEASURED_ON_CUDA
    assert result.measured[result.max_batch][0] <= ROOM
    assert result.measured[result.max_batch + 1] is None  # B + 1 ran out of memory: the card is full
    assert result.safe_max_batch == safe


def test_prediction_5_percent_high_is_corrected_by_calibrated_real_steps(mlp):
    backend = card(ratio=1.05)
    spec, _, result = confirmed(mlp, backend)
    assert result.max_batch == truth(spec, backend, ROOM) < 0.97 * result.predicted_max_batch
    # The safe batch fits and calibrates the trace; B' fits, B' + 1 does not. The trace's B never runs.
    assert result.real_steps == 3 and None not in list(result.measured.values())[:2]
    assert result.predicted_max_batch not in result.measured
    assert result.safe_max_batch == truth(spec, backend, 0.9 * ROOM)  # calibrated by real / traced


def test_prediction_low_is_corrected_upwards(mlp):
    backend = card(ratio=0.95)
    spec, _, result = confirmed(mlp, backend)
    assert result.max_batch == truth(spec, backend, ROOM) > 1.03 * result.predicted_max_batch
    assert result.real_steps == 3  # the safe batch calibrates the trace; B' fits, B' + 1 does not


def test_a_budget_below_the_free_memory_is_found_without_running_out_of_memory(mlp):
    backend = FakeCudaBackend(total=CONTEXT + 4 * ROOM, context=CONTEXT, ratio=1.04, workspace=50_000)
    spec = load_spec(mlp)
    result = find_max_batch(spec, backend.memory_budget(CONTEXT + ROOM), 0.1, real=RealSteps(spec, backend))
    assert result.budget.source == "--memory"
    assert result.max_batch == truth(spec, backend, ROOM)
    # A fixed workspace (5% of the room): the ratio at the safe batch predicts B' a little low; the line
    # through both real steps predicts B exactly, and B + 1 confirms it.
    assert result.real_steps == 4 and None not in result.measured.values()
    assert result.safe_max_batch == truth(spec, backend, 0.9 * ROOM)


@pytest.mark.parametrize("ratio", [0.97, 1.0, 1.02, 1.05])
@pytest.mark.parametrize("workspace", [0, 20_000, 40_000])
def test_the_calibrated_trace_finds_the_boundary_and_the_margin_exactly(mlp, ratio, workspace):
    """The allocator's reserve as a proportion of the traced bytes plus a fixed workspace (cuBLAS, up
    to 4% of the room here): three real steps when the trace is off by a proportion, at most four with
    a workspace, as long as the trace is off by less than the margin (the first step then fits)."""
    backend = card(ratio=ratio, workspace=workspace)
    spec, _, result = confirmed(mlp, backend)
    assert result.max_batch == truth(spec, backend, ROOM)
    assert result.safe_max_batch == truth(spec, backend, 0.9 * ROOM)
    assert result.real_steps == 3 if workspace == 0 else result.real_steps <= 4


@pytest.mark.parametrize("points, traced, real", [
    ([(1000, 1100)], 2000, 2200),                       # one step: its ratio
    ([(1000, 1100), (2000, 2150)], 3000, 3200),         # two: the line through them
    ([(1000, 1100), (1500, 1600), (2000, 2150)], 0, 50),  # the smallest and the largest
    ([(1000, 1100), (2000, 1100)], 4000, 2200),         # a line that does not rise: the largest's ratio
])
def test_calibration_maps_traced_bytes_to_real_bytes(points, traced, real):
    assert calibration(points)(traced) == pytest.approx(real)


def test_out_of_memory_on_a_card_that_got_busier_is_recovered_and_the_search_goes_on(mlp):
    """Another process took memory after the budget was read: real steps run out of memory mid-step,
    calibration cannot help (the trace was right), and walking down and bisecting find the boundary."""
    backend = card(capacity=ROOM // 2)
    spec, _, result = confirmed(mlp, backend)
    assert result.max_batch == truth(spec, backend, ROOM // 2) < 0.6 * result.predicted_max_batch
    first = next(iter(result.measured))
    assert result.measured[first] is None and first > result.max_batch  # the first real step ran out of memory
    assert any(p is None for p in result.measured.values())


def test_state_is_restored_after_out_of_memory(mlp):
    backend = card(capacity=ROOM // 2)
    real = RealSteps(load_spec(mlp), backend)
    saved = [p.detach().clone() for p in real.model.parameters()]
    before = real.peak(100)  # the step moved the weights
    assert real.peak(5000) is None
    assert all(torch.equal(a, b) for a, b in zip(saved, real.model.parameters()))
    del real.peaks[100]
    assert real.peak(100) == before  # the next probe measures what it measured before


def test_a_cuda_error_in_a_real_step_is_exit_4_naming_the_batch(write_model):
    path = write_model(MLP + """
def loss(model, batch):
    x, y = batch
    if x.shape[0] > 100 and type(x).__name__ != "FakeTensor":  # the real step only, not the trace
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return torch.nn.functional.cross_entropy(model(x), y)
""")
    spec = load_spec(path)
    backend = card()
    with pytest.raises(ProbeFailed, match=r"^the real step at batch \d+ on cpu: RuntimeError: CUDA error: an illegal"):
        find_max_batch(spec, backend.memory_budget(None), 0.1, real=RealSteps(spec, backend))


def test_nothing_fits_on_the_device_is_bad_input(mlp):
    spec = load_spec(mlp)
    backend = card(capacity=1000)
    with pytest.raises(BadInput, match="nothing fits on cpu"):
        RealSteps(spec, backend)


@pytest.fixture
def on_fake_cuda(monkeypatch):
    backend = card()
    monkeypatch.setattr(api, "resolve_device", lambda name: backend)
    return backend


def test_max_batch_on_cuda_through_the_cli(mlp, on_fake_cuda):
    result = invoke("max-batch", mlp, "--device", "cuda", "--json")
    assert result.exit_code == 0, result.output
    memory = json.loads(result.stdout)["memory"]
    for name in ("max_batch", "safe_max_batch", "budget_bytes", "bytes_per_sample", "fixed_bytes"):
        assert name in memory
    assert memory["method"] == MEASURED_ON_CUDA and memory["budget_source"] == "NVML free memory (v2)"
    assert memory["predicted_max_batch"] == memory["max_batch"] and memory["real_steps"] == 3
    assert memory["context_bytes"] == CONTEXT
    assert [m["out_of_memory"] for m in memory["measured"]] == [False, False, True]
    assert memory["measured"][0]["reserved_bytes"] <= memory["budget_bytes"] - CONTEXT


def test_recommend_on_cuda_uses_the_confirmed_batch(mlp):
    backend = card(ratio=1.05)  # the trace is 5% low: the recommendation must stay within the real limit
    settings = Settings(noise_snapshots=4, noise_warmup_steps=1, max_step_seconds=0.05,
                                 noise_budget=NoiseBudget(seconds=None, steps=20))
    advisor = pipeline.Advisor(load_spec(mlp), backend, settings)
    plan, memory = advisor.recommendation().plan, advisor.memory()
    assert memory.max_batch < memory.predicted_max_batch and memory.method == MEASURED_ON_CUDA
    assert plan.micro_batch <= memory.safe_max_batch < memory.max_batch
    assert "measured on CUDA" in advisor.throughput().method


# ----------------------------------------------------------------------------- timing on CUDA

class FakeEvent:
    def __init__(self, log, enable_timing):
        assert enable_timing
        self.log, self.at = log, None

    def record(self):
        self.log.append("record")
        self.at = len(self.log)

    def synchronize(self):
        self.log.append("event synchronize")

    def elapsed_time(self, end):
        return 250.0  # milliseconds, as CUDA events give them


def test_a_step_is_timed_by_cuda_events_after_synchronising(monkeypatch):
    log = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "Event", lambda enable_timing=False: FakeEvent(log, enable_timing))
    seconds = CudaBackend(torch.device("cuda", 0)).timed(lambda: log.append("step"))
    assert seconds == 0.25
    # Work queued before is finished first; the end event is waited on, not the whole device.
    assert log == ["synchronize", "record", "step", "record", "event synchronize"]


class ScriptedClock(FakeCudaBackend):
    """The warm-up step is slow (kernels compile, caches fill); the steps after it take 10 ms each part."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def timed(self, fn) -> float:
        fn()
        self.calls += 1
        return 50.0 if self.calls <= 2 else 0.01  # the warm-up's forward-backward and optimizer step


def test_the_warm_up_step_is_not_timed(mlp):
    backend = ScriptedClock()
    result = measure_throughput(load_spec(mlp), backend, [4], warmup_steps=1, timed_steps=5)
    assert backend.calls == 3 * 2 * (1 + 5)  # three rounds, each a warm-up and five timed steps
    assert [(p.step_seconds, p.optimizer_seconds) for p in result.points] == [(0.02, 0.01)]
    assert result.method == "measured on CUDA: minimum of 3 interleaved rounds of 5 timed steps, each after 1 warm-up"


class BusyRound(FakeCudaBackend):
    """Another process's burst of load lands on one round: every step in it takes 10x longer."""

    def __init__(self, busy_calls: range):
        super().__init__()
        self.calls, self.busy = 0, busy_calls

    def timed(self, fn) -> float:
        fn()
        self.calls += 1
        return 0.1 if self.calls in self.busy else 0.01


@pytest.mark.parametrize("busy", [range(1, 17), range(17, 33), range(33, 49)], ids=["round 1", "round 2", "round 3"])
def test_a_burst_of_load_in_one_round_moves_no_step_time(mlp, busy):
    backend = BusyRound(busy)  # 2 sizes x (1 warm-up + 3 timed) x 2 timings = 16 calls a round
    result = measure_throughput(load_spec(mlp), backend, [4, 8], warmup_steps=1, timed_steps=3)
    assert [p.step_seconds for p in result.points] == [0.02, 0.02]
    assert all(p.spread >= 0 for p in result.points)


def test_step_times_that_fall_with_the_batch_are_flagged():
    from advisor.probes.throughput import ThroughputPoint, not_rising
    points = [ThroughputPoint(b, t, 0.0) for b, t in [(1, 0.010), (2, 0.011), (4, 0.005), (8, 0.012)]]
    assert not_rising(points) == [(1, 4), (2, 4)]
    assert not_rising([ThroughputPoint(b, 0.01 * b, 0.0) for b in (1, 2, 4)]) == []


# ----------------------------------------------------------------------------- OOM in the throughput and noise probes

OOM_AT = MLP + """
def loss(model, batch):
    x, y = batch
    if x.shape[0] >= LIMIT and type(x).__name__ != "FakeTensor":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return torch.nn.functional.cross_entropy(model(x), y)
"""


def test_throughput_stops_growing_at_out_of_memory_and_notes_it(write_model):
    path = write_model(OOM_AT.replace("LIMIT", "32"))
    result = invoke("throughput", path, "--device", "cpu", "--batch-sizes", "2,4,8,16,32,64", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [p["batch"] for p in doc["throughput"]["points"]] == [2, 4, 8, 16]
    assert doc["throughput"]["out_of_memory_at"] == 32
    assert any("batch 32: it ran out of memory" in note for note in doc["notes"])


def test_noise_halves_its_batch_on_out_of_memory(write_model):
    path = write_model(OOM_AT.replace("LIMIT", "8"))  # micro-batches of 8 (batch 64) do not fit, of 4 do
    result = invoke("noise", path, "--device", "cpu", "--batch-size", "64", "--snapshots", "4",
                    "--noise-warmup-steps", "1", "--base-batch", "4", "--noise-budget", "20steps", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["noise"]["batch_size"] == 32 and doc["noise"]["micro_batch"] == 4
    assert any("ran out of memory at batch 64" in note for note in doc["notes"])


def test_a_cuda_error_in_a_probe_is_exit_4_in_one_line(write_model):
    path = write_model(OOM_AT.replace("LIMIT", "32").replace(
        'torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")',
        'RuntimeError("CUDA error: an illegal memory access was encountered")'))
    result = invoke("throughput", path, "--device", "cpu", "--batch-sizes", "2,32")
    assert result.exit_code == 4
    line = one_error_line(result)
    assert "the throughput probe at batch 32" in line and "illegal memory access" in line


# ----------------------------------------------------------------------------- NVML: budget and device resolution

@pytest.fixture
def fake_nvml(monkeypatch):
    nv = FakeNvml()
    monkeypatch.setattr(nvml, "_load_pynvml", lambda: nv)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    return nv


def test_budget_on_a_busy_card_is_nvml_free_memory(fake_nvml):
    fake_nvml.gpus[0].used = 60 * GiB  # other processes hold most of the card
    budget = CudaBackend(torch.device("cuda", 0)).memory_budget(None)
    assert budget == Budget(80 * GiB - 512 * MiB - 60 * GiB, "NVML free memory (v2)")
    assert budget.bytes < 0.3 * fake_nvml.gpus[0].total


def test_memory_flag_wins_when_smaller_than_the_free_memory(fake_nvml):
    assert CudaBackend(torch.device("cuda", 0)).memory_budget(4 * GiB) == Budget(4 * GiB, "--memory")
    fake_nvml.gpus[0].used = 77 * GiB
    assert CudaBackend(torch.device("cuda", 0)).memory_budget(4 * GiB).source == "NVML free memory (v2)"


def test_v1_only_driver_says_so(fake_nvml):
    fake_nvml.v2_driver = False
    assert CudaBackend(torch.device("cuda", 0)).memory_budget(None).source == "NVML free memory (v1)"


def test_budget_reads_the_gpu_nvml_numbers(fake_nvml):
    fake_nvml.gpus = [FakeGpu(), FakeGpu(used=70 * GiB)]
    assert CudaBackend(torch.device("cuda", 0), nvml_index=1).memory_budget(None).bytes == 10 * GiB - 512 * MiB


def test_budget_without_nvml_falls_back_to_cuda_and_says_so(fake_nvml, monkeypatch):
    fake_nvml.fail["nvmlInit"] = real_pynvml.NVMLError_DriverNotLoaded()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (5 * GiB, 80 * GiB))
    budget = CudaBackend(torch.device("cuda", 0)).memory_budget(None)
    assert budget.bytes == 5 * GiB
    assert budget.source == "CUDA free memory (cudaMemGetInfo; NVML unavailable: NVIDIA driver not loaded)"


@pytest.fixture
def visible_gpu(monkeypatch, fake_nvml):
    """torch sees one GPU (on this CPU-only build): resolve_device goes on to NVML."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid=""))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake_nvml


def test_cuda_resolves_with_nvml(visible_gpu):
    backend = resolve_device("cuda")
    assert backend.device == torch.device("cuda", 0) and backend.nvml_index == 0 and backend.note is None


@pytest.mark.parametrize(("error", "message"), [
    (real_pynvml.NVMLError_LibraryNotFound(), "NVML library not found: is the NVIDIA driver installed?"),
    (real_pynvml.NVMLError_DriverNotLoaded(), "NVIDIA driver not loaded"),
])
def test_nvml_failure_is_exit_3_for_cuda_and_a_cpu_fallback_for_auto(visible_gpu, error, message):
    visible_gpu.fail["nvmlInit"] = error
    with pytest.raises(DeviceUnavailable) as caught:
        resolve_device("cuda:0")
    assert str(caught.value) == f"--device cuda:0: {message}" and caught.value.exit_code == 3
    backend = resolve_device("auto")
    assert backend.device.type == "cpu" and message in backend.note


def test_a_lost_gpu_is_exit_3(visible_gpu):
    visible_gpu.fail["nvmlDeviceGetMemoryInfo_v2"] = real_pynvml.NVMLError_GpuIsLost()
    with pytest.raises(DeviceUnavailable, match=r"^--device cuda: GPU 0 is lost \(fell off the bus\)$"):
        resolve_device("cuda")


def test_nvml_failure_through_the_cli(visible_gpu, mlp):
    visible_gpu.fail["nvmlInit"] = real_pynvml.NVMLError_LibraryNotFound()
    result = invoke("max-batch", mlp, "--device", "cuda")
    assert result.exit_code == 3
    assert one_error_line(result) == ("bsadvisor: error: --device cuda: NVML library not found: "
                                      "is the NVIDIA driver installed?")
    result = invoke("max-batch", mlp, "--device", "auto", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["device"]["type"] == "cpu" and "CUDA is visible but NVML is not" in doc["notes"][0]


UUIDS = ["GPU-0c4a2d6e-1111-2222-3333-444455556666", "GPU-8f3cdead-beef-2222-3333-777788889999"]


@pytest.fixture
def two_gpus(visible_gpu):
    visible_gpu.gpus = [FakeGpu(uuid=UUIDS[0]), FakeGpu(uuid=UUIDS[1])]
    return visible_gpu


def test_nvml_index_matches_torch_uuid(two_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid=UUIDS[1][4:]))
    assert nvml_index(0) == 1


@pytest.mark.parametrize(("visible", "index"), [("1,0", 1), ("GPU-8f3c", 1), ("GPU-0c4a2d6e", 0), ("", 0)])
def test_nvml_index_from_cuda_visible_devices(two_gpus, monkeypatch, visible, index):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert nvml_index(0) == index


def test_a_mig_device_is_budgeted_by_its_own_memory_not_the_cards(visible_gpu, monkeypatch):
    """CUDA_VISIBLE_DEVICES names a MIG slice: the budget is the slice's free memory (15 GiB of 20),
    not the whole H100's 76 GiB."""
    visible_gpu.gpus = [FakeGpu(mig=[mig_slice(0, 10 * GiB), mig_slice(1, 20 * GiB)])]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-10000000-aaaa-bbbb-cccc-dddddddddddd")
    backend = resolve_device("cuda")
    assert backend.nvml_index == (0, 1)
    assert backend.memory_budget(None) == Budget(15 * GiB, "NVML free memory (v2)")

