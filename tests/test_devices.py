"""The device seam: backends chosen by name, and Apple's MPS behind it, tested with a fake torch.mps (this
machine has no Metal GPU). A kind of device answers the same questions as every other; the probes never ask
which kind it is."""

import pytest
import torch

import advisor
from advisor.devices import rank_limit, resolve_device
from advisor.devices import cpu
from advisor.devices.cpu import CpuBackend, threads_beside_load
from advisor.devices.mps import MPS_MEMORY_SOURCE, MpsBackend
from advisor.errors import DeviceUnavailable
from advisor.units import Budget

GiB = 1 << 30


@pytest.fixture
def fake_mps(monkeypatch):
    """torch.mps as a Mac with a 16 GiB working set reports it: the driver holds 3 GiB, tensors 1 GiB."""
    calls = []
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 16 * GiB)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 3 * GiB)
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: 1 * GiB)
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("synchronize"))
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: calls.append("empty_cache"))
    state = {"rng": torch.tensor([1, 2, 3], dtype=torch.uint8)}
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: state["rng"].clone())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda s: state.update(rng=s))
    return calls, state


class CpuStandIn(MpsBackend):
    """The MPS backend's answers with the steps run on the CPU: the pipeline goes through the MPS seam."""

    def __init__(self):
        super().__init__()
        self.device = torch.device("cpu")


def test_mps_is_chosen_by_name_and_by_auto_after_cuda(fake_mps):
    assert isinstance(resolve_device("mps"), MpsBackend) and isinstance(resolve_device("mps:0"), MpsBackend)
    auto = resolve_device("auto")
    assert isinstance(auto, MpsBackend) and auto.note is None
    with pytest.raises(DeviceUnavailable, match="there is one MPS device"):
        resolve_device("mps:1")


def test_no_mps_is_exit_3_and_auto_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match=r"^--device mps: MPS is not available") as caught:
        resolve_device("mps")
    assert caught.value.exit_code == 3
    auto = resolve_device("auto")
    assert isinstance(auto, CpuBackend) and "measuring on the CPU" in auto.note


def test_the_mps_budget_is_the_working_set_less_what_others_hold(fake_mps):
    backend = MpsBackend()
    # free: 16 - 3 GiB the driver holds; ours to reuse: 3 - 1 GiB cached beyond live tensors
    assert backend.memory_budget(None) == Budget(15 * GiB, MPS_MEMORY_SOURCE)
    assert backend.memory_budget(4 * GiB) == Budget(4 * GiB, "--memory")


def test_mps_times_after_synchronising_and_frees_its_cache(fake_mps):
    calls, _ = fake_mps
    backend = MpsBackend()
    assert backend.timed(lambda: calls.append("step")) >= 0
    assert calls == ["synchronize", "step", "synchronize"]
    backend.release_memory()
    assert calls[-1] == "empty_cache"


def test_mps_peaks_are_tracked_tensor_bytes(fake_mps):
    with MpsBackend().measuring() as peak:
        x = torch.empty(1 << 20, dtype=torch.uint8)
        del x
    assert peak.reserved == peak.allocated == 1 << 20


def test_mps_gives_back_the_random_states(fake_mps):
    _, state = fake_mps
    before = torch.get_rng_state()
    with MpsBackend().preserving_rng():
        torch.manual_seed(7)
        state["rng"] = torch.tensor([9], dtype=torch.uint8)
    assert torch.equal(torch.get_rng_state(), before) and state["rng"].tolist() == [1, 2, 3]


def test_one_rank_per_mps_device(fake_mps):
    assert rank_limit("mps")[0] == 1 and rank_limit("auto")[0] == 1


def test_the_pipeline_runs_through_the_mps_seam(fake_mps):
    """Memory from Metal's figures, peaks tracked (no real steps confirm them: nothing rounds them), timing
    said to be measured on MPS."""
    def model():
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def batch(n):
        x = torch.randn(n, 8)
        return x, (x.sum(1) > 0).long()

    report = advisor.max_batch(model, batch, device=CpuStandIn())
    assert report.memory.budget == Budget(15 * GiB, MPS_MEMORY_SOURCE) and report.memory.real_steps == 0
    report = advisor.throughput(model, batch, device=CpuStandIn(), batch_sizes=[2, 4], max_step_seconds=0.05)
    assert report.throughput.method.startswith("measured on MPS")


@pytest.mark.parametrize("current,cores,load,expected", [
    (2, 2, 0.4, 2),    # an idle machine keeps its threads
    (2, 2, 0.6, 1),    # one core's worth of other work: a thread per core left free
    (16, 16, 3.2, 13),
    (2, 2, 5.0, 1),    # never fewer than one
    (4, 8, 0.0, 4),    # never more than the caller had
])
def test_threads_beside_load_leave_the_busy_cores_alone(current, cores, load, expected):
    assert threads_beside_load(current, cores, load) == expected


@pytest.fixture
def busy_machine(monkeypatch):
    """Two cores, one busy with other work; the caller's two threads."""
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    monkeypatch.setattr(cpu, "busy_cores", lambda seconds: 0.0)  # the load average decides
    monkeypatch.setattr(cpu, "_busy", (-float("inf"), None))
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_busy_cpu_probes_with_fewer_threads_and_gives_them_back(busy_machine):
    with CpuBackend().probing_threads() as note:
        assert torch.get_num_threads() == 1 and "busy (load 1.0 on 2 cores)" in note
    assert torch.get_num_threads() == 2
    with CpuBackend().probing_threads(adjustable=False) as note:
        assert note is None and torch.get_num_threads() == 2


def test_only_the_timed_probes_change_threads_and_say_so(busy_machine, write_model):
    from tests.models import MLP

    path = str(write_model(MLP))
    traced = advisor.max_batch(path, device="cpu", memory="4MiB")
    timed = advisor.throughput(path, device="cpu", memory="4MiB", batch_sizes="2,4")
    assert not any("busy" in n for n in traced.to_dict()["notes"])
    assert any("busy" in n for n in timed.to_dict()["notes"])
    assert torch.get_num_threads() == 2


def test_a_job_the_load_average_has_not_caught_up_with_still_keeps_its_core(monkeypatch):
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (0.3, 0.3, 0.3))  # a job started seconds ago
    monkeypatch.setattr(cpu, "busy_cores", lambda seconds: 1.0)        # ... and keeping a core busy
    monkeypatch.setattr(cpu, "_busy", (-float("inf"), None))
    assert cpu.other_load() == 1.0
    monkeypatch.setattr(cpu, "busy_cores", lambda seconds: None)       # no /proc/stat: the load average
    monkeypatch.setattr(cpu, "_busy", (-float("inf"), None))
    assert cpu.other_load() == 0.3


def test_busy_cores_counts_other_processes_and_not_this_one():
    import os
    import subprocess
    import sys
    import threading
    import time

    from advisor.hardware.host import busy_cores

    baseline = busy_cores(0.3)
    if baseline is None or baseline > (os.cpu_count() or 1) - 1:
        pytest.skip("no /proc/stat, or no free core to see another process on")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        with_hog = busy_cores(0.3)
    finally:
        hog.kill()
        hog.wait()
    spinning = threading.Event()

    def spin():
        while not spinning.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        with_own_work = busy_cores(0.3)
    finally:
        spinning.set()
        spinner.join()
    assert with_hog > baseline + 0.5          # another process's core counts
    assert with_own_work < baseline + 0.5     # this process's own threads do not
