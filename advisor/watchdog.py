"""Time limits: a call into the user's code that takes too long becomes a ProbeFailed naming the probe and the
call, raised in the caller. The library never ends the process.

`beat(what)` is called before every call into the user's code (model(), batch(), loss, optimizer); it costs a
clock read when no watchdog runs. Past the deadline, the watchdog thread raises the timeout in the watched
thread:

- on the main thread of the main interpreter, by a signal (SIGALRM, its handler set for the watched call
  only): a Python-level wait (`time.sleep`, a lock, a blocking read) is interrupted at once, and running
  Python code at its next bytecode;
- elsewhere (a worker thread, where no signal handler can be set), when the call returns: at the next
  `beat()` or as the watched block ends.

What no exception can reach is a hang inside C code that never returns to the interpreter (a deadlock
holding the GIL, a driver call stuck in the kernel). A program that cannot wait for ever registers a last
resort (`last_resort(handler)`, as the command line does): called from the watchdog thread once the
timeout has had `grace` seconds to unwind the call and has not.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

from advisor.errors import AdvisorError, ProbeFailed, one_line

DEFAULT_STEP_TIMEOUT = 300.0
DEFAULT_COLLECTIVE_TIMEOUT = 120.0  # a collective of a distributed job (advisor.distributed)
LAST_RESORT_GRACE = 10.0  # seconds a timed-out call may take to unwind before the last resort (at most the timeout)

# The signal that interrupts the watched thread; None where the platform has none (Windows): the timeout is
# then raised as the call returns, as off the main thread.
_SIGNAL = getattr(signal, "SIGALRM", None) if hasattr(signal, "pthread_kill") else None

_active: "Watchdog | None" = None
_last_resort = None  # called with the message when a timed-out call does not unwind (see last_resort)


class StepTimeout(ProbeFailed):
    """A call into the model file's code ran past the step timeout (exit 4)."""


class Watchdog:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self.probe, self.what = "setup", "loading the model file"
        self.fired: str | None = None  # the timeout's message, once it passed
        self._deadline = time.monotonic() + timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a signal is sent only while the watched block runs
        self._thread = threading.Thread(target=self._watch, name="bsadvisor-watchdog", daemon=True)
        self._target = threading.get_ident()
        self._signalled = False

    def beat(self, what: str) -> None:
        if self.fired is not None:  # the call it fired in swallowed the exception: the run still ends
            raise StepTimeout(self.fired)
        self.what, self._deadline = what, time.monotonic() + self.timeout

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 10)):
            if time.monotonic() > self._deadline:
                self.fired = (f"{self.probe}: {self.what} did not finish within {self.timeout:g} s "
                              "(--step-timeout); it hangs, or needs a longer limit")
                self._interrupt()
                if not self._stop.wait(min(LAST_RESORT_GRACE, self.timeout)) and _last_resort is not None:
                    _last_resort(self.fired)
                return

    def _interrupt(self) -> None:
        with self._lock:
            if self._signalled and not self._stop.is_set():
                signal.pthread_kill(self._target, _SIGNAL)

    def _raise_timeout(self, signum, frame) -> None:
        if self.fired is not None:
            raise StepTimeout(self.fired)

    def start(self) -> None:
        self._signalled = _install(self._raise_timeout)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stop.set()


def _install(handler) -> bool:
    """Set `handler` where a handler can be set (the main thread of the main interpreter)."""
    if _SIGNAL is None or threading.current_thread() is not threading.main_thread():
        return False
    try:
        signal.signal(_SIGNAL, handler)
    except (ValueError, OSError):  # a subinterpreter, or a platform without the signal
        return False
    return True


@contextlib.contextmanager
def watching(timeout: float):
    """Run the body under a watchdog; beats and probe names inside it go to this one. A call past `timeout`
    seconds raises StepTimeout (a ProbeFailed) in the body; one that returned late, as the body ends."""
    global _active
    dog, previous = Watchdog(timeout), _active
    previous_handler = signal.getsignal(_SIGNAL) if _SIGNAL is not None and \
        threading.current_thread() is threading.main_thread() else None
    _active = dog
    dog.start()
    try:
        yield dog
    finally:
        dog.stop()
        _active = previous
        if dog._signalled:
            signal.signal(_SIGNAL, previous_handler if previous_handler is not None else signal.SIG_DFL)
    if dog.fired is not None:  # the late call returned (a worker thread), or swallowed the exception
        raise StepTimeout(dog.fired)


@contextlib.contextmanager
def last_resort(handler):
    """While the body runs, `handler(message)` is called (from the watchdog's thread) when a timed-out call has
    not unwound within the grace period: a hang in C code. The command line ends the process there."""
    global _last_resort
    previous, _last_resort = _last_resort, handler
    try:
        yield
    finally:
        _last_resort = previous


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
