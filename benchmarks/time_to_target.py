"""Time to target: does following `bsadvisor recommend` train faster than the user's own setting, and how
close does it come to the best of a tuned grid?

    python3 benchmarks/time_to_target.py                 # four tasks (about 30 minutes on 2 cores)
    python3 benchmarks/time_to_target.py --tasks lstm_bytes --quick
    python3 benchmarks/time_to_target.py --tasks gpt_stdlib --only-advice   # rerun (a), keep the grid and base

For each task (a model file with `validation_batch(n)`), every setting trains from the same seeded
initialisation until the validation loss on a fixed held-out set reaches the task's target:

- (a) bsadvisor: `bsadvisor recommend FILE --device cpu --json` run as a user runs it; its batch
  (micro-batch x accumulation), learning rate, warm-up and beta2; its wall time is the probe's cost.
- (a') bsadvisor's batch-size schedule, where it gives one (batch and rate change at its steps).
- (b) Lightning: the BatchSizeFinder's largest batch (power mode) under the memory budget of
  max_batch.py, learning rate scaled linearly from the file's (lr0 * B / B0), no warm-up.
- (c) the file's own setting: BASE_BATCH_SIZE and its optimizer's rate.
- the tuned grid: batches B0 x {1/2, 1, 2, 4, 8} x rates lr0 x {1/2, 1, 2, 4, 8}; its best is the one
  with the least time.

One run's steps to the target move by a tenth or more with the seed (one setting of the GPT took 740 to
1138 steps as its rate moved within a flat valley), so the verdict is a second table: (a), (c) and the
grid's three fastest cells from seed 0 train again from seeds 1 and 2, and their mean times compare.

Time is counted, not clocked: steps to target at each batch times that batch's step time, measured in
this process as the minimum over repeats of this thread's CPU time (one torch thread; data loading and
evaluation excluded): another process's load moves it far less than wall time (it still grows with
shared caches and cores), and every figure of a run shares one clock: `--only-advice` keeps the saved
settings' steps to the target and counts them again on the rerun's own clock. A run stops at the target, at 4x the base setting's examples, or when its
loss is no longer finite ("diverged").
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402
from advisor.step import split_batch  # noqa: E402
from advisor.units import parse_size  # noqa: E402

TASKS = {  # file, target validation loss, memory budget for Lightning (max_batch.py's), eval every N examples
    "mlp_unicode": {"file": common.REPO / "examples" / "mlp_unicode.py", "target": 0.20, "budget": "16MiB",
                    "eval_examples": 4096},
    "gpt_stdlib": {"file": common.REPO / "examples" / "gpt_stdlib.py", "target": 2.20, "budget": "768MiB",
                   "eval_examples": 1024},
    "cnn_bytes": {"file": common.REPO / "benchmarks" / "models" / "cnn_bytes.py", "target": 2.90,
                  "budget": "128MiB", "eval_examples": 4096},
    "lstm_bytes": {"file": common.REPO / "benchmarks" / "models" / "lstm_bytes.py", "target": 2.25,
                   "budget": "128MiB", "eval_examples": 1024},
}
GRID_BATCHES = (0.5, 1, 2, 4, 8)
GRID_RATES = (0.5, 1, 2, 4, 8)
VAL_EXAMPLES = 2048
CAP = 4.0  # a run stops at this many times the base setting's examples to target
SEEDS = (1, 2)  # the deciding settings train again from these seeds (initialisation and data order)
TOP = 3         # the grid's cells that seed 0 found fastest, run again from SEEDS


def recommend(path: Path, extra: list[str]) -> dict:
    cmd = [*common.BSADVISOR, "recommend", str(path.relative_to(common.REPO)), "--device", "cpu", "--json", *extra]
    with common.stopwatch() as took:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=common.REPO)
    doc = json.loads(out.stdout)
    r = doc["recommendation"]
    return {"command": common.shown(cmd), "seconds": took(), "batch": r["batch_size"], "micro_batch": r["micro_batch"],
            "accumulation_steps": r["accumulation_steps"], "lr": r["learning_rate"], "warmup_steps": r["warmup_steps"],
            "beta2": r.get("beta2"), "rule_lr": r.get("rule_learning_rate"), "lr_source": r.get("lr_source"),
            "b_simple": doc["noise"]["b_simple"], "series": [(p["step"], p["b_simple"]) for p in doc["noise"]["series"]],
            "plateau": r.get("plateau"), "schedule": r.get("schedule") or [], "probe_seconds": doc["seconds"],
            "batch_source": r.get("batch_source"), "sweep_batches": _sweep_batches(r.get("lr_sweep"))}


def _sweep_batches(sweep: dict | None) -> list[dict]:
    """Each batch the sweep tried: its best rate and its scores both ways (the runs themselves left out)."""
    if not sweep:
        return []
    return [{k: b[k] for k in ("batch", "steps", "learning_rate", "loss", "late_loss")} | {
        "start_loss": sweep["start_loss"], "hold_loss": sweep["hold_loss"]} for b in sweep.get("batches", [])]


def lightning_batch(spec, budget: int, seed: int) -> dict:
    import max_batch
    r = max_batch.run_lightning(spec, budget, seed, "power")
    return {"batch": r["batch"], "seconds": r["seconds"]}


class Clock:
    """Step time per (micro-batch, accumulation), measured once each: the minimum by this thread's CPU time
    (the script runs one torch thread, so every operator runs on it: another process on the machine moves
    no figure) over rounds of 4 steps after an untimed one, at least 3 rounds and until TIMED_SECONDS of
    steps were timed: a millisecond step timed 12 times came out at 1.99 ms for batch 128 of the MLP and
    1.77 ms for 256."""

    TIMED_SECONDS = 0.3

    def __init__(self, spec):
        self.spec, self.cache = spec, {}

    def seconds(self, micro: int, accumulation: int) -> float:
        key = (micro, accumulation)
        if key not in self.cache:
            torch.manual_seed(0)
            model = self.spec.model()
            opt = self.spec.optimizer(model)
            batch = self.spec.batch(micro * accumulation)
            times: list[float] = []
            while len(times) < 12 or (sum(times) < self.TIMED_SECONDS and len(times) < 400):
                for i in range(5):
                    began = time.thread_time()
                    _step(self.spec, model, opt, batch, micro, accumulation)
                    if i:
                        times.append(time.thread_time() - began)
            self.cache[key] = min(times)
        return self.cache[key]


def _step(spec, model, opt, batch, micro, accumulation) -> float:
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for chunk in split_batch(batch, micro):
        loss = spec.loss(model, chunk) / accumulation
        loss.backward()
        total += loss.item()
    opt.step()
    return total


def phases(setting: dict) -> list[dict]:
    """[{from_step, micro, accumulation, lr}] — one phase for a fixed setting, several for a schedule."""
    if setting.get("schedule"):
        return [{"from_step": e["from_step"], "micro": e["micro_batch"], "accumulation": e["accumulation_steps"],
                 "lr": e["learning_rate"]} for e in setting["schedule"]]
    return [{"from_step": 0, "micro": setting["micro_batch"], "accumulation": setting["accumulation_steps"],
             "lr": setting["lr"]}]


def train(spec, setting: dict, target: float, val, eval_examples: int, max_examples: float, clock: Clock,
          seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = spec.model()
    opt = spec.optimizer(model)
    base_lr = opt.param_groups[0]["lr"]
    scales = [g["lr"] / base_lr for g in opt.param_groups]
    if setting.get("beta2") is not None:
        for g in opt.param_groups:
            g["betas"] = (g["betas"][0], setting["beta2"])
    plan = phases(setting)
    step, examples, seconds, next_eval, status = 0, 0, 0.0, eval_examples, "cap"
    warmup = setting.get("warmup_steps") or 0
    curve = [(0, 0.0, _val_loss(spec, model, val))]
    while examples < max_examples:
        phase = [p for p in plan if p["from_step"] <= step][-1]
        lr = phase["lr"] if not warmup or step >= warmup else base_lr + (phase["lr"] - base_lr) * (step + 1) / warmup
        for g, s in zip(opt.param_groups, scales):
            g["lr"] = lr * s
        size = phase["micro"] * phase["accumulation"]
        loss = _step(spec, model, opt, spec.batch(size), phase["micro"], phase["accumulation"])
        step, examples = step + 1, examples + size
        seconds += clock.seconds(phase["micro"], phase["accumulation"])
        if not math.isfinite(loss):
            status = "diverged"
            break
        if examples >= next_eval:
            next_eval += eval_examples
            v = _val_loss(spec, model, val)
            curve.append((step, seconds, v))
            if not math.isfinite(v):
                status = "diverged"
                break
            if v <= target:
                status = "reached"
                break
    return {"status": status, "steps": step, "examples": examples, "seconds": seconds,
            "best_val": min(c[2] for c in curve), "curve": curve}


@torch.no_grad()
def _val_loss(spec, model, val) -> float:
    return sum(spec.loss(model, chunk).item() * len(chunk[0]) for chunk in split_batch(val, 512)) / len(val[0])


def rerun_advice(name: str, cfg: dict, saved: dict) -> dict:
    """bsadvisor's settings again (after a change to bsadvisor), against the saved base, Lightning and grid:
    those do not depend on bsadvisor's code."""
    spec = common.load(cfg["file"])
    torch.manual_seed(1234)
    val = common.validation_batch(spec, VAL_EXAMPLES)
    clock, target = Clock(spec), saved["target"]
    settings = {k: _recounted(s, clock) for k, s in saved["settings"].items() if not k.startswith("(a")}
    rec = recommend(cfg["file"], ["--target-loss", str(target)])
    advice = _advice_settings(rec)
    cap = CAP * settings["(c) base"]["run"]["examples"]
    for label, s in advice.items():
        s["run"] = train(spec, s, target, val, cfg["eval_examples"], cap, clock)
        print(f"  {label}: {s['run']['status']} {s['run']['steps']} steps {s['run']['seconds']:.2f} s", file=sys.stderr)
    settings = {**advice, **settings}
    repeat(spec, settings, deciding(settings), target, val, cfg["eval_examples"], cap, clock)
    return {**saved, "recommend": rec, "settings": settings,
            "step_seconds": {f"{m}x{a}": t for (m, a), t in clock.cache.items()},
            "best_grid": fastest_grid(settings)[0]}


def fastest_grid(settings: dict) -> list[str]:
    """The grid's cells that reached the target, fastest first (by seed 0's run)."""
    return sorted((k for k, s in settings.items() if k.startswith("grid") and s["run"]["status"] == "reached"),
                  key=lambda k: settings[k]["run"]["seconds"])


def deciding(settings: dict) -> list[str]:
    """The settings the verdict compares: bsadvisor's, the base and the grid's TOP fastest cells from seed 0."""
    return ["(a) bsadvisor", "(c) base"] + fastest_grid(settings)[:TOP]


def repeat(spec, settings: dict, labels: list[str], target, val, eval_examples: int, cap: float, clock: Clock) -> None:
    """Each setting of `labels` trained again from each of SEEDS (kept where a saved run already has them):
    one run's steps to the target move by a tenth or more with the seed, which decides close calls."""
    for label in labels:
        s = settings[label]
        if len(s.get("repeats", ())) == len(SEEDS):
            continue
        s["repeats"] = [train(spec, s, target, val, eval_examples, cap, clock, seed=k) for k in SEEDS]
        print(f"  {label} from seeds {SEEDS}: {[r['steps'] for r in s['repeats']]} steps", file=sys.stderr)


def mean_seconds(setting: dict) -> float | None:
    """Counted seconds to the target over seed 0 and SEEDS; None if a run did not reach it."""
    runs = [setting["run"], *setting.get("repeats", ())]
    if any(r["status"] != "reached" for r in runs):
        return None
    return sum(r["seconds"] for r in runs) / len(runs)


def _recounted(setting: dict, clock: Clock) -> dict:
    """A saved fixed setting's run counted again on this run's clock: its steps are kept, their time is
    steps x the batch's step time measured now, so every setting of a rerun is counted on one clock (thread
    CPU time still moves with the machine: shared caches and cores; a saved figure beside a new one moved
    the ratio by up to 15%)."""
    per_step = clock.seconds(setting["micro_batch"], setting["accumulation_steps"])
    recount = lambda run: {**run, "seconds": run["steps"] * per_step,  # noqa: E731
                           "curve": [(step, step * per_step, v) for step, _, v in run["curve"]]}
    return {**setting, "run": recount(setting["run"]), "repeats": [recount(r) for r in setting.get("repeats", ())]}


def _advice_settings(rec: dict) -> dict:
    advice = {"(a) bsadvisor": {"micro_batch": rec["micro_batch"], "accumulation_steps": rec["accumulation_steps"],
                                "lr": rec["lr"], "warmup_steps": rec["warmup_steps"], "beta2": rec["beta2"]}}
    if rec["schedule"]:
        advice["(a') bsadvisor schedule"] = {"schedule": rec["schedule"], "micro_batch": rec["micro_batch"],
                                             "accumulation_steps": rec["accumulation_steps"], "lr": rec["lr"],
                                             "warmup_steps": 0}
    return advice


def run_task(name: str, cfg: dict, quick: bool) -> dict:
    spec = common.load(cfg["file"])
    torch.manual_seed(1234)
    val = common.validation_batch(spec, VAL_EXAMPLES // (4 if quick else 1))
    base_batch = spec.base_batch_size
    base_lr = spec.optimizer(spec.model()).param_groups[0]["lr"]
    clock = Clock(spec)
    target = cfg["target"] + (0.3 if quick else 0.0)
    fixed = lambda b, lr: {"micro_batch": b, "accumulation_steps": 1, "lr": lr, "warmup_steps": 0}  # noqa: E731
    base = train(spec, fixed(base_batch, base_lr), target, val, cfg["eval_examples"], math.inf, clock)
    if base["status"] != "reached":
        raise SystemExit(f"{name}: the base setting did not reach {target}: pick another target")
    cap = CAP * base["examples"]
    print(f"{name}: base {base_batch} @ {base_lr:g}: {base['steps']} steps, {base['seconds']:.2f} s", file=sys.stderr)
    rec = recommend(cfg["file"], ["--target-loss", str(target)] + (["--noise-budget", "3s"] if quick else []))
    print(f"{name}: recommend -> {rec['batch']} @ {rec['lr']:.4g} (rule {rec['rule_lr']:.4g}), warm-up "
          f"{rec['warmup_steps']}, beta2 {rec['beta2']}, {rec['seconds']:.1f} s", file=sys.stderr)
    settings = {"(c) base": {**fixed(base_batch, base_lr), "run": base}, **_advice_settings(rec)}
    if not quick:
        lit = lightning_batch(spec, parse_size(cfg["budget"]), seed=0)
        settings["(b) Lightning + linear lr"] = {**fixed(lit["batch"], base_lr * lit["batch"] / base_batch),
                                                 "tool_seconds": lit["seconds"]}
    for b in GRID_BATCHES if not quick else (1, 2):
        for f in GRID_RATES if not quick else (1, 2):
            batch = max(2, round(base_batch * b))
            settings[f"grid {batch} @ {f:g}x"] = fixed(batch, base_lr * f)
    for label, s in settings.items():
        if "run" not in s:
            s["run"] = train(spec, s, target, val, cfg["eval_examples"], cap, clock)
        r = s["run"]
        print(f"  {label}: {r['status']} {r['steps']} steps {r['examples']} examples {r['seconds']:.2f} s",
              file=sys.stderr)
    best = fastest_grid(settings)[0]
    repeat(spec, settings, deciding(settings), target, val, cfg["eval_examples"], cap, clock)
    print(f"{name}: best of grid {best}, {settings[best]['run']['seconds']:.2f} s", file=sys.stderr)
    return {"target": target, "base_batch": base_batch, "base_lr": base_lr, "recommend": rec, "settings": settings,
            "best_grid": best, "step_seconds": {f"{m}x{a}": t for (m, a), t in clock.cache.items()}}


def over_seeds(data: dict) -> str:
    """The verdict's table: bsadvisor, the base and the grid's TOP cells, each from seed 0 and SEEDS; the best
    of the grid is the least mean among those cells (picked by seed 0, so the grid keeps its luck there)."""
    rows = []
    for name, t in data["tasks"].items():
        s = t["settings"]
        labels = [k for k in deciding(s) if s[k].get("repeats")]
        if "(a) bsadvisor" not in labels or "(c) base" not in labels:
            continue
        means = {k: mean_seconds(s[k]) for k in labels}
        grid = [k for k in labels if k.startswith("grid") and means[k] is not None]
        best = min(grid, key=lambda k: means[k]) if grid else None
        for k in labels:
            runs = [s[k]["run"], *s[k]["repeats"]]
            m, base = means[k], means["(c) base"]
            rows.append([name, f"best of grid ({k[5:]})" if k == best else k if not k.startswith("grid") else k[5:],
                         f"{s[k]['micro_batch'] * s[k]['accumulation_steps']}", f"{s[k]['lr']:.3g}",
                         " / ".join(str(r["steps"]) if r["status"] == "reached" else r["status"] for r in runs),
                         f"{m:.2f}" if m is not None else "-",
                         f"{m / base:.2f}x" if m is not None and base else "-",
                         f"{m / means[best]:.2f}x" if m is not None and best else "-"])
    if not rows:
        return ""
    headers = ["task", "setting", "batch", "lr", f"steps (seeds 0, {', '.join(map(str, SEEDS))})",
               "mean train s (counted)", "vs base", "vs best of grid"]
    return (f"Over seeds (the verdict): bsadvisor's setting, the base and the grid's {TOP} fastest cells from seed "
            f"0 trained again from seeds {', '.join(map(str, SEEDS))} (initialisation and data order); means of "
            "counted seconds.\n\n" + common.table(headers, rows))


def critical_batch(task: dict) -> dict | None:
    """McCandlish's S(B) = S_min (1 + B_crit / B) fitted to the grid: at each batch the fewest steps to the
    target over the rates tried, then least squares of S on 1/B (S = S_min + S_min B_crit / B)."""
    fewest = {}
    for label, s in task["settings"].items():
        if label.startswith("grid") and s["run"]["status"] == "reached":
            b = s["micro_batch"] * s["accumulation_steps"]
            fewest[b] = min(fewest.get(b, math.inf), s["run"]["steps"])
    if len(fewest) < 3:
        return None
    xs, ys = [1 / b for b in fewest], list(fewest.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    s_min = my - slope * mx
    return {"s_min": s_min, "b_crit": slope / s_min if s_min > 0 else None, "points": fewest}


def report(data: dict) -> str:
    lines = []
    rows = []
    for name, t in data["tasks"].items():
        s = t["settings"]
        best = s[t["best_grid"]]["run"]["seconds"]
        base = s["(c) base"]["run"]["seconds"]
        for label in ("(a) bsadvisor", "(a') bsadvisor schedule", "(b) Lightning + linear lr", "(c) base",
                      t["best_grid"]):
            if label not in s:
                continue
            r = s[label]["run"]
            batch = (" -> ".join(str(e["batch_size"]) for e in s[label]["schedule"]) if s[label].get("schedule")
                     else f"{s[label]['micro_batch']}" + (f" x {s[label]['accumulation_steps']}"
                                                          if s[label]["accumulation_steps"] > 1 else ""))
            lr = s[label]["lr"]
            reached = r["status"] == "reached"
            rows.append([name, label if label != t["best_grid"] else f"best of grid ({label[5:]})", batch,
                         f"{lr:.3g}", s[label].get("warmup_steps") or 0, r["status"], r["steps"], r["examples"],
                         f"{r['seconds']:.2f}" if reached else "-",
                         f"{r['seconds'] / base:.2f}x" if reached else "-",
                         f"{r['seconds'] / best:.2f}x" if reached else "-"])
    headers = ["task", "setting", "batch", "lr", "warm-up", "status", "steps", "examples", "train s (counted)",
               "vs base", "vs best of grid"]
    lines += [common.table(headers, rows), ""]
    lines += [over_seeds(data), ""]
    for name, t in data["tasks"].items():
        fit = critical_batch(t)
        if fit and fit["b_crit"]:
            late = t["recommend"]["series"][-1][1] if t["recommend"]["series"] else None
            lines.append(f"- {name}: critical batch fitted to the grid (fewest steps to the target at each batch, "
                         f"S = S_min(1 + B_crit/B)): B_crit {fit['b_crit']:.3g}, S_min {fit['s_min']:.0f} steps; "
                         f"the noise series' last B_simple {late:.3g} ({late / fit['b_crit']:.2f}x).")
    for name, t in data["tasks"].items():
        rec = t["recommend"]
        lines.append(f"- {name}: target {t['target']}; `{rec['command']}` took {rec['seconds']:.1f} s wall "
                     f"(probes {rec['probe_seconds']:.1f} s): batch {rec['batch']}, lr {rec['lr']:.3g} "
                     f"({rec['lr_source']}; rule {rec['rule_lr']:.3g}), warm-up {rec['warmup_steps']}, beta2 "
                     f"{rec['beta2']}; B_simple {rec['b_simple']:.3g} at its last point; plateau {rec['plateau']}; "
                     f"noise series (step, B_simple): {', '.join(f'({a}, {b:.3g})' for a, b in rec['series'])}.")
    for name, t in data["tasks"].items():
        tried = t["recommend"].get("sweep_batches") or []
        if len(tried) > 1:
            scores = "; ".join(f"{b['batch']} at lr {b['learning_rate']:.3g}, {b['steps']} steps: {b['loss']:.4g} / "
                               f"{b['late_loss']:.4g}" for b in tried)
            lines.append(f"- {name}: the sweep's batches for the same counted time (the plateau rule's first; mean "
                         f"loss of the second half from initialisation, from {tried[0]['start_loss']:.4g} / from the "
                         f"probe's last weights, from {tried[0]['hold_loss']:.4g}): {scores}; batch "
                         f"{t['recommend']['batch']} by the {t['recommend']['batch_source']}.")
    return "\n".join(lines)


COLORS = {"(a) bsadvisor": "#1b9e77", "(a') bsadvisor schedule": "#66a61e", "(b) Lightning + linear lr": "#7570b3",
          "(c) base": "#d95f02", "best": "#e7298a"}


def plot(data: dict, out: Path) -> None:
    plt = common.plt()
    tasks = list(data["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.6), squeeze=False)
    for ax, name in zip(axes[0], tasks):
        t = data["tasks"][name]
        for label, s in t["settings"].items():
            r = s["run"]
            xs, ys = [c[1] for c in r["curve"]], [c[2] for c in r["curve"]]
            grid = label.startswith("grid")
            best = label == t["best_grid"]
            ax.plot(xs, ys, lw=1.6 if not grid or best else 0.6, alpha=1 if not grid or best else 0.35,
                    color=COLORS["best"] if best else COLORS.get(label, "#999999"),
                    label=None if grid and not best else (f"best of grid ({label[5:]})" if best else label))
        ax.axhline(t["target"], color="black", ls="--", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("counted training seconds")
        ax.set_ylim(top=t["target"] + 1.0, bottom=t["target"] - 0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("validation loss")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = common.argument_parser(__doc__, "time_to_target", "easier targets, a 2x2 grid: checks the script")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--results", default=None, help="results file name (default time_to_target): tasks run "
                                                        "side by side each into its own, merged after")
    ap.add_argument("--only-advice", action="store_true", help="rerun bsadvisor's settings only, against the "
                                                                  "saved base, Lightning and grid")
    args = common.parse_arguments(ap)
    name = args.results or common.results_name("time_to_target", args.quick)
    if args.from_results:
        data = common.load_results(name)
    else:
        try:  # one task at a time may be rerun: the others' saved results stay
            data = common.load_results(name)
        except FileNotFoundError:
            data = {}
        data.setdefault("tasks", {})
        data.update({"machine": common.machine(), "command": common.command_line()})
        for task in args.tasks.split(","):
            data["tasks"][task] = (rerun_advice(task, TASKS[task], data["tasks"][task]) if args.only_advice
                                   else run_task(task, TASKS[task], args.quick))
            common.save_results(name, data)
    common.publish(args, "time_to_target", data, report(data), plot, "validation loss against counted time",
                   " Time is counted: steps x the batch's measured step time (minimum of interleaved repeats).")


if __name__ == "__main__":
    main()
