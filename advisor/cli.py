"""The `bsadvisor` command line: parses flags, calls the Python API (advisor/api.py), renders. Nothing else.

Around the API it adds what a command owns and a library must not: stdout kept for the report (the model
file's prints go to stderr), progress bars, SIGTERM handled like Ctrl-C, errors as one line and an exit code,
and a last resort for a hang the library cannot interrupt (a call stuck in C code past the step timeout).
"""

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import warnings
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from advisor import __version__
from advisor.errors import (EXIT_DOES_NOT_FIT, EXIT_INTERRUPTED, EXIT_PROBE_FAILED, EXIT_TERMINATED, AdvisorError,
                            Terminated, one_line)
from advisor.watchdog import DEFAULT_COLLECTIVE_TIMEOUT, DEFAULT_STEP_TIMEOUT, last_resort

app = typer.Typer(
    help="Which batch size and which learning rate: measured memory, throughput and gradient noise.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)

Model = Annotated[str, typer.Argument(help="A model file: defines model() and batch(size), see the README.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
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
ShardOpt = Annotated[Optional[int], typer.Option("--shard", help="Peak on one GPU of N under sharding (FSDP2 "
                                             "full sharding / ZeRO-3 unless --zero-stage says less), traced "
                                             "with torch's own on a fake process group; needs --profile.")]
ZeroStageOpt = Annotated[int, typer.Option("--zero-stage", help="With --shard: 3 shards the parameters too "
                                           "(FSDP full sharding), 2 the gradients and optimizer state only, "
                                           "each layer's parameters kept gathered from its forward to its "
                                           "backward (FSDP2 reshard_after_forward=False, as SHARD_GRAD_OP), 1 "
                                           "the optimizer state only (torch's ZeroRedundancyOptimizer with "
                                           "DDP).")]
ShardWrapOpt = Annotated[str, typer.Option("--shard-wrap", help="With --shard: FSDP's units. layers: each block, "
                                           "the root keeps the embeddings and head gathered (Accelerate, the "
                                           "transformers Trainer); torchtitan: the embeddings and the norm with "
                                           "the head as units of their own; all: as torchtitan, the head "
                                           "resharded after the forward too (as ZeRO-3 releases parameters).")]
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
                      shard: ShardOpt = None, zero_stage: ZeroStageOpt = 3, shard_wrap: ShardWrapOpt = "layers",
                      attention: AttentionOpt = None, json_out: JsonOpt = False) -> None:
    """The whole advice: largest batch, throughput, gradient noise, batch size and learning rate."""
    _run(model, device, json_out, "recommendation", isolate=isolate, nproc_per_node=nproc_per_node, memory=memory,
         margin=margin, profile=profile, shard=shard, zero_stage=zero_stage, shard_wrap=shard_wrap,
         attention=attention, base_batch=base_batch, base_lr=base_lr,
         noise_warmup_steps=noise_warmup_steps, noise_budget=noise_budget, lr_sweep=lr_sweep,
         target_loss=target_loss, max_step_seconds=max_step_seconds, seed=seed,
         step_timeout=step_timeout, collective_timeout=collective_timeout, plan_gpus=plan_gpus)


@app.command("max-batch")
def max_batch_command(model: Model, device: DeviceOpt = "auto", memory: MemoryOpt = None, margin: MarginOpt = 0.1,
                      profile: ProfileOpt = None, shard: ShardOpt = None, zero_stage: ZeroStageOpt = 3,
                      shard_wrap: ShardWrapOpt = "layers", attention: AttentionOpt = None, seed: SeedOpt = 0,
                      step_timeout: TimeoutOpt = DEFAULT_STEP_TIMEOUT,
                      isolate: IsolateOpt = False, json_out: JsonOpt = False) -> None:
    """The largest batch whose steady-state training step fits the memory budget."""
    _run(model, device, json_out, "memory", isolate=isolate, memory=memory,
         margin=margin, profile=profile, shard=shard, zero_stage=zero_stage, shard_wrap=shard_wrap,
         attention=attention, seed=seed, step_timeout=step_timeout)


@app.command("check")
def check_command(model: Model,
                  profile: Annotated[str, typer.Option("--profile", help="The device to check against: a name "
                                                       "from `profile list`, or a .json path.")],
                  batch_size: Annotated[int, typer.Option("--batch-size", help="The batch that must fit.")],
                  margin: MarginOpt = 0.1,
                  min_max_batch: Annotated[Optional[int], typer.Option("--min-max-batch", help="Also fail when the "
                                                                       "largest batch that fits drops below this.")] = None,
                  shard: ShardOpt = None, zero_stage: ZeroStageOpt = 3, shard_wrap: ShardWrapOpt = "layers",
                  attention: AttentionOpt = None, seed: SeedOpt = 0, step_timeout: TimeoutOpt = DEFAULT_STEP_TIMEOUT, json_out: JsonOpt = False) -> None:
    """CI capacity check, no GPU needed: exit 0 when the batch fits the profiled device, 1 when not."""
    with _guarded() as err:
        from advisor.api import run_check
        from advisor.settings import make_settings
        from advisor.tables import render_check

        settings = make_settings(margin=margin, seed=seed, step_timeout=step_timeout, check_batch=batch_size,
                                 min_max_batch=min_max_batch, shard=shard, zero_stage=zero_stage,
                                 shard_wrap=shard_wrap, attention=attention, profile=profile)
        with _user_output_to_stderr(), last_resort(_exit_probe_failed):
            result = run_check(model, settings, batch_size, min_max_batch)
        for note in result.notes:
            err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
        doc = result.to_dict()
        _emit(doc, json_out, lambda out: render_check(doc, out))
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
        from advisor.tables import render_profiles

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
        from advisor.tables import render_profile

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
    _run(model, device, json_out, "noise", isolate=isolate, nproc_per_node=nproc_per_node,
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
    _run(model, device, json_out, "throughput", isolate=isolate,
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
        if leave_error(exc.exit_code, message, isinstance(exc, CollectiveFailed)):  # the launcher says it
            _end_rank(exc.exit_code)
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


def _end_rank(exit_code: int) -> NoReturn:
    """A launched rank whose error is left for the launcher ends here, without the interpreter's teardown:
    with its process group's threads still running (a peer died mid-collective), that teardown can abort
    in C++, and "terminate called without an active exception" reached the job's one-line stderr."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(exit_code)


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


def _run(model: str, device: str, json_out: bool, probe_name: str, isolate: bool = False,
         nproc_per_node: int | None = None, **flags) -> None:
    """Check the flags, probe (here, in a child process with --isolate, or on N ranks), render (rank 0 only)."""
    with _guarded() as err:
        from advisor import distributed
        from advisor.settings import check_run_mode, make_settings
        from advisor.tables import render_doc

        settings = make_settings(**flags)
        check_run_mode(isolate, nproc_per_node, device, distributed.in_job(), settings.shard)
        if nproc_per_node is not None and not distributed.in_job():
            distributed.launch(sys.argv[1:], nproc_per_node)
            return
        if probe_name in ("recommendation", "noise") and distributed.rank() == 0 and err.is_terminal:
            err.print(f"note: {_how_long(settings, probe_name)}", highlight=False, soft_wrap=True)
        if isolate:
            from advisor.isolate import run_isolated

            doc = run_isolated(model, device, settings, probe_name)
        else:
            from advisor.api import run

            with _progress(err) as progress, _user_output_to_stderr(), last_resort(_exit_probe_failed):
                doc = run(model, settings, probe_name, device, progress).to_dict()
        if distributed.rank() != 0:
            return
        for note in doc["notes"]:
            err.print(f"note: {note}", highlight=False)
        _emit(doc, json_out, lambda out: render_doc(doc, out))


def _exit_probe_failed(message: str) -> None:
    """The last resort for a call that hangs in C code past the step timeout, where no exception reaches: one
    line (a launched rank leaves it for the launcher to say), and the process ends with exit 4."""
    from advisor.distributed import leave_error

    if not leave_error(EXIT_PROBE_FAILED, message):
        sys.stderr.write(f"bsadvisor: error: {message}\n")
        sys.stderr.flush()
    os._exit(EXIT_PROBE_FAILED)


def _how_long(settings, probe_name: str) -> str:
    """What the run will spend, said before it starts: the budgets, which bound the long probes."""
    sweep = (f", the sweep of rates and batches about {settings.sweep_seconds:g} s" if probe_name == "recommendation"
             and settings.lr_sweep else "")
    return (f"probing takes roughly the noise probe's budget ({settings.noise_budget.describe()}){sweep}, and seconds "
            "to a minute for memory and throughput (--noise-budget sets it)")


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
    # torch installed without numpy warns as it loads; bsadvisor needs no numpy, so users needn't read it
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    app()
