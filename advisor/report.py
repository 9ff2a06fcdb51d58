"""One schema, two renderings: the JSON document scripts read, and the rich tables people read.

Every figure carries how it was obtained: measured (on CPU or CUDA), tracked (exact tensor bytes of a
traced step), estimated (from a fit), or taken from a profile.
"""

import math

from rich import box
from rich.console import Console
from rich.table import Table

from advisor import __version__
from advisor.advice import goodput, make_plan, plan_for_batch, statistical_efficiency
from advisor.pipeline import Report
from advisor.hardware.profiles import usable_bytes
from advisor.units import format_bytes

SCHEMA_VERSION = 1


ALL_SECTIONS = ("memory", "throughput", "noise", "recommendation")


def to_json(report: Report, sections: tuple[str, ...] | None = None) -> dict:
    """The document; a probe another one needed (memory, for the noise batch) shows only if asked for."""
    sections = sections or ALL_SECTIONS
    doc = {
        "schema_version": SCHEMA_VERSION,
        "bsadvisor_version": __version__,
        "model": str(report.spec.path),
        "device": {"type": report.backend.device.type, "name": str(report.backend.device)},
    }
    if report.memory and "memory" in sections:
        m = report.memory
        doc["memory"] = {
            "max_batch": m.max_batch, "safe_max_batch": m.safe_max_batch,
            "budget_bytes": m.budget.bytes, "budget_source": m.budget.source, "margin": m.margin,
            "bytes_per_sample": m.bytes_per_sample, "fixed_bytes": m.fixed_bytes,
            "at_search_limit": m.at_search_limit, "method": m.method, "seconds": m.seconds,
            "traced": [{"batch": b, "peak_bytes": p} for b, p in sorted(m.peaks.items())],
            "predicted_max_batch": m.predicted_max_batch, "real_steps": m.real_steps,
            "context_bytes": m.context_bytes,
            "measured": [{"batch": b, "out_of_memory": p is None, "reserved_bytes": None if p is None else p[0],
                          "allocated_bytes": None if p is None else p[1]} for b, p in sorted(m.measured.items())],
        }
    if report.throughput and "throughput" in sections:
        t = report.throughput
        doc["throughput"] = {
            "points": [{"batch": p.batch, "step_seconds": p.step_seconds, "samples_per_second": p.samples_per_second,
                        "optimizer_seconds": p.optimizer_seconds, "spread": p.spread} for p in t.points],
            "fit": {"alpha_seconds": report.fit.alpha, "beta_seconds_per_sample": report.fit.beta,
                    "method": "estimated: weighted least squares T(B) = alpha + beta*B" + (
                        ", weighted near the candidate batches" if report.recommendation else "")},
            "stopped_early": t.stopped_early, "out_of_memory_at": t.out_of_memory_at, "method": t.method,
            "seconds": t.seconds, "devices": report.devices,
        }
    if report.noise and "noise" in sections:
        n = report.noise
        doc["noise"] = {
            "b_simple": n.scale.b_simple, "ci95": list(n.scale.ci95), "grad_sq_norm": n.scale.grad_sq_norm,
            "trace_sigma": n.scale.trace_sigma, "batch_size": n.batch_size, "micro_batch": n.micro_batch,
            "snapshots": n.scale.snapshots, "warmup_steps": n.warmup_steps, "preconditioned": n.preconditioned,
            "geometry": n.geometry, "resolved": n.scale.resolved, "method": n.method, "seconds": n.seconds,
            "train_batch": n.train_batch, "late_step": n.late_step, "trend": n.trend, "stopped": n.stopped,
            "series": [{"step": p.step, "examples": p.examples, "loss": p.loss, "b_simple": p.scale.b_simple,
                        "ci95": list(p.scale.ci95), "resolved": p.scale.resolved, "seconds": p.seconds}
                       for p in n.series],
        }
    if report.recommendation and "recommendation" in sections:
        r = report.recommendation
        doc["recommendation"] = {
            "batch_size": r.plan.batch_size, "micro_batch": r.plan.micro_batch,
            "accumulation_steps": r.plan.accumulation_steps, "learning_rate": r.learning_rate,
            "lr_rule": r.lr_rule, "lr_factor": r.lr_factor, "warmup_steps": r.warmup_steps,
            "optimizer_family": r.optimizer_family, "base_batch": r.base_batch, "base_lr": r.base_lr,
            "statistical_efficiency": r.efficiency, "goodput_vs_base": r.goodput_vs_base,
            "step_seconds": r.plan.step_seconds, "reasons": r.reasons,
            "devices": r.plan.devices, "global_batch": r.plan.batch_size, "per_device_micro_batch": r.plan.micro_batch,
            "method": _batch_method(report), "batch_source": _batch_source(report),
            "plateau": [r.plateau.low, r.plateau.high] if r.plateau else None,
            "plateau_best": r.plateau.best if r.plateau else None,
            "plateau_tolerance": r.plateau.tolerance if r.plateau else None,
            "rule_learning_rate": r.rule_learning_rate, "lr_source": r.lr_source,
            "beta2": r.beta2, "base_beta2": r.base_beta2,
            "schedule": [{"from_step": e.from_step, "from_examples": e.from_examples, "batch_size": e.plan.batch_size,
                          "micro_batch": e.plan.micro_batch, "accumulation_steps": e.plan.accumulation_steps,
                          "learning_rate": e.learning_rate, "b_simple": e.noise_scale} for e in r.schedule],
            "lr_sweep": None if report.sweep is None else {
                "runs": [{"learning_rate": x.learning_rate, "loss": x.loss, "held_loss": x.held, "diverged": x.diverged}
                         for x in report.sweep.runs],
                "chosen": report.sweep.chosen, "start_loss": report.sweep.start_loss, "steps": report.sweep.steps,
                "hold_loss": report.sweep.hold_loss, "hold_steps": report.sweep.hold_steps,
                "beta2_loss": report.sweep.beta2_loss, "beta2_late_loss": report.sweep.beta2_late_loss,
                "beta2_kept": report.sweep.beta2_kept,
                "method": report.sweep.method, "seconds": report.sweep.seconds,
                "chosen_batch": report.sweep.chosen_batch,
                "batches": [{"batch": t.candidate.batch, "micro_batch": t.candidate.micro,
                             "accumulation_steps": t.candidate.accumulation, "steps": t.candidate.steps,
                             "learning_rate": t.chosen, "loss": t.loss, "late_loss": t.late_loss,
                             "runs": [{"learning_rate": x.learning_rate, "loss": x.loss, "held_loss": x.held,
                                       "diverged": x.diverged} for x in t.runs]}
                            for t in report.sweep.trials]},
        }
        doc["candidates"] = candidates(report)
    if report.cluster and "recommendation" in sections:
        c, r = report.cluster, report.cluster.recommendation
        doc["plan"] = {
            "gpus": c.gpus, "profile": c.profile, "gradient_bytes": c.gradient_bytes,
            "allreduce_seconds": c.allreduce_seconds, "per_device_micro_batch": r.plan.micro_batch,
            "accumulation_steps": r.plan.accumulation_steps, "global_batch": r.plan.batch_size,
            "step_seconds": r.plan.step_seconds, "samples_per_second": r.plan.batch_size / r.plan.step_seconds,
            "learning_rate": r.learning_rate, "lr_factor": r.lr_factor, "warmup_steps": r.warmup_steps,
            "goodput_vs_base": r.goodput_vs_base, "method": c.method,
        }
    doc["notes"] = report.notes
    doc["seconds"] = report.seconds
    return _finite(doc)


def _finite(value):
    """JSON has no infinity: an unbounded figure (an unresolved noise scale) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def candidates(report: Report) -> list[dict]:
    """The table's rows: the timed batch sizes, the untimed ones up to the memory limit, the base and
    the recommendation; each value says where it came from."""
    m, fit, rec = report.memory, report.fit, report.recommendation
    phi, base = report.noise.scale.b_simple, rec.base_batch
    optimizer_seconds = min(p.optimizer_seconds for p in report.throughput.points)
    n = rec.plan.devices  # batches here are global: n devices x micro-batch x accumulation
    timed = {n * p.batch: p for p in report.throughput.points}
    sizes = sorted(set(timed) | {n * b for b in report.settings.batch_sizes or []}
                   | {base, rec.plan.batch_size, n * m.safe_max_batch})
    base_goodput = goodput(plan_for_batch(fit, optimizer_seconds, base, m.safe_max_batch, n), phi, base)
    rows = []
    for size in sizes:
        plan = rec.plan if size == rec.plan.batch_size else (
            make_plan(fit, optimizer_seconds, size // n, 1, n) if size <= n * m.safe_max_batch and size % n == 0
            else plan_for_batch(fit, optimizer_seconds, size, m.safe_max_batch, n))
        measured = size in timed and plan.accumulation_steps == 1
        seconds = timed[size].step_seconds if measured else plan.step_seconds
        rows.append({
            "batch": size, "micro_batch": plan.micro_batch, "accumulation_steps": plan.accumulation_steps,
            "devices": n,
            "peak_bytes": m.peak_at(plan.micro_batch),
            "peak_source": "tracked" if plan.micro_batch in m.peaks else "estimated",
            "step_seconds": seconds, "step_source": "measured" if measured else "estimated",
            "samples_per_second": size / seconds,
            "statistical_efficiency": statistical_efficiency(size, phi, base),
            "goodput_vs_base": goodput(plan, phi, base) / base_goodput,
            "recommended": size == rec.plan.batch_size, "base": size == base,
        })
    return rows


def render_doc(doc: dict, console: Console) -> None:
    """The tables, from the JSON document (an --isolate child's report arrives as one)."""
    if "memory" in doc:
        console.print(_memory_table(doc["memory"]))
    if "recommendation" in doc:
        console.print(_candidates_table(doc))
    elif "throughput" in doc:
        console.print(_throughput_table(doc["throughput"]))
    if "noise" in doc:
        console.print(_noise_table(doc["noise"]))
        if len(doc["noise"].get("series", [])) > 1:
            console.print(_series_table(doc["noise"]))
    if "recommendation" in doc:
        console.print(_recommendation_table(doc["recommendation"]))
        if doc["recommendation"].get("schedule"):
            console.print(_schedule_table(doc["recommendation"]))
    if "plan" in doc:
        console.print(_plan_table(doc["plan"]))
    if "recommendation" in doc:
        console.print(paste_line(doc["recommendation"]), highlight=False, markup=False, soft_wrap=True)


def paste_line(r: dict) -> str:
    """The advice as one plain line to paste into a training script's settings."""
    beta2 = f" beta2={r['beta2']:.4g}" if r.get("beta2") is not None else ""
    return (f"batch_size={r['batch_size']} micro_batch={r['micro_batch']} accumulation={r['accumulation_steps']} "
            f"lr={r['learning_rate']:.4g} warmup={r['warmup_steps']}{beta2}")


def _facts(title: str, columns: int = 3) -> Table:
    """A table of named figures (name, value, how it was obtained). At any width (80 columns in a CI log, a
    pipe) a long value or rule folds onto the next line whole: nothing is cut off with an ellipsis."""
    table = Table(title=title, show_header=False, title_justify="left")
    for _ in range(columns):
        table.add_column(overflow="fold")
    return table


def _memory_table(m: dict) -> Table:
    table = _facts(title="Memory")
    note = " (search limit: at least)" if m["at_search_limit"] else ""
    table.add_row("largest batch that fits", f"{m['max_batch']}{note}", m["method"])
    if m.get("real_steps"):
        table.add_row("predicted by the trace", str(m["predicted_max_batch"]),
                      f"{m['real_steps']} real steps confirmed or corrected it")
    table.add_row(f"with {m['margin']:.0%} margin kept free", str(m["safe_max_batch"]),
                  "tracked, calibrated by the real steps (real against traced)" if m.get("real_steps") else "tracked")
    table.add_row("budget", format_bytes(m["budget_bytes"]), m["budget_source"])
    if m.get("context_bytes"):
        table.add_row("CUDA context", format_bytes(m["context_bytes"]), "measured: NVML free before - after, "
                      "less the allocator's reserve; charged to every real step")
    table.add_row("per example", format_bytes(m["bytes_per_sample"]), "tracked (affine fit of traced peaks)")
    table.add_row("fixed (weights, grads, optimizer)", format_bytes(m["fixed_bytes"]), "tracked (affine fit)")
    return table


def _throughput_table(t: dict) -> Table:
    table = Table(title="Throughput (" + t["method"] + ")", title_justify="left")
    for column in ("batch", "step time", "samples/s", "optimizer step"):
        table.add_column(column, justify="right")
    for p in t["points"]:
        table.add_row(str(p["batch"]), _seconds(p["step_seconds"]), _rate(p["samples_per_second"]),
                      _seconds(p["optimizer_seconds"]))
    return table


def _candidates_table(doc: dict) -> Table:
    # Borderless with short two-line headers so that 80 columns hold it; a figure and its source letter
    # never wrap apart (no_wrap), so no letter lands on a line of its own.
    table = Table(title="Candidate batch sizes", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, collapse_padding=True,
                  caption="m = measured, t = tracked, e = estimated from the fits", caption_justify="left")
    for column in ("batch", "micro x\nsteps", "peak\nmemory", "step\ntime", "samples\n/s", "stat.\neff.",
                   "goodput\nvs base", ""):
        table.add_column(column, justify="right", no_wrap=True)
    for row in doc["candidates"]:
        mark = "best" if row["recommended"] else ("base" if row["base"] else "")
        style = "bold green" if row["recommended"] else None
        table.add_row(
            str(row["batch"]), f"{row['micro_batch']} x {row['accumulation_steps']}",
            f"{format_bytes(row['peak_bytes'])} {row['peak_source'][0]}",
            f"{_seconds(row['step_seconds'])} {row['step_source'][0]}", _rate(row["samples_per_second"]),
            f"{row['statistical_efficiency']:.3f}", f"{row['goodput_vs_base']:.2f}x", mark, style=style)
    return table


def _batch_source(report) -> str:
    """'sweep' when short runs chose between several of the plateau's batches, else 'plateau rule'."""
    sweep = report.sweep
    return "sweep" if sweep is not None and len(sweep.trials) > 1 and sweep.chosen is not None else "plateau rule"


def _batch_method(report) -> str:
    if _batch_source(report) == "sweep":
        return ("measured: of the goodput plateau's batches, the one whose short runs trained furthest in the "
                "same counted time, from initialisation and from the noise probe's last weights")
    return "estimated: goodput from the step-time fit and the measured noise scale"


def _noise_table(n: dict) -> Table:
    table = _facts(title="Gradient noise scale")
    lo, hi = (_number(x) for x in n["ci95"])
    table.add_row("B_simple", _number(n["b_simple"]), f"95% interval [{lo}, {hi}]")
    table.add_row("|G|^2", f"{n['grad_sq_norm']:.4g}", "preconditioned (Adam)" if n["preconditioned"] else "raw")
    table.add_row("tr(Sigma)", f"{n['trace_sigma']:.4g}", n["method"])
    return table


def _series_table(n: dict) -> Table:
    table = Table(title=f"Noise scale along the base setting's training (batch {n['train_batch']})",
                  title_justify="left", caption=f"measured; the advice uses the late points; the series ended at "
                                                f"{n['stopped']}", caption_justify="left")
    for column in ("step", "examples", "loss", "B_simple", "95% interval"):
        table.add_column(column, justify="right")
    for p in n["series"]:
        lo, hi = (_number(x) for x in p["ci95"])
        table.add_row(str(p["step"]), f"{p['examples']:,}", f"{p['loss']:.4g}", _number(p["b_simple"]), f"[{lo}, {hi}]")
    return table


def _schedule_table(r: dict) -> Table:
    table = Table(title="Batch-size schedule (the noise scale grows: ramp the batch)", title_justify="left",
                  caption="estimated from the noise series; rates by the rule, scaled as the sweep found",
                  caption_justify="left")
    for column in ("from step", "from examples", "batch", "micro x steps", "learning rate"):
        table.add_column(column, justify="right")
    for e in r["schedule"]:
        table.add_row(str(e["from_step"]), f"{e['from_examples']:,}", str(e["batch_size"]),
                      f"{e['micro_batch']} x {e['accumulation_steps']}", f"{e['learning_rate']:.4g}")
    return table


def _plan_table(p: dict) -> Table:
    table = _facts(f"Plan for {p['gpus']} GPUs ({p['profile']}): a prediction")
    table.add_row("batch size", f"{p['global_batch']} = {p['gpus']} x {p['per_device_micro_batch']} x "
                  f"{p['accumulation_steps']} accumulation", "predicted")
    table.add_row("step time", f"{p['step_seconds']:.4g} s", f"all-reduce {p['allreduce_seconds']:.3g} s included")
    table.add_row("learning rate", f"{p['learning_rate']:.4g}", f"x{p['lr_factor']:.3g}")
    table.add_row("how", p["method"], "")
    return table


def _recommendation_table(r: dict) -> Table:
    table = _facts(title="Recommendation")
    devices = r.get("devices", 1)
    per = f"{devices} devices x " if devices > 1 else ""
    table.add_row("batch size", f"{r['batch_size']} = {per}{r['micro_batch']} x {r['accumulation_steps']} accumulation",
                  r["method"])
    if r.get("lr_source") == "sweep":
        table.add_row("learning rate", f"{r['learning_rate']:.4g}", f"measured: {r['lr_sweep']['method']}")
        table.add_row("the rule's rate", f"{r['rule_learning_rate']:.4g}", r["lr_rule"])
    else:
        table.add_row("learning rate", f"{r['learning_rate']:.4g}",
                      f"{r['lr_factor']:.3g} x {r['base_lr']:.3g}: {r['lr_rule']}")
    if r.get("beta2") is not None:
        table.add_row("beta2", f"{r['beta2']:.4g}", f"from {r['base_beta2']:g}: half-life kept in examples")
    if r.get("plateau"):
        table.add_row("goodput plateau", f"{r['plateau'][0]} to {r['plateau'][1]}",
                      f"within {r['plateau_tolerance']:.0%} of the best (at {r['plateau_best']}); estimated")
    table.add_row("warm-up steps", str(r["warmup_steps"]), "a tenth of the run the probe "
                  "followed" if r["warmup_steps"] else "not needed")
    for reason in r["reasons"]:
        table.add_row("why", reason, "")
    return table


def _rate(per_second: float) -> str:
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"


def _number(x: float | None) -> str:
    return "unbounded" if x is None else f"{x:.4g}"


def _seconds(s: float) -> str:
    if not math.isfinite(s):
        return "-"
    return f"{s * 1000:.3g} ms" if s < 1 else f"{s:.3g} s"


def check_json(check) -> dict:
    return {
        "schema_version": SCHEMA_VERSION, "fits": check.fits, "passed": check.passed,
        "batch_size": check.batch_size, "peak_bytes": check.peak_bytes, "budget_bytes": check.budget_bytes,
        "usable_bytes": check.usable_bytes, "margin": check.margin, "headroom_bytes": check.headroom_bytes,
        "max_batch": check.max_batch, "min_max_batch": check.min_max_batch, "profile": check.profile,
        "method": f"{check.method}; plus the CUDA terms listed; budget from the profile",
        "traced_peak_bytes": next((t.bytes for t in check.terms if t.name == "traced_step"), None),
        "terms": [t.to_json() for t in check.terms],
        "budget_terms": [t.to_json() for t in check.budget_terms],
        "shard": check.shard,
        "notes": check.notes,
        "seconds": check.seconds,
    }


def render_check(check, console: Console) -> None:
    verdict = "[bold green]fits[/]" if check.fits else "[bold red]does not fit[/]"
    table = _facts(f"Capacity check on {check.profile}: batch {check.batch_size} {verdict}")
    table.add_row("peak of a training step" + (f" (one of {check.shard} GPUs)" if check.shard else ""),
                  format_bytes(check.peak_bytes), "the terms below, summed")
    for term in check.terms:
        table.add_row(f"  {term.name.replace('_', ' ')}", format_bytes(term.bytes), term.source)
    table.add_row(f"budget ({check.margin:.0%} margin kept)", format_bytes(check.budget_bytes),
                  f"from the profile: {format_bytes(check.usable_bytes)} usable")
    table.add_row("headroom", format_bytes(check.headroom_bytes), "budget - peak")
    floor = f"; required at least {check.min_max_batch}" if check.min_max_batch is not None else ""
    table.add_row("largest batch that fits", str(check.max_batch), f"tracked{floor}")
    console.print(table)


def render_profiles(profiles: list[dict], console: Console) -> None:
    table = Table(title="Hardware profiles", title_justify="left")
    for column in ("name", "device", "memory", "usable", "source", "where"):
        table.add_column(column)
    for p in profiles:
        table.add_row(p["name"], p["display_name"], format_bytes(p["total_memory_bytes"]),
                      format_bytes(usable_bytes(p)), p["source"], p["location"])
    console.print(table)


def render_profile(profile: dict, console: Console) -> None:
    table = _facts(f"Profile {profile['name']}", columns=2)
    for key in sorted(profile):
        value = profile[key]
        shown = format_bytes(value) + f" ({value})" if key.endswith("_bytes") and value is not None else str(value)
        table.add_row(key, shown)
    console.print(table)
