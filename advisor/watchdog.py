"""Time limits: a call into the user's code that hangs ends the run, naming the probe and the call.

A hang can sit in C (a deadlock, a stuck driver call) where no Python exception can reach it, so the
watchdog does not try to interrupt: past the deadline it prints one line and ends the process with
exit code 4. Probes write no files, so nothing is left half-written. `beat(what)` is called before
every call into the user's code (model(), batch(), loss, optimizer); it costs a clock read when no
watchdog runs.
"""

import contextlib
import os
import sys
import threading
import time

from advisor.errors import EXIT_PROBE_FAILED, AdvisorError, ProbeFailed, one_line

DEFAULT_STEP_TIMEOUT = 300.0
DEFAULT_COLLECTIVE_TIMEOUT = 120.0  # a collective of a distributed job (advisor.distributed)

_active: "Watchdog | None" = None


class Watchdog:
    def __init__(self, timeout: float, on_timeout=None):
        self.timeout = timeout
        self.on_timeout = on_timeout or _exit_probe_failed
        self.probe, self.what = "setup", "loading the model file"
        self._deadline = time.monotonic() + timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bsadvisor-watchdog", daemon=True)

    def beat(self, what: str) -> None:
        self.what, self._deadline = what, time.monotonic() + self.timeout

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 10)):
            if time.monotonic() > self._deadline:
                self.on_timeout(f"{self.probe}: {self.what} did not finish within {self.timeout:g} s "
                                "(--step-timeout); it hangs, or needs a longer limit")
                return


def _exit_probe_failed(message: str) -> None:
    left = False
    if "advisor.distributed" in sys.modules:  # a launched rank leaves its error for the launcher to say
        left = sys.modules["advisor.distributed"].leave_error(EXIT_PROBE_FAILED, message)
    if not left:
        sys.stderr.write(f"bsadvisor: error: {message}\n")
        sys.stderr.flush()
    os._exit(EXIT_PROBE_FAILED)


@contextlib.contextmanager
def watching(timeout: float, on_timeout=None):
    """Run the body under a watchdog; beats and probe names inside it go to this one."""
    global _active
    dog, previous = Watchdog(timeout, on_timeout), _active
    _active = dog
    dog._thread.start()
    try:
        yield dog
    finally:
        dog._stop.set()
        _active = previous


@contextlib.contextmanager
def probe(name: str):
    """Name the probe that the next beats belong to (for the timeout's message). Whatever escapes the body
    that no seam named (the user's load_state_dict or state_dict, a hook, an error while restoring or
    rebuilding outside try_step, a BaseException subclass) is a ProbeFailed naming the probe: one line,
    exit 4, never a traceback. Expected errors and Ctrl-C pass as they are."""
    dog = _active
    previous = dog.probe if dog is not None else None
    if dog is not None:
        dog.probe = name
    try:
        yield
    except (AdvisorError, KeyboardInterrupt):
        raise
    except BaseException as exc:
        raise ProbeFailed(f"the {name} failed: {type(exc).__name__}: {one_line(exc)}") from None
    finally:
        if dog is not None:
            dog.probe = previous


def beat(what: str) -> None:
    if _active is not None:
        _active.beat(what)
