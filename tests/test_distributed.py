"""Several devices: the planning maths, and real 2-process Gloo jobs launched as the user would."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advisor.advice import (Plan, StepTimeFit, best_plan, cluster_plan, goodput, make_plan, plan_for_batch,
                            plan_seconds, ring_allreduce_seconds)
from advisor.cli import app
from tests.models import LINEAR_REGRESSION, LINEAR_REGRESSION_B_SIMPLE, MLP

REPO = Path(__file__).resolve().parent.parent
MLP_UNICODE = REPO / "examples" / "mlp_unicode.py"


def advisor(*args, timeout=120):
    """`python -m advisor ARGS` in a fresh process: (returncode, stdout, stderr, seconds)."""
    started = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "advisor", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


# --- pure maths ----------------------------------------------------------------------------------

def test_ring_allreduce_against_hand_numbers():
    # 1 GB over 4 GPUs at 100 GB/s and 5 us: 2*3/4 * 1e9/1e11 = 0.015 s, plus 2*3*5 us = 30 us.
    assert ring_allreduce_seconds(1e9, 4, 100.0, 5.0) == pytest.approx(0.015 + 30e-6)
    # 2 GPUs, 400 MB at 25 GB/s, 10 us: 2*1/2 * 0.016 s + 2*10 us.
    assert ring_allreduce_seconds(4e8, 2, 25.0, 10.0) == pytest.approx(0.016 + 20e-6)
    assert ring_allreduce_seconds(1e9, 1, 100.0, 5.0) == 0.0  # one device: nothing to reduce
    # The bandwidth term tends to 2 * bytes / bandwidth as the ring grows.
    assert ring_allreduce_seconds(1e9, 10_000, 100.0, 0.0) == pytest.approx(0.02, rel=1e-3)


def test_the_batch_of_a_plan_is_global():
    assert Plan(8, 2, 1.0, devices=4).batch_size == 64
    fit = StepTimeFit(0.01, 0.001)
    plan = plan_for_batch(fit, 0.0, 100, max_micro=10, devices=4)  # 3 steps of 9 on 4 devices reach 100
    assert (plan.micro_batch, plan.accumulation_steps, plan.devices, plan.batch_size) == (9, 3, 4, 108)
    assert plan.step_seconds == pytest.approx(plan_seconds(fit, 0.0, 9, 3))


def test_best_plan_on_several_devices_is_the_goodput_optimum():
    fit, phi, base = StepTimeFit(0.02, 0.0001), 400.0, 32
    for devices in (1, 2, 8):
        plan = best_plan(fit, 0.0, phi, base, max_micro=10_000, devices=devices)
        brute = max((make_plan(fit, 0.0, m, 1, devices) for m in range(1, 2000)),
                    key=lambda p: goodput(p, phi, base))
        assert goodput(plan, phi, base) == pytest.approx(goodput(brute, phi, base), rel=1e-9)
        assert plan.batch_size == pytest.approx(math.sqrt(phi * fit.alpha * devices / fit.beta), rel=0.02)


def test_cluster_plan_pays_the_allreduce_once_per_update_and_says_it_predicts():
    fit = StepTimeFit(0.01, 0.0001)
    plan = cluster_plan(fit, 0.002, 500.0, 32, 0.1, "sgd", 256, gpus=8, grad_bytes=4 * 10**8,
                        bandwidth_gb_per_s=300.0, latency_us=3.0, profile="a100-sxm-80gb",
                        measured_on="measured on CPU")
    allreduce = ring_allreduce_seconds(4e8, 8, 300.0, 3.0)
    r = plan.recommendation.plan
    assert plan.allreduce_seconds == pytest.approx(allreduce)
    assert r.devices == 8 and r.batch_size == 8 * r.micro_batch * r.accumulation_steps
    assert r.step_seconds == pytest.approx(plan_seconds(fit, 0.002, r.micro_batch, r.accumulation_steps) + allreduce)
    assert plan.method.startswith("predicted: ") and "no overlap" in plan.method


def test_plan_gpus_predicts_from_the_profile(write_model):
    path = write_model(MLP)
    result = CliRunner().invoke(app, ["recommend", str(path), "--device", "cpu", "--max-step-seconds", "0.02",
                                      "--plan-gpus", "8", "--profile", "a100-sxm-80gb", "--noise-budget", "20steps",
                                      "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert plan["gpus"] == 8 and plan["global_batch"] == 8 * plan["per_device_micro_batch"] * plan["accumulation_steps"]
    assert plan["allreduce_seconds"] > 0 and plan["method"].startswith("predicted: ")


def test_plan_gpus_without_a_profile_is_bad_input(write_model):
    result = CliRunner().invoke(app, ["recommend", str(write_model(MLP)), "--plan-gpus", "8"])
    assert result.exit_code == 2 and "--plan-gpus needs --profile" in result.output


# --- real 2-process Gloo jobs ----------------------------------------------------------------------

def test_two_rank_noise_matches_the_closed_form_and_only_rank_0_prints(write_model):
    path = write_model(LINEAR_REGRESSION)
    code, out, err, _ = advisor("noise", path, "--device", "cpu", "--batch-size", "64", "--snapshots", "32",
                                "--noise-budget", "1steps", "--nproc-per-node", "2", "--json")
    assert code == 0, err
    noise = json.loads(out)["noise"]  # stdout is one JSON document: rank 1 printed nothing
    assert noise["b_simple"] == pytest.approx(LINEAR_REGRESSION_B_SIMPLE, rel=0.15)
    assert "on each of 2 ranks" in noise["method"]
    assert err.count("note: no --base-batch") <= 1  # notes once, from rank 0


def test_two_rank_recommend_agrees_with_one_process_on_the_noise():
    """The done-when: a 2-process recommend on the CPU, its noise inside the one-process interval
    and the one-process estimate inside its interval (the two are independent samples)."""
    code, out, err, _ = advisor("recommend", MLP_UNICODE, "--device", "cpu", "--nproc-per-node", "2",
                                "--max-step-seconds", "0.05", "--noise-budget", "40steps", "--json")
    assert code == 0, err
    doc = json.loads(out)
    rec = doc["recommendation"]
    assert rec["devices"] == 2 and rec["per_device_micro_batch"] == rec["micro_batch"]
    assert rec["global_batch"] == rec["batch_size"] == 2 * rec["micro_batch"] * rec["accumulation_steps"]
    assert "DistributedDataParallel" in doc["throughput"]["method"]
    assert "gradient buckets" in doc["memory"]["method"]

    code, single_out, err, _ = advisor("noise", MLP_UNICODE, "--device", "cpu", "--noise-budget", "40steps", "--json")
    assert code == 0, err
    single, dp = json.loads(single_out)["noise"], doc["noise"]
    assert dp["batch_size"] == single["batch_size"] and dp["micro_batch"] == single["micro_batch"]
    assert single["ci95"][0] <= dp["b_simple"] <= single["ci95"][1]
    assert dp["ci95"][0] <= single["b_simple"] <= dp["ci95"][1]


KILLED = MLP + """
import os, signal
_real_batch, _calls = batch, [0]

def batch(n):
    _calls[0] += 1
    if os.environ.get("RANK") == "1" and _calls[0] == 15:  # mid-probe, on one rank only
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_batch(n)
"""


def _processes_running(path: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(path) in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def test_a_killed_rank_ends_the_job_with_exit_4_and_leaves_no_process(write_model):
    path = write_model(KILLED, name="killed_rank_model.py")
    code, out, err, seconds = advisor("noise", path, "--device", "cpu", "--batch-size", "64", "--snapshots", "16",
                                      "--noise-budget", "20steps", "--nproc-per-node", "2", "--collective-timeout", "30", "--json")
    assert code == 4 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bsadvisor: error: rank 1 was killed by SIGKILL"), err
    assert seconds < 30 + 30  # the collective timeout, and the start-up of two ranks
    time.sleep(0.5)
    assert _processes_running(path) == []


def test_nproc_per_node_must_be_positive(write_model):
    code, _, err, _ = advisor("noise", write_model(MLP), "--device", "cpu", "--nproc-per-node", "0")
    assert code == 2 and "--nproc-per-node must be a positive integer" in err


def test_a_rank_that_leaves_its_error_ends_without_the_interpreters_teardown(write_model, tmp_path):
    """With a peer dead mid-collective, a rank's teardown can abort in C++ ("terminate called without an
    active exception" on the job's stderr, once in a CI run); an atexit handler stands in for it here."""
    path = write_model("import atexit, sys\natexit.register(lambda: print('teardown ran', file=sys.stderr))\n"
                       "raise RuntimeError('boom')\n", name="failing_rank_model.py")
    from advisor.distributed import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "BSADVISOR_ERROR_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "advisor", "noise", str(path), "--device", "cpu"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=REPO)
    left = json.loads((tmp_path / "rank0.json").read_text())
    assert done.returncode == left["exit_code"] != 0 and "boom" in left["message"]
    assert "teardown ran" not in done.stderr and "bsadvisor: error" not in done.stderr, done.stderr
