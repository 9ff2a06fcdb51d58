"""Capacity checks at LLM scale (#12): what `bsadvisor check` costs and says for Llama-shaped models on a CPU.

    python3 benchmarks/llm_check.py              # everything below (~5 min on a 2-core VM)
    python3 benchmarks/llm_check.py --quick      # TinyLlama only, to check the script
    python3 benchmarks/llm_check.py --from-results

1. `bsadvisor check MODEL --profile h100-sxm-80gb --batch-size 1 --json`, each in its own process under
   `/usr/bin/time -v` (wall time and peak resident memory of the whole command, interpreter start included),
   with the load average beside it: TinyLlama-1.1B and Llama-3-8B (full fine-tune, AdamW, bf16, 2048
   tokens), the same built in float32 and converted in `model()`, Llama-3-8B with LoRA, Llama-3-8B with
   `--shard 8` (ZeRO-3, `--zero-stage 2` and `--zero-stage 1`, each `--shard-wrap`), Llama-3-8B with
   gradient checkpointing (with and without `--shard 8`), the LoRA set-up torchtune publishes a peak for,
   and, where `transformers` is installed, transformers' own LlamaForCausalLM built from a Llama-3-8B
   config and GPT-2 small against a100-sxm-40gb (no download).
2. Tracing cost: seconds a traced step takes against the operators it dispatches, for TinyLlama, Llama-3-8B
   and Llama-3-8B at half depth, each at batch 1 and 16: the cost follows the operator count, not the
   parameters or the batch.
3. Estimates beside each other, same model shapes: bsadvisor's CI estimate (check's peak_bytes at batch 1),
   accelerate's `estimate-memory` "Training using Adam" (its own functions, `calculate_maximum_sizes` and
   `estimate_training_usage`, run on our model built on the meta device, as `create_empty_model` builds a Hub
   model), DeepSpeed's ZeRO-2 and ZeRO-3 model-state estimators (their formulas, reimplemented below from
   deepspeed/runtime/zero/stage_1_and_2.py and stage3.py at commit 007cca6: DeepSpeed's setup.py imports torch
   and its estimators need it installed), and published peaks where a primary source gives them
   (torchtune's README, commit 30b8519e8, Llama 3.1 8B).

Needs bsadvisor installed; accelerate and transformers are optional (their rows say "not installed").
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))

import torch  # noqa: E402

import common  # noqa: E402

STUDY = "llm_check"
MODELS = common.REPO / "benchmarks" / "models"
PROFILE = "h100-sxm-80gb"
GiB = 2**30

CHECKS = [  # (label, model file, extra flags); batch 1 unless --batch-size is among the flags
    ("TinyLlama-1.1B, full fine-tune", "tinyllama.py", []),
    ("Llama-3-8B, full fine-tune", "llama3_8b.py", []),
    ("Llama-3-8B, LoRA r16 on q,k,v,o", "llama3_8b_lora.py", []),
    ("Llama-3-8B, full fine-tune, --shard 8", "llama3_8b.py", ["--shard", "8"]),
    ("Llama-3-8B, full fine-tune, --shard 8 --zero-stage 2", "llama3_8b.py", ["--shard", "8", "--zero-stage", "2"]),
    ("Llama-3-8B, full fine-tune, --shard 8 --zero-stage 1", "llama3_8b.py", ["--shard", "8", "--zero-stage", "1"]),
    ("Llama-3-8B, full fine-tune, --shard 8 --shard-wrap torchtitan", "llama3_8b.py",
     ["--shard", "8", "--shard-wrap", "torchtitan"]),
    ("Llama-3-8B, full fine-tune, --shard 8 --shard-wrap all", "llama3_8b.py", ["--shard", "8", "--shard-wrap", "all"]),
    ("Llama-3-8B, built float32, .to(torch.bfloat16) in model()", "llama3_8b_converted.py", []),
    ("Llama-3-8B, full, gradient checkpointing", "llama3_8b_checkpointed.py", []),
    ("Llama-3-8B, full, gradient checkpointing, --shard 8", "llama3_8b_checkpointed.py", ["--shard", "8"]),
    ("Llama-3-8B (transformers LlamaForCausalLM), full fine-tune", "llama3_8b_hf.py", []),
    ("Llama-3.1-8B, LoRA as torchtune's 8B_lora_single_device (batch 2)", "llama3_8b_torchtune_lora.py",
     ["--batch-size", "2"]),
    ("GPT-2 small (transformers GPT2LMHeadModel), 1024 tokens, on a100-sxm-40gb", "gpt2_small_hf.py",
     ["--profile", "a100-sxm-40gb"]),
]
NEEDS_TRANSFORMERS = ("llama3_8b_hf.py", "gpt2_small_hf.py")
QUICK_CHECKS = CHECKS[:1]

# torchtune README at commit 30b8519e8 (2024-09-24, "Readme Updates (#1664)"), "Memory and training speed":
# Llama 3.1 8B, batch size 2, a dataset packed to 2048 tokens, torch.compile on; "Peak Memory per GPU".
PUBLISHED = {
    "Llama-3.1-8B, LoRA as torchtune's 8B_lora_single_device (batch 2)": [
        ("torchtune README @30b8519e8: LoRA, 1x RTX 4090", 16.2 * GiB),
        ("torchtune README @30b8519e8: LoRA, 1x A6000", 30.3 * GiB)],
    "Llama-3-8B, full fine-tune": [
        ("torchtune README @30b8519e8: full fine-tune, 1x A6000 (paged 8-bit AdamW, optimizer in backward, "
         "activation checkpointing: another set-up)", 37.4 * GiB)],
}


# ---- 1. check, as a CI job runs it ----------------------------------------------------------------

def load_average() -> float:
    return os.getloadavg()[0]


def run_check(model: str, flags: list[str]) -> dict:
    """One `bsadvisor check` process under /usr/bin/time -v: its JSON, wall time, peak RSS, load before/after."""
    batch = [] if "--batch-size" in flags else ["--batch-size", "1"]
    profile = [] if "--profile" in flags else ["--profile", PROFILE]
    command = ["/usr/bin/time", "-v", *common.BSADVISOR, "check", str(MODELS / model), *profile, *batch, *flags, "--json"]
    load_before = load_average()
    done = subprocess.run(command, capture_output=True, text=True, cwd=common.REPO)
    timing = done.stderr
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", timing).group(1)
    seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(wall.split(":"))))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing).group(1)) * 1024
    doc = json.loads(done.stdout) if done.stdout.strip() else None
    notes = [line for line in timing.splitlines() if line.startswith(("note:", "bsadvisor: error"))]
    return {"model": model, "flags": flags, "exit": done.returncode, "seconds": seconds, "rss_bytes": rss,
            "load_before": load_before, "load_after": load_average(), "doc": doc, "stderr_lines": notes}


# ---- 2. the cost of tracing ---------------------------------------------------------------------

def tracing_cost(quick: bool) -> list[dict]:
    """Seconds per traced step and operators dispatched, fake-built, at batch 1 and 16."""
    import llama
    from advisor.memory import tracker as tracker_module
    from advisor.memory.trace import StepTracer, release_trace_caches
    from advisor.inputs import spec_from

    configs = [("TinyLlama-1.1B", llama.TINYLLAMA_1B)]
    if not quick:
        configs += [("Llama-3-8B, 16 layers", dataclasses.replace(llama.LLAMA3_8B, num_hidden_layers=16)),
                    ("Llama-3-8B", llama.LLAMA3_8B)]
    counted = {"ops": 0}
    original = tracker_module.LiveStorageTracker.__torch_dispatch__

    def counting(self, func, types, args=(), kwargs=None):
        counted["ops"] += 1
        return original(self, func, types, args, kwargs)

    rows = []
    tracker_module.LiveStorageTracker.__torch_dispatch__ = counting
    try:
        for name, config in configs:
            spec = spec_from(lambda c=config: llama.LlamaForCausalLM(c), lambda n, c=config: llama.token_batch(c, n, 2048),
                             loss=llama.lm_loss, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5), name=f"{name}.py")
            started = time.perf_counter()
            tracer = StepTracer(spec, fake=True, build_fake=True, batch_on_host=False)
            built = time.perf_counter() - started
            for batch in (1, 16):
                counted["ops"] = 0
                load = load_average()
                started = time.perf_counter()
                peak = tracer.peak(batch)
                seconds = time.perf_counter() - started
                rows.append({"model": name, "parameters": llama.parameter_count(config), "layers": config.num_hidden_layers,
                             "batch": batch, "operators": counted["ops"], "seconds": seconds,
                             "microseconds_per_operator": 1e6 * seconds / counted["ops"], "peak_bytes": peak,
                             "build_and_first_step_seconds": built, "load": load})
            release_trace_caches()
    finally:
        tracker_module.LiveStorageTracker.__torch_dispatch__ = original
    return rows


# ---- 3. other estimators --------------------------------------------------------------------------

def deepspeed_zero2_gpu_bytes(total_params: int, gpus: int = 1) -> int:
    """deepspeed/runtime/zero/stage_1_and_2.py estimate_zero2_model_states_mem_needs, cpu_offload=False:
    gpu_mem = 4 * total_params + int(16 * total_params / total_gpus)."""
    return 4 * total_params + int(16 * total_params / gpus)


def deepspeed_zero3_gpu_bytes(total_params: int, largest_layer_params: int, gpus: int = 1) -> int:
    """deepspeed/runtime/zero/stage3.py estimate_zero3_model_states_mem_needs, cpu_offload=False:
    gpu_mem = 4 * largest_layer_params + int(18 * total_params / total_gpus)."""
    return 4 * largest_layer_params + int(18 * total_params / gpus)


def meta_model(config):
    import llama

    with torch.device("meta"):
        return llama.LlamaForCausalLM(dataclasses.replace(config, dtype=torch.float32))


def estimates(config) -> dict:
    """accelerate's and DeepSpeed's figures for one model shape (float32 meta model, as accelerate builds one)."""
    model = meta_model(config)
    total_params = sum(p.numel() for p in model.parameters())
    largest_layer = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    out = {"parameters": total_params, "largest_layer_parameters": largest_layer,
           "deepspeed_zero2_gpu_bytes": deepspeed_zero2_gpu_bytes(total_params),
           "deepspeed_zero3_gpu_bytes": deepspeed_zero3_gpu_bytes(total_params, largest_layer),
           "accelerate": None}
    try:
        from accelerate.commands.estimate import estimate_training_usage
        from accelerate.utils import calculate_maximum_sizes
    except ImportError:
        return out
    total_size, _ = calculate_maximum_sizes(model)
    out["accelerate"] = {dtype: max(estimate_training_usage(total_size, dtype).values())
                         for dtype in ("float32", "float16")}
    return out


# ---- the study ----------------------------------------------------------------------------------

def run(quick: bool) -> dict:
    import llama

    checks = []
    for label, model, flags in (QUICK_CHECKS if quick else CHECKS):
        if model in NEEDS_TRANSFORMERS and not _has("transformers"):
            checks.append({"label": label, "skipped": "transformers is not installed"})
            continue
        print(f"check: {label} ...", file=sys.stderr, flush=True)
        checks.append({"label": label, **run_check(model, flags)})
    configs = {"TinyLlama-1.1B": llama.TINYLLAMA_1B, "Llama-3-8B": llama.LLAMA3_8B}
    return {"command": common.command_line(), "machine": common.machine(), "profile": PROFILE, "checks": checks,
            "tracing": tracing_cost(quick),
            "estimates": {name: estimates(c) for name, c in configs.items() if not quick or name == "TinyLlama-1.1B"},
            "published": {k: [[what, value] for what, value in v] for k, v in PUBLISHED.items()}}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def gib(n) -> str:
    return "-" if n is None else f"{n / GiB:.2f} GiB"


def markdown(data: dict) -> str:
    lines = [f"`bsadvisor check MODEL --profile {data['profile']} --batch-size 1 --json` (batch 2 where said), one "
             "process each under `/usr/bin/time -v`; load average (1 min) before and after each.", ""]
    rows = []
    for c in data["checks"]:
        if "skipped" in c:
            rows.append([c["label"], "-", "-", "-", "-", "-", f"skipped: {c['skipped']}"])
            continue
        doc = c["doc"] or {}
        rows.append([c["label"], f"{c['seconds']:.1f} s", gib(c["rss_bytes"]), gib(doc.get("peak_bytes")),
                     str(doc.get("max_batch", "-")),
                     {0: "fits", 1: "does not fit"}.get(c["exit"], f"exit {c['exit']}") + f" (batch {doc.get('batch_size')})",
                     f"{c['load_before']:.2f} / {c['load_after']:.2f}"])
    lines.append(common.table(["model", "wall time", "peak RSS", "peak on one GPU (estimated)", "largest batch",
                               "verdict", "load before / after"], rows))
    by_label = {c["label"]: c for c in data["checks"] if "doc" in c and c["doc"]}
    full, shard = by_label.get("Llama-3-8B, full fine-tune"), by_label.get("Llama-3-8B, full fine-tune, --shard 8")
    if full and shard:
        import llama

        states = 8 * llama.parameter_count(llama.LLAMA3_8B)
        drop = full["doc"]["peak_bytes"] - shard["doc"]["peak_bytes"]
        lines += ["", f"Model states of the full fine-tune (bf16 weights, bf16 gradients, two bf16 AdamW moments: 8 bytes a "
                  f"parameter): {gib(states)}. Unsharded peak {gib(full['doc']['peak_bytes'])}; with `--shard 8` "
                  f"{gib(shard['doc']['peak_bytes'])} on one GPU: {gib(drop)} less, against 7/8 of the model states, "
                  f"{gib(states * 7 / 8)}."]
        for wrap in ("torchtitan", "all"):
            other = by_label.get(f"Llama-3-8B, full fine-tune, --shard 8 --shard-wrap {wrap}")
            if other:
                lines[-1] += (f" With `--shard-wrap {wrap}`: {gib(other['doc']['peak_bytes'])}, "
                              f"{gib(full['doc']['peak_bytes'] - other['doc']['peak_bytes'])} less.")
    zero2 = by_label.get("Llama-3-8B, full fine-tune, --shard 8 --zero-stage 2")
    if full and zero2:
        import llama

        weights = 2 * llama.parameter_count(llama.LLAMA3_8B)
        lines += ["", f"With `--zero-stage 2` (parameters whole, gradients and optimizer state sharded): "
                  f"{gib(zero2['doc']['peak_bytes'])} on one GPU of 8, {gib(zero2['doc']['peak_bytes'] - shard['doc']['peak_bytes'])} "
                  f"above ZeRO-3, against 7/8 of the bf16 weights, {gib(weights * 7 / 8)}."]
    zero1 = by_label.get("Llama-3-8B, full fine-tune, --shard 8 --zero-stage 1")
    if full and zero1:
        import llama

        moments = 4 * llama.parameter_count(llama.LLAMA3_8B)  # AdamW's two bf16 moments
        buckets = next(t["bytes"] for t in zero1["doc"]["terms"] if t["name"] == "ddp_gradient_buckets")
        lines += ["", f"With `--zero-stage 1` (optimizer state sharded, parameters and gradients whole): "
                  f"{gib(zero1['doc']['peak_bytes'])} on one GPU of 8, of which {gib(buckets)} are DDP's gradient "
                  f"buckets; the traced step, {gib(zero1['doc']['traced_peak_bytes'])}, is "
                  f"{gib(full['doc']['traced_peak_bytes'] - zero1['doc']['traced_peak_bytes'])} below the unsharded "
                  f"one, against 7/8 of the AdamW moments, {gib(moments * 7 / 8)}."]
    lines += ["", "Tracing cost (fake-built, CPU kernels, one traced step; load average beside):", ""]
    lines.append(common.table(
        ["model", "layers", "parameters", "batch", "operators", "seconds", "µs / operator", "load"],
        [[t["model"], t["layers"], f"{t['parameters'] / 1e9:.2f} B", t["batch"], t["operators"], f"{t['seconds']:.2f}",
          f"{t['microseconds_per_operator']:.0f}", f"{t['load']:.2f}"] for t in data["tracing"]]))
    lines += ["", "Estimates beside each other (batch 1; bsadvisor's is check's peak_bytes on the profile):", ""]
    rows = []
    for c in data["checks"]:
        if "doc" not in c or not c["doc"] or "--shard" in c["flags"] or "GPT-2" in c["label"]:
            continue
        shape = "TinyLlama-1.1B" if "TinyLlama" in c["label"] else "Llama-3-8B"
        e = data["estimates"].get(shape)
        if e is None:
            continue
        acc = e["accelerate"]
        published = "; ".join(f"{what}: {value / GiB:.1f} GiB" for what, value in data["published"].get(c["label"], []))
        rows.append([c["label"], gib(c["doc"]["peak_bytes"]),
                     "not installed" if acc is None else f"{gib(acc['float16'])} (fp16) / {gib(acc['float32'])} (fp32)",
                     gib(e["deepspeed_zero2_gpu_bytes"]), gib(e["deepspeed_zero3_gpu_bytes"]), published or "-"])
    lines.append(common.table(["model, set-up", "bsadvisor (CI estimate)", "accelerate estimate-memory, training with Adam",
                               "DeepSpeed ZeRO-2 model states, 1 GPU", "DeepSpeed ZeRO-3 model states, 1 GPU",
                               "published peak"], rows))
    return "\n".join(lines)


def main() -> None:
    ap = common.argument_parser(__doc__, STUDY, "TinyLlama only")
    args = common.parse_arguments(ap)
    name = common.results_name(STUDY, args.quick)
    data = common.load_results(name) if args.from_results else run(args.quick)
    if not args.from_results:
        common.save_results(name, data)
    text = markdown(data)
    if not args.no_doc and not args.quick:
        common.write_section(STUDY, "\n".join([f"Run: `{data['command']}` on {common.machine_line(data['machine'])}.",
                                               "", text]))
    print(text)


if __name__ == "__main__":
    main()
