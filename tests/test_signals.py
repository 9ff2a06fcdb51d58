"""SIGTERM and SIGINT to a run with child processes (--isolate, --nproc-per-node): one line, exit 143 or 130,
every child stopped, no temporary file left. Real processes, since signals are the point."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.models import MLP

REPO = Path(__file__).resolve().parent.parent

# batch() at the probe's second size says where it runs (a file named by its pid), then hangs.
HANGS = MLP + """
import os, time
_real_batch = batch

def batch(n):
    if n >= 16:
        open(os.path.join(os.environ["MARKERS"], str(os.getpid())), "w").close()
        time.sleep(120)
    return _real_batch(n)
"""

EXPECTED = {signal.SIGTERM: (143, "bsadvisor: terminated (SIGTERM)"), signal.SIGINT: (130, "bsadvisor: interrupted")}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("children, started", [(["--isolate"], 1), (["--nproc-per-node", "2"], 2)],
                         ids=["isolate", "nproc-per-node"])
def test_a_signal_stops_every_child_and_leaves_no_file(write_model, tmp_path, sig, children, started):
    markers, tmp = tmp_path / "markers", tmp_path / "tmp"
    markers.mkdir(), tmp.mkdir()
    path = write_model(HANGS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MARKERS": str(markers), "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "advisor", "throughput", str(path), "--device", "cpu",
                             "--batch-sizes", "2,16", *children, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while len(list(markers.iterdir())) < started:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        children_pids = [int(p.name) for p in markers.iterdir()]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    code, line = EXPECTED[sig]
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == code and lines == [line], (proc.returncode, err)
    assert out == ""
    time.sleep(0.5)
    assert [pid for pid in children_pids if _alive(pid)] == []
    # the child's result.json, the ranks' error folder: removed (torch's own caches may stay)
    assert [p.name for p in tmp.iterdir() if p.name.startswith("bsadvisor")] == []
