"""Shared pieces of the benchmark scripts (not part of bsadvisor, not tests).

- `MemoryBudget`: an enforced memory budget on the CPU. It is bsadvisor's own `LiveStorageTracker`
  (exact live tensor bytes, followed through a TorchDispatchMode) that raises the out-of-memory error
  the tools catch once the live bytes pass the budget, so every tool searches against the same limit.
- `load`: a model file through `advisor.spec.load_spec`, its data loaded before any budget is entered.
- `StepCounter`: counts the training steps a tool runs (real ones, and bsadvisor's fake-mode traces).
- `trains`: the follow-up check, N real training steps at a batch under the budget.
- machine and version facts, markdown tables, and the section of docs/benchmarks.md a script owns.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from advisor.memory.tracker import LiveStorageTracker
from advisor.spec import ModelSpec, load_spec
from advisor.step import map_tensors, tensors_in, train_step

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RESULTS = REPO / "benchmarks" / "results"
DOC = DOCS / "benchmarks.md"
# bsadvisor as a command, run by the interpreter that runs the benchmark (its venv's), not whichever PATH finds.
BSADVISOR = [sys.executable, "-m", "advisor"]

MODELS = {
    "mlp_unicode": REPO / "examples" / "mlp_unicode.py",
    "cnn_bytes": REPO / "benchmarks" / "models" / "cnn_bytes.py",
    "gpt_stdlib": REPO / "examples" / "gpt_stdlib.py",
}

# "CUDA" + "out of memory" is what Lightning's is_oom_error looks for, " out of memory." (with the
# full stop) what Accelerate's should_reduce_batch_size looks for, and torch.cuda.OutOfMemoryError
# (a RuntimeError, constructible on CPU-only builds) is what bsadvisor's is_out_of_memory accepts.
OOM_MESSAGE = ("CUDA out of memory. Tried to allocate {size} bytes (simulated: tracked bytes {live} "
               "over the budget of {budget} bytes)")


def argument_parser(doc: str, study: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every benchmark script shares; each script adds its own."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/ alone")
    ap.add_argument("--from-results", action="store_true",
                    help=f"run nothing: draw the table and plot again from benchmarks/results/{study}.json")
    return ap


def parse_arguments(ap: argparse.ArgumentParser) -> argparse.Namespace:
    args = ap.parse_args()
    set_threads(args.threads)
    warnings.filterwarnings("ignore")  # the peers' deprecation chatter would bury the tables
    return args


def set_threads(n: int) -> None:
    """One intra-op thread by default: the VM is shared, and two threads spinning against another
    process's load make a step 30x slower and the timings meaningless. Child processes inherit it."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


class MemoryBudget(LiveStorageTracker):
    """Live tracked bytes over `budget` raise torch.cuda.OutOfMemoryError, as a full GPU would."""

    def __init__(self, budget: int):
        super().__init__()
        self.budget = budget
        self.ooms = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = self.current_bytes
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.current_bytes > self.budget:
            live, grown = self.current_bytes, self.current_bytes - before
            self.ooms += 1
            del out  # the failed allocation is given back at once
            raise torch.cuda.OutOfMemoryError(OOM_MESSAGE.format(size=grown, live=live, budget=self.budget))
        return out


@contextlib.contextmanager
def budget_for(model: torch.nn.Module, budget: int):
    """Enter an enforced budget in which the model's parameters and buffers already count."""
    mode = MemoryBudget(budget)
    mode.track(model.parameters())
    mode.track(model.buffers())
    with mode:
        yield mode


def host_batch(spec: ModelSpec, size: int):
    """The model file's batch(size), made outside any budget: on a GPU the data loader's tensors are
    host memory, which the device's budget does not hold. `to_device` then makes the device copy."""
    from torch.utils._python_dispatch import _disable_current_modes
    with _disable_current_modes():
        return spec.make_batch(size)


def to_device(batch):
    """The host-to-device copy, which counts against the budget (a clone on the CPU)."""
    return map_tensors(lambda t: t.clone(), batch)


def device_batch(spec: ModelSpec, size: int):
    return to_device(host_batch(spec, size))


def shown(command: list[str]) -> str:
    """A bsadvisor command as a user types it (the console script, not the interpreter running the module)."""
    return " ".join(["bsadvisor", *command[len(BSADVISOR):]])


def load(path: str | Path) -> ModelSpec:
    """The model file as bsadvisor loads it; its data set is built now, outside any budget."""
    spec = load_spec(path)
    spec.make_batch(2)
    return spec


def validation_batch(spec: ModelSpec, size: int):
    """The model file's `validation_batch(size)`, an extra beside the contract, called as bsadvisor calls the
    file (inside its scope). Found through the file's own functions: the loaded module is not left in
    sys.modules."""
    with spec.scope():
        return spec.build_model.__globals__["validation_batch"](size)


class StepCounter:
    """Counts the training steps a tool runs. bsadvisor's are counted where its loss is called (real
    contract steps, and fake-mode traces, which allocate nothing); a peer's are counted by the harness
    as each step starts (`started`), so a step that runs out of memory before its loss still counts."""

    def __init__(self, spec: ModelSpec, count_real_in_loss: bool = False):
        self.real: list[int] = []
        self.fake = 0
        original = spec.loss

        def counted(model, batch):
            first = tensors_in(batch)[0]
            if _is_fake(first):
                self.fake += 1
            elif count_real_in_loss:
                self.real.append(first.shape[0])
            return original(model, batch)

        self.spec = dataclasses.replace(spec, loss=counted)

    def started(self, batch_size: int) -> None:
        self.real.append(batch_size)


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    return isinstance(t, FakeTensor)


def trains(spec: ModelSpec, batch_size: int, budget: int, steps: int = 3, seed: int = 0) -> dict:
    """`steps` real training steps (bsadvisor's step: zero_grad, loss, backward, step) at `batch_size`
    under the enforced budget, from a fresh model: {"ok", "peak_bytes", "failed_at_step"}."""
    torch.manual_seed(seed)
    model = spec.model()
    opt = spec.optimizer(model)
    failed_at = None
    with budget_for(model, budget) as mode:
        for step in range(1, steps + 1):
            try:
                batch = device_batch(spec, batch_size)
                train_step(model, opt, spec.loss, batch)
                del batch
            except torch.cuda.OutOfMemoryError:
                failed_at = step
                break
    peak = mode.peak_bytes
    del model, opt, mode
    gc.collect()
    return {"ok": failed_at is None, "peak_bytes": peak, "failed_at_step": failed_at}


@contextlib.contextmanager
def stopwatch():
    """`with stopwatch() as t: ...` then t() is the seconds it took."""
    start = time.perf_counter()
    end = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


# ---- facts about the run -------------------------------------------------------------------------

def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("bsadvisor", "lightning", "accelerate", "backpack-for-pytorch", "matplotlib", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    commit = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "advisor"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        if dirty:
            commit += " (with uncommitted changes to advisor/)"
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_total_bytes": mem, "threads": torch.get_num_threads(),
            "gpu": gpu(), "versions": versions, "commit": commit, "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def gpu() -> str | None:
    """The GPU a CUDA run used, named (None without one). Called after the measurements: it starts CUDA."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.1f} GiB, CUDA {torch.version.cuda}"


def machine_line(info: dict) -> str:
    v = info["versions"]
    vers = ", ".join(f"{k} {val}" for k, val in v.items())
    mem = f", {info['mem_total_bytes'] / 2**30:.0f} GiB RAM" if info.get("mem_total_bytes") else ""
    gpu_name = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return (f"{info['date']}; {info['cpu']}, nproc {info['nproc']}{mem}{gpu_name}, torch threads {info['threads']}; "
            f"{vers}; bsadvisor commit {info['commit']}")


def command_line() -> str:
    rel = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        rel = rel.relative_to(REPO)
    return " ".join(["python3", str(rel), *sys.argv[1:]])


# ---- output --------------------------------------------------------------------------------------

def table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        return str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def load_results(name: str) -> dict:
    """A study's saved figures, to draw its table and plot again without running it."""
    return json.loads((RESULTS / f"{name}.json").read_text())


def save_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def results_name(study: str, quick: bool) -> str:
    return study + ("_quick" if quick else "")


def publish(args, study: str, data: dict, markdown: str, plot, caption: str, conditions: str = "") -> None:
    """Print the table; unless --no-doc, draw the PNG and write this study's section of the doc."""
    png = DOCS / f"bench_{study}.png"
    if not args.no_doc:
        plot(data, png)
        run = f"Run: `{data['command']}` on {machine_line(data['machine'])}.{conditions}"
        write_section(study, "\n".join([run, "", markdown, "", f"![{caption}]({png.name})"]))
    print(markdown)


def write_section(name: str, markdown: str) -> None:
    """Replace this study's section of docs/benchmarks.md (between its two markers), or append it."""
    begin, end = f"<!-- {name}:begin (written by benchmarks/{name}.py) -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin.split(" (")[0]) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def plt():
    """matplotlib, headless: a benchmark-only dependency."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot
