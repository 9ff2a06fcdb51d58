"""Soak: `recommend` many times in one process must not grow memory.

    python benchmarks/soak.py [--runs 20] [--model examples/mlp_unicode.py]

Runs the real CLI in-process (typer's CliRunner) and prints the resident set size after each run;
the last line compares the late runs with the early ones.
"""

import argparse
import json
import resource
import time
from pathlib import Path

from typer.testing import CliRunner

from advisor.cli import app


def rss_mib() -> float:
    """Current resident set size (not the peak): /proc/self/statm's second field, in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--model", default="examples/mlp_unicode.py")
    args = parser.parse_args()
    if args.runs < 4:
        parser.error("--runs: at least 4 (the trend is a slope over each half of the runs)")
    command = ["recommend", args.model, "--device", "cpu", "--memory", "256MiB", "--max-step-seconds", "0.2", "--json"]
    runner, trend = CliRunner(), []
    print(f"bsadvisor {' '.join(command)}, {args.runs} times in one process")
    print("| run | seconds | RSS MiB | recommended batch |\n|---|---|---|---|")
    for run in range(1, args.runs + 1):
        started = time.perf_counter()
        result = runner.invoke(app, command)
        if result.exit_code != 0:
            raise SystemExit(f"run {run} failed ({result.exit_code}): {result.output}")
        batch = json.loads(result.stdout)["recommendation"]["batch_size"]
        trend.append(rss_mib())
        print(f"| {run} | {time.perf_counter() - started:.1f} | {trend[-1]:.1f} | {batch} |")
    half = len(trend) // 2
    print(f"RSS after run 1: {trend[0]:.1f} MiB, after run {len(trend)}: {trend[-1]:.1f} MiB; trend "
          f"{slope(trend[:half]):+.2f} MiB/run over runs 1-{half}, {slope(trend[half:]):+.2f} MiB/run over "
          f"runs {half + 1}-{len(trend)}")


def slope(values: list[float]) -> float:
    """Least-squares slope of values against their index."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    return sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / sum((i - mean_x) ** 2 for i in range(n))


if __name__ == "__main__":
    main()
