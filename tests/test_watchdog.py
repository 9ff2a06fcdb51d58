"""Time limits: a call into the model file past the step timeout is a StepTimeout (a ProbeFailed) naming the
probe and the call, raised in the caller; the library never ends the process. The command line turns it
into one line and exit 4, and keeps a last resort for a hang no exception reaches."""

import signal
import subprocess
import sys
import threading
import time

import pytest

import advisor
from advisor import watchdog
from advisor.errors import ProbeFailed
from tests.models import MLP


def test_a_call_past_the_timeout_raises_in_the_caller_naming_probe_and_call():
    started = time.monotonic()
    with pytest.raises(watchdog.StepTimeout) as caught:
        with watchdog.watching(0.3):
            with watchdog.probe("noise probe"):
                watchdog.beat("batch(512)")
                time.sleep(30)  # a wait in C: the signal interrupts it
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, ProbeFailed) and caught.value.exit_code == 4
    assert "noise probe: batch(512) did not finish within 0.3 s" in str(caught.value)


def test_beats_keep_it_quiet():
    with watchdog.watching(0.5):
        for _ in range(8):
            watchdog.beat("a step")
            time.sleep(0.1)


def test_beat_without_a_watchdog_is_harmless():
    watchdog.beat("nothing watches")


def test_a_swallowed_timeout_is_raised_again_at_the_next_call():
    """Code that catches every exception cannot keep the run going past its time limit."""
    with pytest.raises(watchdog.StepTimeout, match="batch\\(8\\) did not finish"):
        with watchdog.watching(0.2):
            watchdog.beat("batch(8)")
            try:
                time.sleep(30)
            except Exception:  # noqa: BLE001 -- the user's code, swallowing everything
                pass
            watchdog.beat("loss(model, batch)")


def test_off_the_main_thread_a_late_call_raises_when_it_returns():
    """No signal handler can be set there: the call is not interrupted, but its result is not trusted."""
    raised = []

    def work():
        try:
            with watchdog.watching(0.2):
                watchdog.beat("model()")
                time.sleep(0.6)
        except watchdog.StepTimeout as exc:
            raised.append(str(exc))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    assert len(raised) == 1 and "setup: model() did not finish within 0.2 s" in raised[0]


def test_the_signal_handler_is_the_callers_again_afterwards():
    before = signal.getsignal(signal.SIGALRM)
    with watchdog.watching(5):
        assert signal.getsignal(signal.SIGALRM) is not before
    assert signal.getsignal(signal.SIGALRM) is before


def test_the_api_raises_a_hang_and_the_process_lives_on(write_model):
    path = write_model(MLP + "\n_real_batch = batch\n"
                       "def batch(n):\n"
                       "    if n >= 64:\n"
                       "        import time; time.sleep(120)\n"
                       "    return _real_batch(n)\n")
    with pytest.raises(advisor.StepTimeout, match="throughput probe: batch\\(64\\) did not finish within 2 s"):
        advisor.throughput(str(path), device="cpu", batch_sizes=[1, 64], step_timeout=2)
    assert advisor.throughput(str(path), device="cpu", batch_sizes=[1, 2], max_step_seconds=0.05).throughput.points


def test_hanging_batch_ends_the_run_with_exit_4(write_model):
    """Through the real process: one line on stderr, exit 4."""
    path = write_model(MLP + "\n_real_batch = batch\n"
                       "def batch(n):\n"
                       "    if n >= 64:\n"
                       "        import time; time.sleep(120)\n"
                       "    return _real_batch(n)\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "advisor", "throughput", str(path), "--device", "cpu",
                             "--batch-sizes", "1,2,64", "--step-timeout", "4"],
                            capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 4
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "throughput probe: batch(64) did not finish within 4 s" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert elapsed < 60


def test_a_hang_no_exception_reaches_meets_the_command_lines_last_resort(write_model):
    """A call that never returns to the point where the timeout could end it (here it swallows it and waits on,
    as a call stuck in C would): the command line ends the process after a grace period, one line, exit 4."""
    path = write_model(MLP + "\n_real_batch = batch\n"
                       "def batch(n):\n"
                       "    if n >= 64:\n"
                       "        import time\n"
                       "        while True:\n"
                       "            try:\n"
                       "                time.sleep(120)\n"
                       "            except BaseException:\n"
                       "                pass\n"
                       "    return _real_batch(n)\n")
    result = subprocess.run([sys.executable, "-m", "advisor", "throughput", str(path), "--device", "cpu",
                             "--batch-sizes", "1,64", "--step-timeout", "2"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 4
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["bsadvisor: error: throughput probe: batch(64) did not finish within 2 s (--step-timeout); "
                     "it hangs, or needs a longer limit"]
