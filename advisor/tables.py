"""The rich tables people read, drawn from the JSON document scripts read (advisor/results.py).

Rendering only: every figure is in the document already (an --isolate child's report arrives as one),
each with how it was obtained.
"""

import math

from rich import box
from rich.console import Console
from rich.table import Table

from advisor.hardware.profiles import usable_bytes
from advisor.units import format_bytes

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


def render_check(check: dict, console: Console) -> None:
    """The capacity check's table, from its document (CapacityCheck.to_dict())."""
    verdict = "[bold green]fits[/]" if check["fits"] else "[bold red]does not fit[/]"
    table = _facts(f"Capacity check on {check['profile']}: batch {check['batch_size']} {verdict}")
    table.add_row("peak of a training step" + (f" (one of {check['shard']} GPUs)" if check["shard"] else ""),
                  format_bytes(check["peak_bytes"]), "the terms below, summed")
    for term in check["terms"]:
        table.add_row(f"  {term['name'].replace('_', ' ')}", format_bytes(term["bytes"]), term["source"])
    table.add_row(f"budget ({check['margin']:.0%} margin kept)", format_bytes(check["budget_bytes"]),
                  f"from the profile: {format_bytes(check['usable_bytes'])} usable")
    table.add_row("headroom", format_bytes(check["headroom_bytes"]), "budget - peak")
    floor = f"; required at least {check['min_max_batch']}" if check["min_max_batch"] is not None else ""
    table.add_row("largest batch that fits", str(check["max_batch"]), f"tracked{floor}")
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
