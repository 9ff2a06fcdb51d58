"""Gradient noise scale: bsadvisor's estimate and its cost, against exact per-example gradients.

    python3 benchmarks/noise.py            # three models (a few minutes)
    python3 benchmarks/noise.py --quick    # tiny sample sizes, to check the script works

bsadvisor: `advisor.noise(...)` in-process (the Python API) with the CLI's defaults (`bsadvisor noise MODEL --device
cpu --batch-size 8*BASE_BATCH_SIZE`: 10 warm-up steps, 32 weight snapshots, 8 micro-batches each,
preconditioned by Adam's sqrt(v_hat)+eps where the optimizer is Adam-family). The CLI is run too, for
its end-to-end wall time and to show it gives the same figure.

The reference is taken along the same trajectory: the weights (and optimizer state) at each of
bsadvisor's snapshots are captured while it runs; at each, N fresh examples give exact per-example
gradients g_i (torch.func: vmap(grad)), in the same geometry (divided by the same preconditioner), so
tr Sigma = sum|g_i - g_bar|^2/(N-1) and |G|^2 = |g_bar|^2 - tr Sigma/N, unbiased; B_simple is the ratio
of their means over the snapshots, as bsadvisor's is. Its 95% interval is a bootstrap over snapshots
and, inside each, over groups of examples.

BackPACK (`backpack-for-pytorch`, BatchL2Grad) gives per-example squared norms from one backward pass
per chunk, on the same examples: tr Sigma and |G|^2 follow from them and the ordinary batch gradient.
It supports raw gradients of Linear/Conv layers; where it cannot give the figure (LayerNorm, tied
weights, Adam's preconditioner), the table says so and shows what it got wrong.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import subprocess
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.func import functional_call, grad, vmap  # noqa: E402

import common  # noqa: E402
import advisor  # noqa: E402
from advisor.step import map_tensors  # noqa: E402

MODELS = ["mlp_unicode", "cnn_bytes", "gpt_stdlib"]
FULL = {"examples": 512, "chunk": 64, "every": 1, "snapshots": 32}
QUICK = {"examples": 128, "chunk": 32, "every": 4, "snapshots": 8}
RESAMPLES = 2000


# ---- bsadvisor, with the trajectory captured -----------------------------------------------------

class Capture:
    """A spec that remembers the weights and optimizer state each time the noise probe draws a
    snapshot's batch (the only call of batch(size) at the noise batch size)."""

    def __init__(self, spec, noise_batch: int):
        self.snapshots: list[tuple[dict, dict]] = []
        self.model = self.opt = None
        build_model, make_optimizer, make_batch = spec.build_model, spec.make_optimizer, spec.make_batch

        def model():
            self.model = build_model()
            return self.model

        def optimizer(params):
            self.opt = make_optimizer(params)
            return self.opt

        def batch(size):
            if size == noise_batch and self.model is not None:
                self.snapshots.append((copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict())))
            return make_batch(size)

        self.spec = dataclasses.replace(spec, build_model=model, make_optimizer=optimizer, make_batch=batch)


def run_bsadvisor(spec, noise_batch: int, snapshots: int, seed: int) -> dict:
    capture = Capture(spec, noise_batch)
    with common.stopwatch() as took:
        result = advisor.noise(capture.spec, device="cpu", batch_size=noise_batch, snapshots=snapshots,
                               seed=seed).noise
    s = result.scale
    return {"b_simple": s.b_simple, "ci95": list(s.ci95), "grad_sq_norm": s.grad_sq_norm, "trace_sigma": s.trace_sigma,
            "seconds": took(), "probe_seconds": result.seconds, "preconditioned": result.preconditioned,
            "examples": (result.batch_size * snapshots
                         + result.warmup_steps * min(noise_batch, spec.base_batch_size or 32)),
            "method": result.method, "snapshots": s.snapshots, "captured": capture.snapshots}


def run_cli(path: Path, noise_batch: int, snapshots: int, seed: int) -> dict:
    cmd = [*common.BSADVISOR, "noise", str(path.relative_to(common.REPO)), "--device", "cpu",
           "--batch-size", str(noise_batch), "--snapshots", str(snapshots), "--seed", str(seed), "--json"]
    with common.stopwatch() as took:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=common.REPO)
    doc = json.loads(out.stdout)["noise"]
    return {"command": common.shown(cmd), "b_simple": doc["b_simple"], "wall_seconds": took()}


# ---- the references ------------------------------------------------------------------------------

def _restore(spec, state: tuple[dict, dict]):
    model = spec.model()
    model.load_state_dict(state[0])
    opt = spec.optimizer(model)
    opt.load_state_dict(state[1])
    return model, opt


def _scales(model, opt, preconditioned: bool) -> dict[str, torch.Tensor | None]:
    """Adam's divisor (sqrt(v_hat)+eps) per parameter at the captured state, or None for raw gradients."""
    return {name: (_adam_divisor(opt, p) if preconditioned else None) for name, p in model.named_parameters()}


def _adam_divisor(opt, p) -> torch.Tensor | None:
    """sqrt(v / (1 - beta2^t)) + eps from the optimizer's state (None before its first step)."""
    state = opt.state.get(p, {})
    if "exp_avg_sq" not in state:
        return None
    group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
    bias = 1 - group["betas"][1] ** float(state["step"])
    return (state["exp_avg_sq"] / bias).sqrt() + group["eps"]


def _flat(grads: dict[str, torch.Tensor], scales: dict, n: int) -> torch.Tensor:
    """(n, P) float64 per-example gradients, divided by the preconditioner where there is one."""
    parts = []
    for name, g in grads.items():
        g = g.double()
        if scales.get(name) is not None:
            g = g / scales[name]
        parts.append(g.reshape(n, -1))
    return torch.cat(parts, dim=1)


def _raw_loss(spec):
    return getattr(spec.loss, "fn", spec.loss)  # the user's loss (or the default), without the checks


def _chunks(spec, examples: int, chunk: int, seed: int):
    torch.manual_seed(seed)
    for _ in range(examples // chunk):
        yield spec.make_batch(chunk)


def exact_snapshot(spec, state, preconditioned, examples, chunk, seed) -> dict:
    """Per-example gradients with torch.func at one snapshot: group sums and squared norms."""
    model, opt = _restore(spec, state)
    scales = _scales(model, opt, preconditioned)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    loss = _raw_loss(spec)

    def one(p, example):
        batch = map_tensors(lambda t: t.unsqueeze(0), example)
        return loss(lambda *a, **k: functional_call(model, (p, buffers), a, k), batch)

    per_example = vmap(grad(one), in_dims=(None, 0))
    sums, sq = [], []
    for batch in _chunks(spec, examples, chunk, seed):
        g = _flat(per_example(params, batch), scales, chunk)
        sums.append(g.sum(0))
        sq.append(g.pow(2).sum().item())
    return _group_stats(sums, sq, chunk)


def backpack_snapshot(spec, state, preconditioned, examples, chunk, seed) -> dict:
    """BackPACK BatchL2Grad at one snapshot, on the same examples: |g_i|^2 from one backward per chunk."""
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad

    if preconditioned:
        raise Unsupported("BatchL2Grad gives norms of raw per-example gradients; Adam's per-coordinate "
                          "preconditioner cannot be applied to a norm")
    model, _ = _restore(spec, state)
    model = extend(model)
    loss = _raw_loss(spec)
    sums, sq = [], []
    for batch in _chunks(spec, examples, chunk, seed):
        model.zero_grad(set_to_none=True)
        with backpack(BatchL2Grad()):
            loss(model, batch).backward()
        params = list(model.parameters())
        missing = [name for name, p in model.named_parameters() if not hasattr(p, "batch_l2")]
        if missing:
            raise Unsupported(f"no batch_l2 for {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
        # mean reduction: BackPACK's per-example gradients carry the 1/n of the mean
        sums.append(torch.cat([p.grad.double().reshape(-1) for p in params]) * chunk)
        sq.append(sum(p.batch_l2.double().sum().item() for p in params) * chunk**2)
    return _group_stats(sums, sq, chunk)


class Unsupported(Exception):
    pass


def _group_stats(sums: list[torch.Tensor], sq: list[float], group: int) -> dict:
    S = torch.stack(sums)
    return {"gram": (S @ S.T).tolist(), "sq": sq, "group": group}


def _estimates(stats: dict, counts: list[int] | None = None) -> tuple[float, float]:
    """Unbiased (|G|^2, tr Sigma) from group sums, optionally with groups resampled (`counts`)."""
    gram, sq, n = stats["gram"], stats["sq"], stats["group"]
    k = len(sq)
    c = counts or [1] * k
    total = n * sum(c)
    mean_sq = sum(ci * cj * gram[i][j] for i, ci in enumerate(c) if ci for j, cj in enumerate(c) if cj) / total**2
    sum_sq = sum(ci * q for ci, q in zip(c, sq))
    trace = (sum_sq - total * mean_sq) / (total - 1)
    return mean_sq - trace / total, trace


def reference(per_snapshot: list[dict], seed: int) -> dict:
    """B_simple as the ratio of means over snapshots, and a bootstrap over snapshots and groups."""
    pairs = [_estimates(s) for s in per_snapshot]
    g2 = sum(p[0] for p in pairs) / len(pairs)
    tr = sum(p[1] for p in pairs) / len(pairs)
    rng = random.Random(seed)
    boot = []
    for _ in range(RESAMPLES):
        picks = [per_snapshot[rng.randrange(len(per_snapshot))] for _ in per_snapshot]
        est = []
        for s in picks:
            k = len(s["sq"])
            counts = [0] * k
            for _ in range(k):
                counts[rng.randrange(k)] += 1
            est.append(_estimates(s, counts))
        bg2 = sum(e[0] for e in est) / len(est)
        btr = sum(e[1] for e in est) / len(est)
        boot.append(btr / bg2 if bg2 > 0 else math.inf)
    boot.sort()
    lo, hi = boot[int(0.025 * (RESAMPLES - 1))], boot[int(math.ceil(0.975 * (RESAMPLES - 1)))]
    return {"b_simple": tr / g2 if g2 > 0 else math.inf, "ci95": [lo, hi], "grad_sq_norm": g2, "trace_sigma": tr}


def backpack_error(spec, state, chunk: int, seed: int) -> str:
    """Where BackPACK does not support a model, what a user would silently get from it on raw
    gradients: its per-example squared norms against torch.func's on one chunk."""
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad

    model, _ = _restore(spec, state)
    params = {k: v.detach() for k, v in model.named_parameters()}
    loss = _raw_loss(spec)
    batch = next(_chunks(spec, chunk, chunk, seed))

    def one(p, example):
        return loss(lambda *a, **k: functional_call(model, p, a, k), map_tensors(lambda t: t.unsqueeze(0), example))

    exact = _flat(vmap(grad(one), in_dims=(None, 0))(params, batch), {}, chunk).pow(2).sum(1)
    model = extend(model)
    with backpack(BatchL2Grad()):
        loss(model, batch).backward()
    named = list(model.named_parameters())
    missing = [n for n, p in named if not hasattr(p, "batch_l2")]
    wrong = [f"{n} {tuple(p.batch_l2.shape)}" for n, p in named
             if hasattr(p, "batch_l2") and p.batch_l2.shape != (chunk,)]
    found = [p.batch_l2.double() for n, p in named if hasattr(p, "batch_l2") and p.batch_l2.shape == (chunk,)]
    err = ((sum(found) * chunk**2 - exact).abs() / exact).max().item()
    parts = [f"on raw gradients it left out {len(missing)} parameters ({', '.join(missing[:2])}, ...)"
             if missing else "",
             f"gave per-example norms of the wrong shape for {', '.join(wrong)}" if wrong else "",
             f"and the norms of the rest were off by up to {err:.0%} against torch.func"]
    return "; ".join(p for p in parts if p)


# ---- the study -----------------------------------------------------------------------------------

def study(name: str, cfg: dict, seed: int) -> dict:
    path = common.MODELS[name]
    spec = common.load(path)
    base = spec.base_batch_size or 32
    noise_batch = 8 * base
    print(f"\n== {name}: noise batch {noise_batch}", file=sys.stderr)
    ours = run_bsadvisor(spec, noise_batch, cfg["snapshots"], seed)
    captured = ours.pop("captured")
    picked = list(range(0, len(captured), cfg["every"]))
    print(f"  bsadvisor  B_simple {ours['b_simple']:.4g} {ours['ci95']}  {ours['seconds']:.2f} s", file=sys.stderr)
    out = {"model": name, "noise_batch": noise_batch, "bsadvisor": ours, "snapshots_checked": picked,
           "examples_per_snapshot": cfg["examples"]}
    for method, fn in (("exact", exact_snapshot), ("backpack", backpack_snapshot)):
        per, seconds = [], 0.0
        try:
            for i in picked:
                with common.stopwatch() as took:
                    per.append(fn(spec, captured[i], ours["preconditioned"], cfg["examples"], cfg["chunk"],
                                  seed * 100_000 + i))
                seconds += took()
        except Unsupported as exc:
            info = {"unsupported": str(exc)}
            if method == "backpack":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # 48 examples: a count no sequence length or width of these models equals, so a
                    # per-example result of the wrong shape cannot pass for a right one
                    info["raw_gradients"] = backpack_error(spec, captured[0], 48, seed)
            out[method] = info
            print(f"  {method:9s}  unsupported: {exc}", file=sys.stderr)
            continue
        ref = reference(per, seed)
        ref.update(seconds=seconds, examples=cfg["examples"] * len(picked),
                   per_snapshot=[dict(zip(("grad_sq_norm", "trace_sigma"), _estimates(p))) for p in per])
        out[method] = ref
        print(f"  {method:9s}  B_simple {ref['b_simple']:.4g} {ref['ci95']}  {seconds:.2f} s", file=sys.stderr)
    out["cli"] = run_cli(path, noise_batch, cfg["snapshots"], seed)
    return out


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "unbounded"
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.3e}"


def _ci(ci) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def report(data: dict) -> str:
    headers = ["model (optimizer geometry)", "method", "B_simple", "95% interval", "|G|^2", "tr Sigma",
               "examples", "wall s", "vs exact"]
    rows = []
    for s in data["studies"]:
        ours, exact = s["bsadvisor"], s.get("exact", {})
        geometry = "Adam-preconditioned" if ours["preconditioned"] else "raw (SGD)"
        label = f"{s['model']} ({geometry})"
        ref = exact.get("b_simple")
        for method, r in (("bsadvisor", ours), ("exact (torch.func)", exact), ("BackPACK BatchL2Grad", s["backpack"])):
            if "unsupported" in r:
                note = f"not supported: {r['unsupported']}"
                if r.get("raw_gradients"):
                    note += f"; besides, {r['raw_gradients']}"
                rows.append([label, method, note, "", "", "", "", "", ""])
                continue
            vs = f"{r['b_simple'] / ref:.2f}x" if ref and math.isfinite(ref) and math.isfinite(r["b_simple"]) else "-"
            rows.append([label, method, _fmt(r["b_simple"]), _ci(r["ci95"]), _fmt(r["grad_sq_norm"]),
                         _fmt(r["trace_sigma"]), r["examples"], f"{r['seconds']:.2f}", vs])
    lines = [common.table(headers, rows), ""]
    for s in data["studies"]:
        o = s["bsadvisor"]
        lines.append(f"- **{s['model']}**: bsadvisor at batch {s['noise_batch']}, {o['method']}; "
                     f"{o['probe_seconds']:.2f} s in the probe itself, {o['seconds']:.2f} s with its contract check "
                     f"and memory trace; the CLI `{s['cli']['command']}` gave B_simple {_fmt(s['cli']['b_simple'])} "
                     f"in {s['cli']['wall_seconds']:.2f} s wall. The references use {_which(s)} of its "
                     f"trajectory, {s['examples_per_snapshot']} fresh examples each"
                     + _spread(s.get("exact", {})) + ".")
    return "\n".join(lines)


def _which(s: dict) -> str:
    picked, total = s["snapshots_checked"], s["bsadvisor"]["snapshots"]
    return f"all {total} snapshots" if len(picked) == total else f"snapshots {picked}"


def _spread(exact: dict) -> str:
    per = exact.get("per_snapshot")
    if not per:
        return ""
    g = sorted(p["grad_sq_norm"] for p in per)
    t = sorted(p["trace_sigma"] for p in per)
    return (f"; exact per-snapshot |G|^2 ranged {_fmt(g[0])} to {_fmt(g[-1])} (median {_fmt(g[len(g) // 2])}), "
            f"tr Sigma {_fmt(t[0])} to {_fmt(t[-1])}")


def plot(data: dict, out: Path) -> None:
    plt = common.plt()
    from matplotlib import ticker

    studies = data["studies"]
    fig, axes = plt.subplots(1, len(studies), figsize=(4.2 * len(studies), 3.8), squeeze=False)
    for ax, s in zip(axes[0], studies):
        xs, labels = [], []
        for i, (method, key, color) in enumerate((("bsadvisor", "bsadvisor", "#1b9e77"),
                                                  ("exact\ntorch.func", "exact", "black"),
                                                  ("BackPACK", "backpack", "#d95f02"))):
            r = s.get(key, {})
            labels.append(method)
            if "b_simple" not in r or not math.isfinite(r["b_simple"]):
                ax.text(i, 0.5, "n/a", transform=ax.get_xaxis_transform(), ha="center", fontsize=8, color="grey")
                continue
            lo, hi = r["ci95"]
            hi = hi if math.isfinite(hi) else r["b_simple"] * 10
            ax.errorbar([i], [r["b_simple"]], yerr=[[r["b_simple"] - lo], [hi - r["b_simple"]]], fmt="o",
                        color=color, capsize=4)
            ax.annotate(f"{r['seconds']:.1f} s", (i, r["b_simple"]), textcoords="offset points", xytext=(8, 0),
                        fontsize=7)
            xs.append(i)
        ax.set_xticks(range(3), labels, fontsize=8)
        ax.set_xlim(-0.5, 2.5)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
        ax.tick_params(axis="y", which="both", labelsize=7)
        ax.set_title(s["model"], fontsize=9)
        ax.set_ylabel("B_simple (95% interval); wall seconds beside", fontsize=7)
    fig.suptitle("Gradient noise scale: bsadvisor's estimate against exact per-example gradients (CPU)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = common.argument_parser(__doc__, "noise", "tiny samples: checks the script, figures meaningless")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seed", type=int, default=0)
    args = common.parse_arguments(ap)
    cfg = QUICK if args.quick else FULL
    if args.from_results:
        data = common.load_results(common.results_name("noise", args.quick))
    else:
        studies = [study(name, cfg, args.seed) for name in args.models.split(",")]
        data = {"machine": common.machine(), "command": common.command_line(), "config": cfg, "studies": studies}
        common.save_results(common.results_name("noise", args.quick), data)
    common.publish(args, "noise", data, report(data), plot, "noise scale per method")


if __name__ == "__main__":
    main()
