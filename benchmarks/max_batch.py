"""Largest batch: bsadvisor `max-batch` against the tools people use to find it.

    python3 benchmarks/max_batch.py                 # all three models, the budgets below (a few minutes)
    python3 benchmarks/max_batch.py --quick         # tiny budgets, to check the script works (seconds)
    python3 benchmarks/max_batch.py --models mlp_unicode --budget mlp_unicode=32MiB

Every tool searches the same model file (imported with advisor.spec.load_spec) against the same
memory budget. On the CPU the budget is enforced by `common.MemoryBudget`: bsadvisor's own exact
live-tensor tracker, raising the CUDA out-of-memory error that each tool catches once the live bytes
pass the budget. The tools:

- bsadvisor: `advisor.max_batch(...)` in-process (the Python API), i.e. `bsadvisor max-batch MODEL --profile
  h100-sxm-80gb-cpu-kernels.json --memory BUDGET --margin 0`: a GPU's budget (the h100-sxm-80gb profile,
  marked `device_type: cpu` so that the step traced runs the CPU's kernels, as the other tools' steps do,
  with no CUDA terms added) capped at BUDGET, so that
  like the enforced budget it counts the batch as copied to the device, one compact tensor each (with
  `--device cpu` it would count the batch as `batch()` lays it out on the host, which is what CPU
  training holds). The CLI is also run once to show it gives the same batch, and its end-to-end wall
  time (interpreter start and imports included). It needs no budget enforcement: it traces steps
  under FakeTensorMode and never allocates the batch.
- Lightning `Tuner.scale_batch_size` (the BatchSizeFinder), `power` and `binsearch` modes, defaults
  (init_val 2, steps_per_trial 3, max_trials 25, max_val 8192) except `margin=0` for binsearch.
- Accelerate `find_executable_batch_size`, starting at 8192 (Lightning's max_val), 3 steps a trial.
- Ultralytics AutoBatch's fit, re-implemented from its description: peak memory at batches 1, 2, 4,
  8, 16, a first-degree np.polyfit, and the batch where the line meets the budget (fraction 1.0;
  AutoBatch's default fraction 0.6 and its 1024 cap are reported apart).

Every tool first runs once, untimed, on the MLP at a tiny budget (one-off costs paid by nobody).
Then the follow-up: 3 real training steps at each returned batch under the same enforced budget
(bsadvisor's step: zero_grad, loss, backward, optimizer step), and at bsadvisor's batch + 1, which
must run out of memory if bsadvisor's answer is the largest that trains.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import subprocess
import sys
import tempfile
import unittest.mock
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402
import advisor  # noqa: E402
from advisor.hardware.profiles import load as load_profile  # noqa: E402
from advisor.step import train_step  # noqa: E402
from advisor.units import parse_size  # noqa: E402

BUDGETS = {"mlp_unicode": "16MiB", "cnn_bytes": "128MiB", "gpt_stdlib": "768MiB"}
QUICK_BUDGETS = {"mlp_unicode": "2MiB", "cnn_bytes": "8MiB", "gpt_stdlib": "48MiB"}
PROFILE = "h100-sxm-80gb"  # any GPU's: --memory, far smaller, is the budget


def profile_doc() -> dict:
    """The profile marked as a device that runs the CPU's kernels: bsadvisor then traces the step the other
    tools run here (no GPU attention kernel, no foreach default, no CUDA workspace terms), with the batch
    held as one compact copy, as a device holds it."""
    return {**load_profile(PROFILE), "name": f"{PROFILE}-cpu-kernels", "device_type": "cpu"}
STEPS_PER_TRIAL = 3
TOP = 8192  # Lightning's default max_val; Accelerate starts here
TOOLS = ["bsadvisor", "lightning-power", "lightning-binsearch", "accelerate", "autobatch-fit"]


# ---- the tools -----------------------------------------------------------------------------------

def run_bsadvisor(spec, budget, seed):
    counter = common.StepCounter(spec, count_real_in_loss=True)
    with common.stopwatch() as took:
        batch = advisor.max_batch(counter.spec, device="cpu", memory=budget, margin=0.0, seed=seed,
                                  profile=profile_doc()).memory.max_batch
    return {"batch": batch, "seconds": took(), "counter": counter,
            "how": "fake-mode traces + 2 real contract steps"}


class _Batches(torch.utils.data.IterableDataset):
    """The model file's batch(size), endlessly: the smallest honest data source for Lightning."""

    def __init__(self, spec, size):
        self.spec, self.size = spec, size

    def __iter__(self):
        while True:
            yield common.host_batch(self.spec, self.size)


def _lightning_module(spec, counter):
    import lightning as L

    class Wrapped(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = spec.model()
            self.batch_size = 2  # what the BatchSizeFinder reads and writes

        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            counter.started(common.tensors_in(batch)[0].shape[0])
            return common.to_device(batch)  # the host-to-device copy, held by the loop for the step

        def training_step(self, batch, batch_idx):
            return spec.loss(self.net, batch)

        def configure_optimizers(self):
            return spec.optimizer(self.net)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(_Batches(spec, self.batch_size), batch_size=None)

    return Wrapped()


@contextlib.contextmanager
def _checkpoints_on_host():
    """The finder saves the model before searching and loads it back after. Lightning loads a
    checkpoint into host memory (map_location to the CPU) and copies it into the parameters, so on a
    GPU the loaded tensors are not device memory: torch.load runs outside the budget here."""
    from torch.utils._python_dispatch import _disable_current_modes

    load = torch.load

    def host_load(*args, **kwargs):
        with _disable_current_modes():
            return load(*args, **kwargs)

    with unittest.mock.patch("torch.load", host_load):
        yield


def run_lightning(spec, budget, seed, mode):
    import lightning as L
    from lightning.pytorch.tuner import Tuner

    counter = common.StepCounter(spec)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as root, common.stopwatch() as took:
        module = _lightning_module(counter.spec, counter)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=STEPS_PER_TRIAL, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=root)
        with common.budget_for(module, budget) as enforced, _checkpoints_on_host():
            batch = Tuner(trainer).scale_batch_size(module, mode=mode, steps_per_trial=STEPS_PER_TRIAL,
                                                    margin=0.0, max_val=TOP)
        seconds = took()
    return {"batch": batch, "seconds": seconds, "counter": counter, "ooms": enforced.ooms,
            "how": f"Tuner.scale_batch_size(mode={mode!r}, margin=0)"}


def run_accelerate(spec, budget, seed):
    from accelerate.utils import find_executable_batch_size

    counter = common.StepCounter(spec)
    torch.manual_seed(seed)
    with common.stopwatch() as took:
        model = counter.spec.model()
        opt = counter.spec.optimizer(model)
        with common.budget_for(model, budget) as enforced:
            @find_executable_batch_size(starting_batch_size=TOP)
            def trial(batch_size):
                for _ in range(STEPS_PER_TRIAL):
                    counter.started(batch_size)
                    batch = common.device_batch(spec, batch_size)
                    train_step(model, opt, counter.spec.loss, batch)
                    del batch
                return batch_size

            batch = trial()
        seconds = took()
    return {"batch": batch, "seconds": seconds, "counter": counter, "ooms": enforced.ooms,
            "how": f"find_executable_batch_size(starting_batch_size={TOP})"}


def run_autobatch_fit(spec, budget, seed, sizes=(1, 2, 4, 8, 16), fraction=1.0):
    """Ultralytics AutoBatch's method: profile small batches, fit memory = a + b*batch with
    np.polyfit(deg=1), solve for the batch at fraction * budget."""
    counter = common.StepCounter(spec)
    torch.manual_seed(seed)
    with common.stopwatch() as took:
        model = counter.spec.model()
        opt = counter.spec.optimizer(model)
        peaks = []
        with common.budget_for(model, budget) as tracker:
            counter.started(sizes[0])
            train_step(model, opt, counter.spec.loss, common.device_batch(spec, sizes[0]))  # optimizer state
            for size in sizes:
                counter.started(size)
                batch = common.device_batch(spec, size)
                tracker.reset_peak()
                train_step(model, opt, counter.spec.loss, batch)
                del batch
                peaks.append(tracker.peak_bytes)
        slope, intercept = np.polyfit(sizes, peaks, deg=1)
        batch = int((fraction * budget - intercept) / slope)
        seconds = took()
    default = int((0.6 * budget - intercept) / slope)
    return {"batch": batch, "seconds": seconds, "counter": counter,
            "ultralytics_default": default if 1 <= default <= 1024 else 16,
            "fit": {"sizes": list(sizes), "peaks": peaks, "slope": slope, "intercept": intercept},
            "how": f"np.polyfit over peaks at {list(sizes)}, fraction {fraction}"}


RUNNERS = {
    "bsadvisor": run_bsadvisor,
    "lightning-power": lambda s, b, seed: run_lightning(s, b, seed, "power"),
    "lightning-binsearch": lambda s, b, seed: run_lightning(s, b, seed, "binsearch"),
    "accelerate": run_accelerate,
    "autobatch-fit": run_autobatch_fit,
}


def run_cli(path: Path, budget: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        profile = Path(folder) / f"{profile_doc()['name']}.json"
        profile.write_text(json.dumps(profile_doc()))
        cmd = [*common.BSADVISOR, "max-batch", str(path.relative_to(common.REPO)), "--profile", str(profile), "--memory",
               str(budget), "--margin", "0", "--seed", str(seed), "--json"]
        with common.stopwatch() as took:
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=common.REPO)
    doc = json.loads(out.stdout)["memory"]
    return {"command": common.shown(cmd), "max_batch": doc["max_batch"], "wall_seconds": took(),
            "search_seconds": doc["seconds"], "traced": len(doc["traced"])}


# ---- the study -----------------------------------------------------------------------------------

def study(name: str, path: Path, budget: int, seed: int, tools: list[str]) -> dict:
    spec = common.load(path)
    print(f"\n== {name}: budget {common.mib(budget)} ({budget} bytes)", file=sys.stderr)
    results = {}
    for tool in tools:
        gc.collect()
        r = RUNNERS[tool](spec, budget, seed)
        counter = r.pop("counter")
        r.update(real_steps=len(counter.real), fake_steps=counter.fake,
                 largest_real_batch=max(counter.real, default=0))
        print(f"  {tool:20s} batch {r['batch']:>6}  {r['seconds']:7.2f} s  "
              f"{r['real_steps']} real + {r['fake_steps']} traced steps", file=sys.stderr)
        results[tool] = r
    follow = {}
    checks = sorted({r["batch"] for r in results.values()} | {results["bsadvisor"]["batch"] + 1}
                    if "bsadvisor" in results else {r["batch"] for r in results.values()})
    for size in checks:
        with common.stopwatch() as took:
            follow[size] = common.trains(spec, size, budget, steps=STEPS_PER_TRIAL, seed=seed)
        follow[size]["seconds"] = took()
        print(f"  follow-up at {size:>6}: {'trains' if follow[size]['ok'] else 'OUT OF MEMORY'} "
              f"(peak {common.mib(follow[size]['peak_bytes'])})", file=sys.stderr)
    largest = None
    if "bsadvisor" in results:
        b = results["bsadvisor"]["batch"]
        if follow[b]["ok"] and not follow[b + 1]["ok"]:
            largest = b
        else:
            largest = _largest_that_trains(spec, budget, seed, follow)
    cli = run_cli(path, budget, seed) if "bsadvisor" in results else None
    return {"model": name, "path": str(path.relative_to(common.REPO)), "budget_bytes": budget, "tools": results,
            "follow_up": {str(k): v for k, v in follow.items()}, "largest_that_trains": largest, "cli": cli}


def warm_up(tools: list[str], seed: int) -> None:
    """One untimed pass of every tool on the MLP at a tiny budget, so that one-off costs (lazy imports,
    FakeTensorMode's and Lightning's first-call set-up) are paid by nobody's timed search."""
    spec = common.load(common.MODELS["mlp_unicode"])
    for tool in tools:
        RUNNERS[tool](spec, parse_size(QUICK_BUDGETS["mlp_unicode"]), seed)
    gc.collect()


def _largest_that_trains(spec, budget, seed, known: dict) -> int:
    """Bisection with real steps, used only when bsadvisor's answer is not the boundary."""
    lo = max((b for b, r in known.items() if r["ok"]), default=0)
    hi = min((b for b, r in known.items() if not r["ok"]), default=None)
    if hi is None:
        hi = max(lo, 1) * 2
        while common.trains(spec, hi, budget, seed=seed)["ok"]:
            lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if common.trains(spec, mid, budget, seed=seed)["ok"]:
            lo = mid
        else:
            hi = mid
    return lo


def report(data: dict) -> str:
    rows = []
    for s in data["studies"]:
        follow, largest = s["follow_up"], s["largest_that_trains"]
        for tool, r in s["tools"].items():
            f = follow[str(r["batch"])]
            trains = "yes" if f["ok"] else f"**OOM** (step {f['failed_at_step']})"
            share = f"{r['batch'] / largest:.0%}" if largest else "-"
            steps = f"{r['real_steps']}" + (f" + {r['fake_steps']} traced" if r["fake_steps"] else "")
            extra = f" (Ultralytics defaults: {r['ultralytics_default']})" if "ultralytics_default" in r else ""
            rows.append([s["model"], common.mib(s["budget_bytes"]), tool, f"{r['batch']}{extra}", trains, share,
                         f"{r['seconds']:.2f}", steps, r["largest_real_batch"] or "-"])
    headers = ["model", "budget", "tool", "batch returned", "trains 3 steps at it?", "of largest that trains",
               "search wall s", "trial steps (real + traced)", "largest real batch run"]
    lines = [common.table(headers, rows), ""]
    for s in data["studies"]:
        b = s["tools"].get("bsadvisor", {}).get("batch")
        if b is None:
            continue
        nxt = s["follow_up"][str(b + 1)]
        lines.append(f"- **{s['model']}**: largest batch that trains under the enforced budget: "
                     f"{s['largest_that_trains']} (bsadvisor's {b} trains, {b + 1} "
                     f"{'trains' if nxt['ok'] else 'runs out of memory'}). CLI `{s['cli']['command']}` "
                     f"returned {s['cli']['max_batch']} in {s['cli']['wall_seconds']:.2f} s wall, process start "
                     f"and imports included ({s['cli']['search_seconds']:.2f} s in the search itself).")
    return "\n".join(lines)


def plot(data: dict, out: Path) -> None:
    plt = common.plt()
    studies = data["studies"]
    fig, axes = plt.subplots(2, len(studies), figsize=(4.2 * len(studies), 7), squeeze=False)
    colors = {"bsadvisor": "#1b9e77", "lightning-power": "#7570b3", "lightning-binsearch": "#a6a1d8",
              "accelerate": "#d95f02", "autobatch-fit": "#e7298a"}
    for col, s in enumerate(studies):
        tools = list(s["tools"])
        batches = [s["tools"][t]["batch"] for t in tools]
        seconds = [s["tools"][t]["seconds"] for t in tools]
        ok = [s["follow_up"][str(b)]["ok"] for b in batches]
        ax = axes[0][col]
        bars = ax.bar(range(len(tools)), batches, color=[colors.get(t, "grey") for t in tools])
        for bar, good in zip(bars, ok):
            if not good:
                bar.set_hatch("//")
                bar.set_edgecolor("red")
        if s["largest_that_trains"]:
            ax.axhline(s["largest_that_trains"], color="black", lw=1, ls="--", label="largest that trains")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{s['model']} ({common.mib(s['budget_bytes'])})", fontsize=9)
        ax.set_ylabel("batch returned (hatched: OOM in follow-up)", fontsize=7)
        ax.set_xticks(range(len(tools)), tools, rotation=35, ha="right", fontsize=7)
        ax = axes[1][col]
        ax.bar(range(len(tools)), seconds, color=[colors.get(t, "grey") for t in tools])
        ax.set_ylabel("search wall time, s", fontsize=7)
        ax.set_xticks(range(len(tools)), tools, rotation=35, ha="right", fontsize=7)
    fig.suptitle("Largest batch under the same enforced memory budget (CPU)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = common.argument_parser(__doc__, "max_batch", "tiny budgets: checks the script, figures meaningless")
    ap.add_argument("--models", default=",".join(BUDGETS), help="comma-separated: " + ", ".join(BUDGETS))
    ap.add_argument("--budget", action="append", default=[], help="MODEL=SIZE, overrides the default budget")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed first pass of every tool")
    args = common.parse_arguments(ap)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    budgets = dict(QUICK_BUDGETS if args.quick else BUDGETS)
    for item in args.budget:
        model, size = item.split("=", 1)
        budgets[model] = size
    tools = args.tools.split(",")
    if args.from_results:
        data = common.load_results(common.results_name("max_batch", args.quick))
    else:
        if not args.no_warmup:
            warm_up(tools, args.seed)
        studies = [study(name, common.MODELS[name], parse_size(budgets[name]), args.seed, tools)
                   for name in args.models.split(",")]
        data = {"machine": common.machine(), "command": common.command_line(), "studies": studies}
        common.save_results(common.results_name("max_batch", args.quick), data)
    common.publish(args, "max_batch", data, report(data), plot, "largest batch per tool")


if __name__ == "__main__":
    main()
