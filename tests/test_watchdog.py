"""Time limits: a hanging call into the model file ends the run with exit 4, naming the probe."""

import subprocess
import sys
import time

from advisor import watchdog
from tests.models import MLP


def test_watchdog_fires_after_the_timeout_and_names_probe_and_call():
    fired = []
    with watchdog.watching(0.3, on_timeout=fired.append):
        with watchdog.probe("noise probe"):
            watchdog.beat("batch(512)")
            time.sleep(1.0)
    assert len(fired) == 1
    assert "noise probe: batch(512) did not finish within 0.3 s" in fired[0]


def test_beats_keep_it_quiet():
    fired = []
    with watchdog.watching(0.5, on_timeout=fired.append):
        for _ in range(8):
            watchdog.beat("a step")
            time.sleep(0.1)
    assert fired == []


def test_beat_without_a_watchdog_is_harmless():
    watchdog.beat("nothing watches")


def test_hanging_batch_ends_the_run_with_exit_4(write_model):
    """Through the real process: the watchdog ends it with os._exit, which CliRunner cannot host."""
    path = write_model(MLP + "\n_real_batch = batch\n"
                       "def batch(n):\n"
                       "    if n >= 64:\n"
                       "        import time; time.sleep(120)\n"
                       "    return _real_batch(n)\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "advisor", "throughput", str(path), "--device", "cpu",
                             "--batch-sizes", "1,2,64", "--step-timeout", "8"],
                            capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 4
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "throughput probe: batch(64) did not finish within 8 s" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert elapsed < 60
