"""Output a person reads (#14): progress bars that complete, tables that fit 80 columns without cutting or
stranding a figure."""

import io
import re

from rich.console import Console

from advisor.cli import _stages
from advisor.tables import render_doc


def terminal(width: int = 80) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=width, color_system=None), out


def test_a_stage_that_stops_early_is_shown_complete_when_the_next_one_starts_or_the_run_ends():
    console, out = terminal()
    with _stages(console) as stage:
        stage("tracing peak memory")(0, 1)   # reports only its start
        stage("timing steps")(7, 16)         # stops early
    shown = out.getvalue()
    assert "1/1" in shown and "16/16" in shown, shown


def row(batch, micro, peak_source="tracked", step_source="measured", seconds=0.0239, **extra):
    return {"batch": batch, "micro_batch": micro, "accumulation_steps": batch // micro, "devices": 1,
            "peak_bytes": 60 * batch + 196, "peak_source": peak_source, "step_seconds": seconds,
            "step_source": step_source, "samples_per_second": batch / seconds, "statistical_efficiency": 0.5,
            "goodput_vs_base": 1.0, "recommended": False, "base": False, **extra}


RULE = "adam-sqrt: lr0*sqrt((1+phi/B0)/(1+phi/B)) (Malladi et al. 2022)"
DOC = {
    "memory": {"max_batch": 16777216, "at_search_limit": True, "real_steps": 0, "margin": 0.1,
               "method": "tracked: live tensor bytes of a steady-state step traced under FakeTensorMode",
               "safe_max_batch": 16777216, "budget_bytes": 24401096704, "context_bytes": 0,
               "budget_source": "host available memory (/proc/meminfo MemAvailable)", "bytes_per_sample": 60.0,
               "fixed_bytes": 196.0, "predicted_max_batch": None},
    "candidates": [row(1, 1, seconds=0.000245, recommended=True), row(32, 32, base=True),
                   row(16777216, 16777216, step_source="estimated", seconds=7736.75),
                   row(33554432, 16777216, peak_source="estimated", step_source="estimated", seconds=15473.5)],
    "noise": {"b_simple": 96.12, "ci95": [81.57, 115.03], "grad_sq_norm": 0.03728, "trace_sigma": 3.584,
              "preconditioned": True, "method": "measured on CPU: 32 snapshots of 8 micro-batches of 32"},
    "recommendation": {"devices": 1, "batch_size": 1, "micro_batch": 1, "accumulation_steps": 1,
                       "method": "estimated: goodput from the step-time fit and the measured noise scale",
                       "learning_rate": 0.000203, "lr_factor": 0.203, "base_lr": 0.001, "lr_rule": RULE,
                       "warmup_steps": 0, "reasons": ["goodput B/T(B)*E(B) is highest at batch 1"]},
}


def test_the_tables_fit_80_columns_and_keep_each_figure_whole():
    console, out = terminal(80)
    render_doc(DOC, console)
    shown = out.getvalue()
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in shown  # nothing cut off
    # no source letter (m, t, e) stranded on a line of its own, away from its figure
    assert not [line for line in lines if re.fullmatch(r"[\s│┃|]*[mte][\s│┃|mte]*", line)], shown
    for figure in ("0.245 ms m", "7.74e+03 s e", "16777216 x 1", "16777216 x 2", "1.88 GiB e"):
        assert figure in shown, (figure, shown)
    flat = re.sub(r"[\s│┃┌┐└┘├┤┬┴┼─━]", "", shown)
    assert RULE.replace(" ", "") in flat  # folded onto the next line, whole
