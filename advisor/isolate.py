"""--isolate: the probes run in a child process, so that a crash in the model file or the driver
(an abort, a segfault, os._exit) ends the child, not the advisor, which reports it in one line (exit 4).

The parent writes the request (model file, device, settings, which probe) as JSON to the child's
stdin; the child (`python -m advisor.isolate`) runs the same API call (advisor.api.run) and writes
the report's JSON document, or an expected error's exit code and message, to a file the parent
named. A call that hangs in C code past the step timeout, which no exception reaches, ends the child
with its one line on stderr (the watchdog's last resort), which the parent reports. Nothing is pickled. What the child prints (the model file's output, warnings) is
passed on to stderr once it has finished, so the parent's stdout stays the report alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from advisor.errors import EXIT_INTERRUPTED, EXIT_PROBE_FAILED, AdvisorError, BadInput, DeviceUnavailable, ProbeFailed

_ERRORS = {cls.exit_code: cls for cls in (BadInput, DeviceUnavailable, ProbeFailed)}
_PREFIX = "bsadvisor: error: "


def run_isolated(model: str, device: str, settings, probe: str) -> dict:
    """The JSON document of `probe` run in a child process; a crash there is a ProbeFailed."""
    with tempfile.TemporaryDirectory(prefix="bsadvisor-isolate-") as folder:
        result_path = Path(folder) / "result.json"
        request = {"model": str(model), "device": device, "settings": settings.to_dict(), "probe": probe,
                   "result": str(result_path)}
        child = subprocess.run([sys.executable, "-m", "advisor.isolate"], input=json.dumps(request),
                               capture_output=True, text=True, errors="replace")
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
    if "doc" in result:
        sys.stderr.write(child.stdout + child.stderr)
        return result["doc"]
    if "error" in result:
        code, message = result["error"]["exit_code"], result["error"]["message"]
        if code == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        raise _ERRORS.get(code, ProbeFailed)(message)
    raise ProbeFailed(crash_message(child.returncode, child.stderr))


def crash_message(returncode: int, stderr: str) -> str:
    """One line for a child that ended without a result: its watchdog's own line, or how it died."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if last.startswith(_PREFIX):  # the child's watchdog ended it, and said why
        return last[len(_PREFIX):]
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        how = f"was killed by {name} (signal {-returncode})"
    else:
        how = f"exited with code {returncode} before reporting"
    said = f"; its last words: {last[:200]}" if last else ""
    return f"the probe process {how}: a crash in the model file's code or the driver{said}"


def _child() -> int:
    import warnings

    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # as the command line does
    from advisor.api import run
    from advisor.settings import Settings
    from advisor.watchdog import last_resort

    request = json.loads(sys.stdin.read())
    settings = Settings.from_dict(request["settings"])
    try:
        with last_resort(_exit_probe_failed):
            report = run(request["model"], settings, request["probe"], request["device"])
        result, code = {"doc": report.to_dict()}, 0
    except AdvisorError as exc:
        result, code = {"error": {"exit_code": exc.exit_code, "message": str(exc)}}, exc.exit_code
    except KeyboardInterrupt:
        result, code = {"error": {"exit_code": EXIT_INTERRUPTED, "message": "interrupted"}}, EXIT_INTERRUPTED
    path = Path(request["result"])
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result, allow_nan=False))
    os.replace(partial, path)  # all or nothing: a crash while writing leaves no result
    return code


def _exit_probe_failed(message: str) -> None:
    """The child's last resort: its one line for the parent to quote (crash_message), and exit 4."""
    sys.stderr.write(f"{_PREFIX}{message}\n")
    sys.stderr.flush()
    os._exit(EXIT_PROBE_FAILED)


if __name__ == "__main__":
    sys.exit(_child())
