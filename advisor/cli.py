"""The `bsadvisor` command line: parses flags, calls the pipeline, renders. Nothing else."""

import contextlib
import ctypes
import json
import math
import os
import signal
import sys
import threading
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from advisor import __version__
from advisor.errors import (EXIT_DOES_NOT_FIT, EXIT_INTERRUPTED, EXIT_PROBE_FAILED, EXIT_TERMINATED, AdvisorError,
                            BadInput, Terminated, one_line)
from advisor.watchdog import DEFAULT_COLLECTIVE_TIMEOUT, DEFAULT_STEP_TIMEOUT, probe, watching

app = typer.Typer(
    help="Which batch size and which learning rate: measured memory, throughput and gradient noise.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)

Model = Annotated[str, typer.Argument(help="A model file: defines model() and batch(size), see the README.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
MemoryOpt = Annotated[Optional[str], typer.Option("--memory", help="Memory budget, e.g. 512MiB or 12GB "
                                                  "(default: what the device has free).")]
MarginOpt = Annotated[float, typer.Option("--margin", help="Fraction of the budget kept free, in [0, 1).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for the model's initialisation and the batches.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON document instead of tables.")]
BaseBatchOpt = Annotated[Optional[int], typer.Option("--base-batch", help="Batch size the learning rate was tuned at "
                                                     "(default: the file's BASE_BATCH_SIZE).")]
WarmupOpt = Annotated[int, typer.Option("--noise-warmup-steps", help="Training steps before the noise is measured.")]
TimeoutOpt = Annotated[float, typer.Option("--step-timeout", help="Seconds a call into the model file (a step, "
                                           "batch(), model()) may take before the run ends with exit 4.")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="Take the memory budget from a hardware "
                                                  "profile (a name from `profile list`, or a .json path).")]
IsolateOpt = Annotated[bool, typer.Option("--isolate", help="Run the probes in a child process: a crash in the "
                                           "model file or the driver is reported (exit 4), not fatal.")]
NprocOpt = Annotated[Optional[int], typer.Option("--nproc-per-node", help="Run the probes as a data-parallel "
                                                 "torch.distributed job of this many local ranks (Gloo on the "
                                                 "CPU, NCCL on CUDA), as torchrun would.")]
CollectiveTimeoutOpt = Annotated[float, typer.Option("--collective-timeout", help="Seconds a collective of a "
                                                     "distributed job may wait before the job ends with exit 4.")]
StepLimitOpt = Annotated[float, typer.Option("--max-step-seconds", help="Stop timing larger batches once a step "
                                             "takes longer than this.")]
NoiseBudgetOpt = Annotated[str, typer.Option("--noise-budget", help="How far the noise probe follows training: "
                                             "seconds (30s) or training steps (400steps).")]
TargetLossOpt = Annotated[Optional[float], typer.Option("--target-loss", help="The training loss your run trains "
                                                        "to: the noise probe follows training until it gets there "
                                                        "(or its budget ends).")]
ShardOpt = Annotated[Optional[int], typer.Option("--shard", help="Peak on one GPU of N under full sharding "
                                             "(FSDP2 / ZeRO-3), traced with torch's fully_shard on a fake "
                                             "process group; needs --profile.")]
AttentionOpt = Annotated[Optional[str], typer.Option("--attention", help="The attention kernel the profiled GPU "
                                                     "runs: auto (by compute capability, dtype and head size), "
                                                     "flash, efficient or math.")]
SweepOpt = Annotated[bool, typer.Option("--lr-sweep/--no-lr-sweep", help="Measure the learning rate, and the batch "
                                        "among the goodput plateau's, by short training runs (default), or take the "
                                        "rule's rate at the plateau rule's batch.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bsadvisor {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    pass


@app.command("recommend")
def recommend_command(model: Model, device: DeviceOpt = "auto", memory: MemoryOpt = None, margin: MarginOpt = 0.1,
                      profile: ProfileOpt = None, base_batch: BaseBatchOpt = None,
                      base_lr: Annotated[Optional[float], typer.Option("--base-lr", help="Learning rate tuned at "
                                                                       "the base batch (default: the optimizer's).")] = None,
                      noise_warmup_steps: WarmupOpt = 10, noise_budget: NoiseBudgetOpt = "30s", lr_sweep: SweepOpt = True,
                      target_loss: TargetLossOpt = None, max_step_seconds: StepLimitOpt = 1.0, seed: SeedOpt = 0,
                      step_timeout: TimeoutOpt = DEFAULT_STEP_TIMEOUT, isolate: IsolateOpt = False,
                      nproc_per_node: NprocOpt = None, collective_timeout: CollectiveTimeoutOpt = DEFAULT_COLLECTIVE_TIMEOUT,
                      plan_gpus: Annotated[Optional[int], typer.Option("--plan-gpus", help="Also predict the plan "
                                                                       "for this many GPUs from --profile's "
                                                                       "interconnect (a prediction).")] = None,
                      shard: ShardOpt = None, attention: AttentionOpt = None,
                      json_out: JsonOpt = False) -> None:
    """The whole advice: largest batch, throughput, gradient noise, batch size and learning rate."""
    _run(model, device, json_out, "recommendation", isolate=isolate, nproc_per_node=nproc_per_node, memory=memory,
         margin=margin, profile=profile, shard=shard, attention=attention, base_batch=base_batch, base_lr=base_lr,
         noise_warmup_steps=noise_warmup_steps, noise_budget=noise_budget, lr_sweep=lr_sweep,
         target_loss=target_loss, max_step_seconds=max_step_seconds, seed=seed,
         step_timeout=step_timeout, collective_timeout=collective_timeout, plan_gpus=plan_gpus)


@app.command("max-batch")
def max_batch_command(model: Model, device: DeviceOpt = "auto", memory: MemoryOpt = None, margin: MarginOpt = 0.1,
                      profile: ProfileOpt = None, shard: ShardOpt = None, attention: AttentionOpt = None,
                      seed: SeedOpt = 0, step_timeout: TimeoutOpt = DEFAULT_STEP_TIMEOUT,
                      isolate: IsolateOpt = False, json_out: JsonOpt = False) -> None:
    """The largest batch whose steady-state training step fits the memory budget."""
    _run(model, device, json_out, "memory", sections=("memory",), isolate=isolate, memory=memory,
         margin=margin, profile=profile, shard=shard, attention=attention, seed=seed, step_timeout=step_timeout)


@app.command("check")
def check_command(model: Model,
                  profile: Annotated[str, typer.Option("--profile", help="The device to check against: a name "
                                                       "from `profile list`, or a .json path.")],
                  batch_size: Annotated[int, typer.Option("--batch-size", help="The batch that must fit.")],
                  margin: MarginOpt = 0.1,
                  min_max_batch: Annotated[Optional[int], typer.Option("--min-max-batch", help="Also fail when the "
                                                                       "largest batch that fits drops below this.")] = None,
                  shard: ShardOpt = None, attention: AttentionOpt = None,
                  seed: SeedOpt = 0, step_timeout: TimeoutOpt = DEFAULT_STEP_TIMEOUT, json_out: JsonOpt = False) -> None:
    """CI capacity check, no GPU needed: exit 0 when the batch fits the profiled device, 1 when not."""
    with _guarded() as err:
        from advisor.capacity import check_capacity
        from advisor.hardware.profiles import load
        from advisor.report import check_json, render_check
        from advisor.spec import load_spec

        settings = _settings(margin=margin, seed=seed, step_timeout=step_timeout, check_batch=batch_size,
                             min_max_batch=min_max_batch, shard=shard, attention=attention, profile=profile)
        profile_doc = load(profile)
        with _user_output_to_stderr(), watching(settings.step_timeout), probe("capacity check"):
            result = check_capacity(load_spec(model), profile_doc, batch_size, margin, min_max_batch, seed,
                                    shard=shard, attention=attention)
        for note in result.notes:
            err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
        _emit(check_json(result), json_out, lambda out: render_check(result, out))
    if not result.passed:
        raise typer.Exit(EXIT_DOES_NOT_FIT)


profile_app = typer.Typer(help="Hardware profiles: the shipped datasheet ones and those measured here.",
                          no_args_is_help=True)
app.add_typer(profile_app, name="profile")


@profile_app.command("list")
def profile_list_command(json_out: JsonOpt = False) -> None:
    """The profiles bsadvisor knows: yours (saved here) and the shipped datasheet ones."""
    with _guarded() as err:
        from advisor.hardware.profiles import list_profiles
        from advisor.report import render_profiles

        profiles, problems = list_profiles()
        for problem in problems:
            err.print(f"warning: skipped {problem}", highlight=False, markup=False, soft_wrap=True)
        _emit(profiles, json_out, lambda out: render_profiles(profiles, out))


@profile_app.command("show")
def profile_show_command(name: Annotated[str, typer.Argument(help="A profile name, or a .json path.")],
                         json_out: JsonOpt = False) -> None:
    """One profile's fields."""
    with _guarded():
        from advisor.hardware.profiles import load
        from advisor.report import render_profile

        profile = load(name)
        _emit(profile, json_out, lambda out: render_profile(profile, out))


@profile_app.command("save")
def profile_save_command(name: Annotated[Optional[str], typer.Argument(help="Name to save under (default: "
                                                                       "from the device's name).")] = None,
                         directory: Annotated[Optional[str], typer.Option("--dir", help="Where to save (default: "
                                                                          "$BSADVISOR_HOME/profiles or the user "
                                                                          "app dir).")] = None,
                         force: Annotated[bool, typer.Option("--force", help="Overwrite a profile of that "
                                                             "name.")] = False) -> None:
    """Measure this machine's device (the GPU, else the CPU host, marked as such) into a profile."""
    with _guarded() as err:
        from pathlib import Path

        from advisor.hardware.measure import measure_host_profile
        from advisor.hardware.profiles import save

        profile = measure_host_profile(name)
        path = save(profile, Path(directory) if directory else None, force=force)
        err.print(f"saved {profile['source']} profile of {profile['display_name']} ({profile['device_type']})",
                  highlight=False)
        sys.stdout.write(f"{path}\n")


@app.command("noise")
def noise_command(model: Model, device: DeviceOpt = "auto",
                  batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Examples per snapshot, "
                                                                    "split into 8 micro-batches.")] = None,
                  noise_warmup_steps: WarmupOpt = 10, noise_budget: NoiseBudgetOpt = "30s",
                  snapshots: Annotated[int, typer.Option("--snapshots", help="Weight snapshots at each point of "
                                                         "the series.")] = 16,
                  base_batch: BaseBatchOpt = None, memory: MemoryOpt = None, seed: SeedOpt = 0,
                  step_timeout: TimeoutOpt = DEFAULT_STEP_TIMEOUT, isolate: IsolateOpt = False,
                  nproc_per_node: NprocOpt = None, collective_timeout: CollectiveTimeoutOpt = DEFAULT_COLLECTIVE_TIMEOUT,
                  json_out: JsonOpt = False) -> None:
    """The gradient noise scale B_simple (McCandlish et al. 2018) with a 95% interval."""
    _run(model, device, json_out, "noise", sections=("noise",), isolate=isolate, nproc_per_node=nproc_per_node,
         noise_batch=batch_size, base_batch=base_batch, noise_warmup_steps=noise_warmup_steps,
         noise_budget=noise_budget, noise_snapshots=snapshots, memory=memory, seed=seed, step_timeout=step_timeout,
         collective_timeout=collective_timeout)


@app.command("throughput")
def throughput_command(model: Model, device: DeviceOpt = "auto",
                       batch_sizes: Annotated[Optional[str], typer.Option("--batch-sizes", help="Comma-separated, "
                                                                          "e.g. 8,16,64 (default: powers of two "
                                                                          "up to the memory limit).")] = None,
                       memory: MemoryOpt = None, max_step_seconds: StepLimitOpt = 1.0, seed: SeedOpt = 0,
                       step_timeout: TimeoutOpt = DEFAULT_STEP_TIMEOUT, isolate: IsolateOpt = False,
                       nproc_per_node: NprocOpt = None,
                       collective_timeout: CollectiveTimeoutOpt = DEFAULT_COLLECTIVE_TIMEOUT,
                       json_out: JsonOpt = False) -> None:
    """Seconds per training step against batch size (per device in a distributed job)."""
    _run(model, device, json_out, "throughput", sections=("throughput",), isolate=isolate,
         nproc_per_node=nproc_per_node, batch_sizes=batch_sizes, memory=memory, max_step_seconds=max_step_seconds,
         seed=seed, step_timeout=step_timeout, collective_timeout=collective_timeout)


@contextlib.contextmanager
def _guarded():
    """Every failure becomes one line on stderr and its documented exit code; SIGTERM unwinds like Ctrl-C
    (children stopped, temporary files removed) and exits 143."""
    err = Console(stderr=True)
    try:
        with _sigterm_raises():
            yield err
    except AdvisorError as exc:
        from advisor.distributed import CollectiveFailed, leave_error

        message = one_line(exc, limit=None)
        if not leave_error(exc.exit_code, message, isinstance(exc, CollectiveFailed)):  # a launched rank leaves it for the launcher to say
            err.print(f"bsadvisor: error: {message}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        from advisor.distributed import launched_rank

        terminated = isinstance(exc, Terminated)
        if not launched_rank():  # the launcher says it once for the job
            err.print("bsadvisor: terminated (SIGTERM)" if terminated else "bsadvisor: interrupted", highlight=False)
        raise typer.Exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
    except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own, which it handles
        raise
    except BaseException as exc:  # a failure no seam named: still one line, never a traceback
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            raise
        err.print(f"bsadvisor: error: unexpected {type(exc).__name__}: {one_line(exc)}", highlight=False,
                  markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_PROBE_FAILED)


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises Terminated in the main thread while a command runs (where a handler can be set). A rank
    of a launched job keeps SIGTERM's default, so that the launcher's stop ends it even inside a collective."""
    from advisor.distributed import launched_rank

    if threading.current_thread() is not threading.main_thread() or launched_rank():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _user_output_to_stderr():
    """While the model file's code runs (import, model(), batch(), loss(), the optimizer), whatever it
    prints goes to stderr: sys.stdout and file descriptor 1 both, so stdout stays the report alone."""
    saved_fd, redirected = None, False
    with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout or stderr closed (`2>&-`): nothing to keep apart
        sys.stdout.flush()
        saved_fd = os.dup(1)
        os.dup2(2, 1)
        redirected = True
    if not redirected:
        if saved_fd is not None:
            os.close(saved_fd)
        yield
        return
    saved_stdout = sys.stdout
    try:
        sys.stdout = sys.stderr
        yield
    finally:
        for stream in {id(s): s for s in (sys.stderr, saved_stdout, sys.__stdout__) if s is not None}.values():
            with contextlib.suppress(Exception):  # what was written to the real stdout object meanwhile
                stream.flush()
        with contextlib.suppress(Exception):  # C stdio's buffer, written by an extension's printf
            ctypes.CDLL(None).fflush(None)
        sys.stdout = saved_stdout
        os.dup2(saved_fd, 1)
        os.close(saved_fd)


def _emit(doc: dict, json_out: bool, render_tables) -> None:
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    else:
        render_tables(Console())


def _run(model: str, device: str, json_out: bool, probe_name: str, sections: tuple[str, ...] | None = None,
         isolate: bool = False, nproc_per_node: int | None = None, **flags) -> None:
    """Load, probe (here, in a child process with --isolate, or on N ranks), render (rank 0 only)."""
    with _guarded() as err:
        from advisor import distributed
        from advisor.report import render_doc, to_json

        launching = nproc_per_node is not None and not distributed.in_job()
        settings = _settings(**flags, nproc_per_node=nproc_per_node if launching else None, device=device)
        if launching:
            if isolate:
                raise BadInput("--isolate and --nproc-per-node do not combine: the ranks are child processes already")
            distributed.launch(sys.argv[1:], nproc_per_node)
            return
        if distributed.in_job():
            if isolate:
                raise BadInput("--isolate does not combine with a distributed job")
            if settings.shard:
                raise BadInput("--shard does not combine with a distributed job: it traces one rank of N in one process")
        if probe_name in ("recommendation", "noise") and distributed.rank() == 0 and err.is_terminal:
            err.print(f"note: {_how_long(settings, probe_name)}", highlight=False, soft_wrap=True)
        if isolate:
            from advisor.isolate import run_isolated

            doc = run_isolated(model, device, settings, probe_name, sections)
        else:
            from advisor.pipeline import run_probe

            with _progress(err) as progress, _user_output_to_stderr(), watching(settings.step_timeout):
                doc = to_json(run_probe(model, device, settings, probe_name, progress), sections)
        if distributed.rank() != 0:
            return
        for note in doc["notes"]:
            err.print(f"note: {note}", highlight=False)
        _emit(doc, json_out, lambda out: render_doc(doc, out))


def _how_long(settings, probe_name: str) -> str:
    """What the run will spend, said before it starts: the budgets, which bound the long probes."""
    sweep = (f", the sweep of rates and batches about {settings.sweep_seconds:g} s" if probe_name == "recommendation"
             and settings.lr_sweep else "")
    return (f"probing takes roughly the noise probe's budget ({settings.noise_budget.describe()}){sweep}, and seconds "
            "to a minute for memory and throughput (--noise-budget sets it)")


MAX_BATCH = 10**12          # examples: a batch, a base batch, a floor; far above any device's memory
MAX_STEPS = 100_000         # --noise-warmup-steps, --snapshots: each is a training step or more
MIN_SNAPSHOTS = 4           # the bootstrap interval over snapshots needs a few of them
MAX_SECONDS = 1e7           # --step-timeout, --collective-timeout (about 115 days)
MAX_PLAN_GPUS = 1_000_000
MAX_BASE_LR = 1e6


def _settings(memory: str | None = None, margin: float = 0.1, base_batch: int | None = None,
              base_lr: float | None = None, noise_warmup_steps: int = 10, noise_batch: int | None = None,
              noise_snapshots: int = 16, noise_budget: str = "30s", lr_sweep: bool = True,
              target_loss: float | None = None,
              batch_sizes: str | None = None, max_step_seconds: float = 1.0,
              seed: int = 0, profile: str | None = None, step_timeout: float = DEFAULT_STEP_TIMEOUT,
              collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT, plan_gpus: int | None = None,
              check_batch: int | None = None, min_max_batch: int | None = None, nproc_per_node: int | None = None,
              device: str = "auto", shard: int | None = None, attention: str | None = None):
    """The flags, checked, in this one place: each problem is a BadInput that names the flag, the value and
    what is expected. Every number is bounded, so no later step overflows or runs for ever."""
    from advisor.hardware.profiles import load
    from advisor.pipeline import Settings
    from advisor.units import parse_size

    memory_bytes = None
    if memory is not None:
        try:
            memory_bytes = parse_size(memory)
        except BadInput as exc:
            raise BadInput(f"--memory: {exc}") from None
    if not 0 <= margin < 1:  # false for NaN too
        raise BadInput(f"--margin must be a fraction in [0, 1), got {margin}")
    for flag, value in (("--base-batch", base_batch), ("--batch-size", noise_batch), ("--batch-size", check_batch),
                        ("--min-max-batch", min_max_batch)):
        if value is not None and not 1 <= value <= MAX_BATCH:
            raise BadInput(f"{flag} must be a positive integer of at most {MAX_BATCH:.0e} examples, "
                           f"got {_shown(value)}")
    if noise_batch is not None and noise_batch < 2:
        raise BadInput(f"--batch-size must be at least 2 (the noise scale compares micro-batches), got {noise_batch}")
    if not MIN_SNAPSHOTS <= noise_snapshots <= MAX_STEPS:
        raise BadInput(f"--snapshots must be an integer from {MIN_SNAPSHOTS} (what the bootstrap interval needs) "
                       f"to {MAX_STEPS}, got {_shown(noise_snapshots)}")
    if not 0 <= noise_warmup_steps <= MAX_STEPS:
        raise BadInput(f"--noise-warmup-steps must be an integer from 0 to {MAX_STEPS}, got {_shown(noise_warmup_steps)}")
    if base_lr is not None and not (math.isfinite(base_lr) and 0 < base_lr <= MAX_BASE_LR):
        raise BadInput(f"--base-lr must be a positive number of at most {MAX_BASE_LR:g}, got {base_lr}")
    if not (math.isfinite(max_step_seconds) and max_step_seconds > 0):
        raise BadInput(f"--max-step-seconds must be a positive number of seconds, got {max_step_seconds}")
    for flag, value in (("--step-timeout", step_timeout), ("--collective-timeout", collective_timeout)):
        if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
            raise BadInput(f"{flag} must be a positive number of seconds of at most {MAX_SECONDS:g}, got {value}")
    if plan_gpus is not None and not 1 <= plan_gpus <= MAX_PLAN_GPUS:
        raise BadInput(f"--plan-gpus must be a positive integer of at most {MAX_PLAN_GPUS}, got {_shown(plan_gpus)}")
    if plan_gpus is not None and profile is None:
        raise BadInput("--plan-gpus needs --profile: the interconnect's bandwidth and latency come from it")
    if target_loss is not None and not math.isfinite(target_loss):
        raise BadInput(f"--target-loss must be a finite number, got {target_loss}")
    if not 0 <= seed < 2**63:  # the ranks seed with seed + 1 + rank, which must stay a 64-bit seed
        raise BadInput(f"--seed must be an integer in [0, 2**63), got {_shown(seed)}")
    if nproc_per_node is not None:
        _check_nproc(nproc_per_node, device)
    _check_shard(shard, attention, profile, nproc_per_node)
    return Settings(
        memory_bytes=memory_bytes, margin=margin, base_batch=base_batch,
        base_lr=base_lr, noise_warmup_steps=noise_warmup_steps, noise_batch=noise_batch,
        noise_snapshots=noise_snapshots, noise_budget=_noise_budget(noise_budget), lr_sweep=lr_sweep,
        target_loss=target_loss,
        batch_sizes=_batch_list(batch_sizes) if batch_sizes is not None else None,
        max_step_seconds=max_step_seconds, seed=seed, step_timeout=step_timeout,
        profile=load(profile) if profile is not None else None, collective_timeout=collective_timeout,
        plan_gpus=plan_gpus, shard=shard, attention=attention)


def _check_shard(shard: int | None, attention: str | None, profile: str | None, nproc_per_node: int | None) -> None:
    """--shard N (2 to 4096 ranks, with a profile: the GPUs it shards over) and --attention (a kernel name)."""
    from advisor.memory.attention import BACKENDS
    from advisor.memory.shard import MAX_SHARD

    if shard is not None:
        if not 2 <= shard <= MAX_SHARD:
            raise BadInput(f"--shard must be a number of GPUs from 2 to {MAX_SHARD}, got {_shown(shard)}")
        if profile is None:
            raise BadInput("--shard needs --profile: it traces one GPU of N as the profiled device runs it")
        if nproc_per_node is not None:
            raise BadInput("--shard and --nproc-per-node do not combine: --shard traces one rank of N in this process")
    if attention is not None:
        if attention not in BACKENDS:
            raise BadInput(f"--attention {attention[:40]!r}: expected one of {', '.join(BACKENDS)}")
        if profile is None:
            raise BadInput("--attention needs --profile: it names the kernel the profiled GPU runs")


def _noise_budget(text: str):
    """'30s', '30' (seconds) or '400steps' -> a NoiseBudget."""
    from advisor.probes.noise import NoiseBudget

    value = text.strip().lower()
    unit = "steps" if value.endswith("steps") else "s"
    number = value[:-len(unit)] if value.endswith(unit) else value
    try:
        amount = float(number) if unit == "s" else int(number)
    except ValueError:
        amount = None
    if amount is None or not math.isfinite(amount) or amount <= 0 or amount > 10**7:
        shown = repr(text) if len(text) <= 40 else repr(text[:37]) + "..."
        raise BadInput(f"--noise-budget {shown}: expected seconds (30s) or training steps (400steps), positive")
    return NoiseBudget(seconds=amount) if unit == "s" else NoiseBudget(seconds=None, steps=amount)


def _shown(value: int) -> str:
    """An integer flag's value as the message shows it: 10**30 is not printed digit by digit."""
    text = str(value)
    return text if len(text) <= 20 else f"{text[:6]}... ({len(text)} digits)"


def _check_nproc(nproc: int, device: str) -> None:
    """--nproc-per-node: one rank per GPU on CUDA, at most one per core on the CPU."""
    import torch

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        limit, what = torch.cuda.device_count(), "GPUs"
    else:
        limit, what = os.cpu_count() or 1, "CPU cores"
    if nproc < 1:
        raise BadInput(f"--nproc-per-node must be a positive integer, got {_shown(nproc)}")
    if limit >= 1 and nproc > limit:
        raise BadInput(f"--nproc-per-node {_shown(nproc)}: this machine has {limit} {what}; "
                       f"at most one rank per {what[:-1] if what == 'GPUs' else 'CPU core'}")


def _batch_list(text: str) -> list[int]:
    """'8,16,64' -> [8, 16, 64]: positive integers, separated by commas (spaces and a trailing comma allowed)."""
    shown = repr(text) if len(text) <= 60 else repr(text[:57]) + "..."
    expected = "expected comma-separated positive integers like 8,16,64"
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise BadInput(f"--batch-sizes {shown}: no batch size given; {expected}")
    for part in parts:
        if not (part.isascii() and part.isdigit()):
            raise BadInput(f"--batch-sizes {shown}: {part[:20]!r} is not a positive integer; {expected}")
        if len(part) > 18 or int(part) > MAX_BATCH:
            raise BadInput(f"--batch-sizes {shown}: {part[:20]!r} is far too large a batch (at most {MAX_BATCH:.0e})")
    sizes = [int(part) for part in parts]
    if min(sizes) < 1:
        raise BadInput(f"--batch-sizes {shown}: batch sizes must be at least 1; {expected}")
    return sizes


@contextlib.contextmanager
def _progress(err: Console):
    """Progress bars on stderr, only when it is a terminal (and rank 0's, in a distributed job)."""
    from advisor import distributed

    if not err.is_terminal or distributed.rank() != 0:
        yield lambda stage: (lambda done, total: None)
        return
    with _stages(err) as stage:
        yield stage


@contextlib.contextmanager
def _stages(err: Console):
    """One bar a stage. A stage is over when the next one starts or the run ends, however far its probe
    got (one that stops early, a trace that reports only its start): its bar is then shown complete."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bars:
        tasks = {}

        def finish_all() -> None:
            for task in bars.tasks:
                if not task.finished:
                    bars.update(task.id, completed=task.total)

        def stage(description: str):
            def update(done: int, total: int) -> None:
                if description not in tasks:
                    finish_all()
                    tasks[description] = bars.add_task(description, total=total)
                bars.update(tasks[description], completed=done, total=total)
            return update
        try:
            yield stage
        finally:
            finish_all()
            bars.refresh()


def main() -> None:
    app()
