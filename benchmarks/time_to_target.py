"""Time to target: train the GPT example to a fixed validation loss with three settings.

    python3 benchmarks/time_to_target.py            # 3 settings x 3 seeds (about 10-15 minutes)
    python3 benchmarks/time_to_target.py --quick    # an easy target and short caps, to check the script

(a) bsadvisor: `bsadvisor recommend examples/gpt_stdlib.py --device cpu --memory BUDGET --json`; its
    batch (micro-batch x accumulation steps), learning rate and linear warm-up. The command's wall
    time is added to every (a) run: the probe's own cost counts against it.
(b) Lightning: the BatchSizeFinder's largest batch (power mode, its default) under the same enforced
    budget (see max_batch.py), learning rate scaled linearly from the example's (lr0 * B / B0), no
    warm-up. The search's wall time is shown, and added to the total as for (a).
(c) the example's own setting: BASE_BATCH_SIZE 32 and its AdamW learning rate 3e-3.

Every run starts from the same seeded initialisation and data stream for its seed, trains with
bsadvisor's step (zero_grad, loss, backward, optimizer step; the loss divided by the accumulation
steps when there are several), and evaluates the validation loss on a fixed set of held-out windows
every EVAL_EXAMPLES training examples. Training time excludes evaluation. A run stops at the target,
at the wall-clock cap, or when the loss is no longer finite ("diverged").
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import common  # noqa: E402
import max_batch  # noqa: E402
from advisor.step import split_batch  # noqa: E402
from advisor.units import parse_size  # noqa: E402

MODEL = common.MODELS["gpt_stdlib"]
FULL = {"target": 2.0, "cap_seconds": 120.0, "seeds": [0, 1, 2], "budget": "768MiB", "eval_examples": 1024,
        "val_windows": 1024}
QUICK = {"target": 2.6, "cap_seconds": 15.0, "seeds": [0], "budget": "48MiB", "eval_examples": 512,
         "val_windows": 256}


def recommend(budget: str, seed: int) -> dict:
    cmd = ["bsadvisor", "recommend", str(MODEL.relative_to(common.REPO)), "--device", "cpu", "--memory", budget,
           "--seed", str(seed), "--json"]
    with common.stopwatch() as took:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=common.REPO)
    doc = json.loads(out.stdout)
    r = doc["recommendation"]
    return {"command": " ".join(cmd), "seconds": took(), "batch": r["batch_size"], "micro_batch": r["micro_batch"],
            "accumulation_steps": r["accumulation_steps"], "lr": r["learning_rate"], "warmup_steps": r["warmup_steps"],
            "lr_rule": r["lr_rule"], "b_simple": doc["noise"]["b_simple"], "max_batch": doc["memory"]["max_batch"],
            "safe_max_batch": doc["memory"]["safe_max_batch"], "reasons": r["reasons"]}


def lightning_batch(spec, budget: int, seed: int) -> dict:
    r = max_batch.run_lightning(spec, budget, seed, "power")
    return {"batch": r["batch"], "seconds": r["seconds"]}


def train(spec, setting: dict, seed: int, cfg: dict, val) -> dict:
    """Train until the validation loss reaches the target, the cap, or divergence."""
    torch.manual_seed(seed)
    model = spec.model()
    opt = spec.optimizer(model)
    base_lr = opt.param_groups[0]["lr"]
    micro, accumulation = setting["micro_batch"], setting["accumulation_steps"]
    batch_size = micro * accumulation
    eval_every = max(1, round(cfg["eval_examples"] / batch_size))
    curve, seconds, step, reached, status = [], 0.0, 0, None, "cap"
    first = _val_loss(spec, model, val)
    curve.append((0, 0.0, first))
    while seconds < cfg["cap_seconds"]:
        lr = _lr(step, base_lr, setting["lr"], setting["warmup_steps"])
        for group in opt.param_groups:
            group["lr"] = lr
        with common.stopwatch() as took:
            opt.zero_grad(set_to_none=True)
            for chunk in split_batch(spec.make_batch(batch_size), micro):
                loss = spec.loss(model, chunk) / accumulation
                loss.backward()
            opt.step()
        seconds += took()
        step += 1
        if not math.isfinite(loss.item()):
            status = "diverged"
            break
        if step % eval_every == 0:
            v = _val_loss(spec, model, val)
            curve.append((step, seconds, v))
            if not math.isfinite(v):
                status = "diverged"
                break
            if v <= cfg["target"]:
                reached, status = (step, seconds), "reached"
                break
    steps = reached[0] if reached else step
    return {"seed": seed, "status": status, "steps": steps,
            "train_seconds": reached[1] if reached else seconds, "examples": steps * batch_size,
            "best_val": min(c[2] for c in curve), "curve": curve}


def _lr(step: int, base: float, target: float, warmup: int) -> float:
    """Linear warm-up from the base learning rate to the target over `warmup` steps."""
    if warmup and step < warmup:
        return base + (target - base) * (step + 1) / warmup
    return target


@torch.no_grad()
def _val_loss(spec, model, val) -> float:
    return sum(spec.loss(model, chunk).item() * len(chunk[0]) for chunk in split_batch(val, 256)) / len(val[0])


def validation_set(spec, windows: int):
    module = sys.modules[spec.build_model.__module__]  # the model file, as load_spec imported it
    torch.manual_seed(1234)
    return module.validation_batch(windows)


def report(data: dict) -> str:
    cfg = data["config"]
    rows = []
    for name, s in data["settings"].items():
        for run in s["runs"]:
            total = run["train_seconds"] + s["tool_seconds"] if run["status"] == "reached" else None
            rows.append([name, f"{s['micro_batch']} x {s['accumulation_steps']}" if s["accumulation_steps"] > 1
                         else s["micro_batch"], f"{s['lr']:.3g}", s["warmup_steps"], run["seed"],
                         run["status"] if run["status"] != "reached" else "yes",
                         run["steps"], run["examples"], f"{run['train_seconds']:.1f}", f"{s['tool_seconds']:.1f}",
                         f"{total:.1f}" if total is not None else f"not reached (> {cfg['cap_seconds']:.0f} s cap)",
                         f"{run['best_val']:.3f}"])
    headers = ["setting", "batch (micro x accum.)", "lr", "warm-up steps", "seed", "reached?", "steps",
               "examples", "train s", "tool s", "total s to target", "best val loss"]
    lines = [common.table(headers, rows), ""]
    summary = []
    for name, s in data["settings"].items():
        done = [r for r in s["runs"] if r["status"] == "reached"]
        if done:
            med = sorted(r["train_seconds"] + s["tool_seconds"] for r in done)[len(done) // 2]
            summary.append(f"{name}: {len(done)}/{len(s['runs'])} reached, median total {med:.1f} s")
        else:
            summary.append(f"{name}: 0/{len(s['runs'])} reached")
    lines.append("Summary: " + "; ".join(summary) + ".")
    a = data["settings"]["(a) bsadvisor"]["recommend"]
    lines += ["", f"- (a) `{a['command']}` took {a['seconds']:.1f} s: batch {a['batch']} ({a['micro_batch']} x "
              f"{a['accumulation_steps']}), lr {a['lr']:.3g} by {a['lr_rule']}, warm-up {a['warmup_steps']} steps; "
              f"B_simple {a['b_simple']:.3g}, largest batch {a['max_batch']} ({a['safe_max_batch']} with the 10% "
              f"margin). Its reasons: " + " / ".join(a["reasons"]),
              f"- (b) Lightning's BatchSizeFinder (power mode) under the same enforced budget returned "
              f"{data['settings']['(b) Lightning + linear lr']['micro_batch']} in "
              f"{data['settings']['(b) Lightning + linear lr']['tool_seconds']:.1f} s."]
    return "\n".join(lines)


def plot(data: dict, out: Path) -> None:
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"(a) bsadvisor": "#1b9e77", "(b) Lightning + linear lr": "#7570b3", "(c) base": "#d95f02"}
    for name, s in data["settings"].items():
        for i, run in enumerate(s["runs"]):
            xs = [c[1] + s["tool_seconds"] for c in run["curve"]]
            ys = [c[2] for c in run["curve"]]
            ax.plot(xs, ys, color=colors.get(name), lw=1, alpha=0.85, label=name if i == 0 else None)
    ax.axhline(data["config"]["target"], color="black", ls="--", lw=1, label="target")
    ax.set_xlabel("wall seconds, the tool's own cost included (training only; evaluation excluded)")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 3.5))
    ax.set_title("GPT example: time to a validation-loss target on the CPU, 3 seeds", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = common.argument_parser(__doc__, "time_to_target", "easy target, short cap: checks the script")
    args = common.parse_arguments(ap)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    cfg = dict(QUICK if args.quick else FULL)
    if args.from_results:
        data = common.load_results(common.results_name("time_to_target", args.quick))
    else:
        data = run_study(cfg, common.results_name("time_to_target", args.quick))
    cfg = data["config"]
    conditions = (f" Target validation loss {cfg['target']} (nats per byte, {cfg['val_windows']} fixed held-out "
                  f"windows, evaluated every {cfg['eval_examples']} training examples), cap "
                  f"{cfg['cap_seconds']:.0f} s of training per run, memory budget {cfg['budget']} for (a) and (b).")
    common.publish(args, "time_to_target", data, report(data), plot, "validation loss against wall time", conditions)


def run_study(cfg: dict, results_name: str) -> dict:
    spec = common.load(MODEL)
    val = validation_set(spec, cfg["val_windows"])
    base_batch, base_lr = spec.base_batch_size, spec.optimizer(spec.model()).param_groups[0]["lr"]

    rec = recommend(cfg["budget"], seed=0)
    print(f"(a) bsadvisor: {rec}", file=sys.stderr)
    lit = lightning_batch(spec, parse_size(cfg["budget"]), seed=0)
    print(f"(b) Lightning: {lit}", file=sys.stderr)
    settings = {
        "(a) bsadvisor": {"micro_batch": rec["micro_batch"], "accumulation_steps": rec["accumulation_steps"],
                          "lr": rec["lr"], "warmup_steps": rec["warmup_steps"], "tool_seconds": rec["seconds"],
                          "recommend": rec},
        "(b) Lightning + linear lr": {"micro_batch": lit["batch"], "accumulation_steps": 1,
                                      "lr": base_lr * lit["batch"] / base_batch, "warmup_steps": 0,
                                      "tool_seconds": lit["seconds"]},
        "(c) base": {"micro_batch": base_batch, "accumulation_steps": 1, "lr": base_lr, "warmup_steps": 0,
                     "tool_seconds": 0.0},
    }
    for name, s in settings.items():
        s["runs"] = []
        for seed in cfg["seeds"]:
            run = train(spec, s, seed, cfg, val)
            s["runs"].append(run)
            print(f"  {name} seed {seed}: {run['status']} after {run['steps']} steps, {run['train_seconds']:.1f} s, "
                  f"best val {run['best_val']:.3f}", file=sys.stderr)
    data = {"machine": common.machine(), "command": common.command_line(), "config": cfg, "settings": settings}
    common.save_results(results_name, data)
    return data


if __name__ == "__main__":
    main()
