"""torch.distributed: launching the probes as a data-parallel job, and the few collectives they use.

`launch` runs `python -m advisor <the same command>` on N local ranks through torch's own elastic
launcher (what torchrun runs), so `--nproc-per-node N` and `torchrun --nproc-per-node N -m advisor`
take the same path. In a rank (WORLD_SIZE set), `process_group` joins the job: Gloo on the CPU, NCCL
on CUDA (one GPU per LOCAL_RANK), every collective bounded by `--collective-timeout`. Rank 0 alone
prints the report. A rank that fails ends the job: the launcher stops the others and reports the first
failure in one line (exit 4; an expected error keeps its own exit code and message).

Without a process group every helper here is the identity, so the probes need no second copy.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from advisor.errors import AdvisorError, BadInput, DeviceUnavailable, ProbeFailed
from advisor.step import gradient_bytes

_ERROR_DIR = "BSADVISOR_ERROR_DIR"  # set by `launch`: ranks leave their expected errors there
_ERRORS = {cls.exit_code: cls for cls in (BadInput, DeviceUnavailable, ProbeFailed)}


def in_job() -> bool:
    """Started by torchrun or `launch`: the environment names a world."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def launched_rank() -> bool:
    """A rank that `launch` started: its errors and interruptions are the launcher's to say."""
    return in_job() and bool(os.environ.get(_ERROR_DIR))


def active() -> bool:
    """This process is a rank of a job: a process group is up, and not the fake one a sharded trace made."""
    from advisor.memory import shard

    return dist.is_available() and dist.is_initialized() and not shard.made_the_group()


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if in_job() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextlib.contextmanager
def process_group(device, timeout: float):
    """Join the job for the body (nothing to do outside one), with the collective backend the device's
    kind uses (`device`, a devices.Backend: NCCL on CUDA, Gloo on the CPU)."""
    if not in_job() or active():
        yield
        return
    backend = device.collective_backend
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout),
                                **device.process_group_options())
    except Exception as exc:  # the rendezvous or the backend: no job to run in
        raise ProbeFailed(f"rank {rank()}: cannot join the {backend} process group: {exc}") from None
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def collective(what: str):
    """A collective that fails (a peer died, the timeout passed) is a ProbeFailed naming it."""
    @contextlib.contextmanager
    def guard():
        try:
            yield
        except AdvisorError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CollectiveFailed(f"rank {rank()}: {what} failed: {first} (another rank failed, or the "
                                   "--collective-timeout passed)") from None
    return guard()


def sum_tensors(tensors: list[torch.Tensor], what: str) -> None:
    """In place: each tensor becomes its sum over ranks."""
    if not active():
        return
    with collective(what):
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def reduce_floats(values: list[float], op: str, what: str, device: torch.device) -> list[float]:
    """Sum, max or min over ranks of a few numbers (float64)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    with collective(what):
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t.tolist()


def wrap(model: torch.nn.Module, device) -> torch.nn.Module:
    """DistributedDataParallel in a job (its gradient buckets, its all-reduce), the model itself otherwise
    (`device`, a devices.Backend, says its device ids)."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    with collective("wrapping the model in DistributedDataParallel"):
        return DistributedDataParallel(model, device_ids=device.ddp_device_ids())


def bucket_bytes(model: torch.nn.Module) -> int:
    """DDP's gradient buckets hold a copy of every gradient: the bytes of the parameters that train."""
    return gradient_bytes(model)


# --- errors in a rank, and the launcher ---------------------------------------------------------

class CollectiveFailed(ProbeFailed):
    """A collective that failed: usually the consequence of another rank's failure."""


def leave_error(exit_code: int, message: str, collective: bool = False) -> bool:
    """In a rank started by `launch`: write the error for the launcher to report. False elsewhere."""
    folder = os.environ.get(_ERROR_DIR)
    if not folder or not in_job():
        return False
    path = Path(folder) / f"rank{rank()}.json"
    with contextlib.suppress(OSError):
        path.write_text(json.dumps({"exit_code": exit_code, "message": message, "collective": collective}))
        return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], nproc: int) -> None:
    """Run this command (`python -m advisor *argv`, less --nproc-per-node) on `nproc` local ranks
    (torch's elastic launcher, no restarts). Returns when every rank succeeded; raises the first
    failure's error otherwise."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from advisor.errors import Terminated

    # Its own chatter is not ours: its modules' loggers carry their own levels, so each is set (the agent's
    # "Received 15 death signal" warning included).
    ours = ("torch.distributed.elastic", "torch.distributed.launcher")
    for name in [*ours, *logging.root.manager.loggerDict]:
        if name.startswith(ours):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"bsadvisor-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=0,
                          monitor_interval=0.1, local_addr="127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="bsadvisor-ranks-") as folder:
        os.environ[_ERROR_DIR] = folder
        try:
            elastic_launch(config, sys.executable)("-u", "-m", "advisor", *_without_nproc(argv))
        except ChildFailedError as exc:
            raise _first_failure(exc, Path(folder)) from None
        except SignalException as exc:  # the launcher's own handler: it has stopped every rank already
            raise (Terminated() if exc.sigval == signal.SIGTERM else KeyboardInterrupt()) from None
        except Exception as exc:  # the rendezvous itself
            raise ProbeFailed(f"the {nproc}-process job did not start: {exc}") from None
        finally:
            os.environ.pop(_ERROR_DIR, None)


def _without_nproc(argv: list[str]) -> list[str]:
    """The same command for each rank: --nproc-per-node (and its value) removed."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            out.append(arg)
    return out


def _first_failure(exc, folder: Path) -> AdvisorError:
    """The error an expected failure left, else how the first failed rank ended."""
    left = {}
    for path in folder.glob("rank*.json"):
        with contextlib.suppress(OSError, ValueError):
            left[int(path.stem[4:])] = json.loads(path.read_text())
    def said(r: int) -> str:
        message = left[r]["message"]
        return message if message.startswith(f"rank {r}:") else f"rank {r}: {message}"

    failures = exc.failures
    # A rank's own error beats a peer's failed collective, which is its consequence.
    own = [r for r, e in sorted(left.items()) if not e.get("collective")]
    if own:
        return _ERRORS.get(left[own[0]]["exit_code"], ProbeFailed)(said(own[0]))
    # Then a rank that died without a word (killed, crashed) — not one the launcher stopped with SIGTERM.
    died = sorted((f.timestamp, r) for r, f in failures.items()
                  if r not in left and f.exitcode != -signal.SIGTERM)
    if not died and left:  # a peer hung or vanished: the failed collective is the news
        return ProbeFailed(said(min(left)))
    r = died[0][1] if died else min(failures)
    failure = failures[r]
    if failure.exitcode < 0:
        try:
            name = signal.Signals(-failure.exitcode).name
        except ValueError:
            name = "an unknown signal"
        how = f"was killed by {name} (signal {-failure.exitcode})"
    else:
        how = f"exited with code {failure.exitcode}"
    return ProbeFailed(f"rank {r} {how} without reporting (a crash in the model file's code or the driver); "
                       "the other ranks were stopped")
