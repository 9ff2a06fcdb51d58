"""examples/ci/bsadvisor-capacity.yml: its own `run:` lines, run as GitHub Actions runs them, fail the job when
the batch does not fit (no pipe hides the exit status), and the install takes bsadvisor from a pinned source
the user controls (it is not on the public index), refusing to run with the placeholder."""

import os
import re
import subprocess
from pathlib import Path

import pytest

WORKFLOW = Path(__file__).resolve().parent.parent / "examples" / "ci" / "bsadvisor-capacity.yml"
MATRIX = {"profile": "a100-sxm-40gb", "batch": "256"}
# GitHub Actions: a step without `shell:` runs `bash -e {0}`; `shell: bash` runs the line below.
SHELLS = {None: ["bash", "-e"], "bash": ["bash", "--noprofile", "--norc", "-eo", "pipefail"]}


def steps() -> list[dict]:
    """Each step's name, shell and run script (a small reader for this file's plain YAML)."""
    found, step, block = [], None, None
    for line in WORKFLOW.read_text().splitlines():
        indent = len(line) - len(line.lstrip())
        if block is not None:
            if line.strip() and indent <= block[0]:
                step["run"], block = "\n".join(block[1]) + "\n", None
            else:
                block[1].append(line[block[0] + 2:] if line.strip() else "")
                continue
        stripped = line.strip()
        if stripped.startswith("- ") and indent == 6:
            step = {"name": None, "shell": None, "run": None}
            found.append(step)
            stripped = stripped[2:]
        if step is None:
            continue
        key, _, value = stripped.partition(":")
        if key in ("name", "shell"):
            step[key] = value.strip()
        elif key == "run":
            if value.strip() == "|":
                block = (indent, [])
            else:
                step["run"] = value.strip() + "\n"
    if block is not None:
        step["run"] = "\n".join(block[1]) + "\n"
    return [s for s in found if s["run"]]


def step(fragment: str) -> dict:
    [chosen] = [s for s in steps() if fragment in (s["name"] or "")]
    return chosen


def run_step(chosen: dict, tmp_path: Path, env: dict, shell: list[str]) -> subprocess.CompletedProcess:
    script = re.sub(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", lambda m: MATRIX[m.group(1)], chosen["run"])
    path = tmp_path / "step.sh"
    path.write_text(script)
    return subprocess.run([*shell, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)


def fake(tmp_path: Path, name: str, body: str) -> dict:
    """PATH with a stand-in `name` first, as the runner would find it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MODEL": "model.py"}


@pytest.mark.parametrize("shell", [SHELLS[None], SHELLS["bash"]], ids=["bash -e", "shell: bash"])
@pytest.mark.parametrize("exit_code, fails", [(0, False), (1, True), (2, True)])
def test_the_check_step_fails_exactly_when_bsadvisor_does(tmp_path, shell, exit_code, fails):
    env = fake(tmp_path, "bsadvisor", f"echo '{{\"fits\": {str(not exit_code).lower()}}}'\nexit {exit_code}\n")
    done = run_step(step("fit on"), tmp_path, env, shell)
    assert (done.returncode != 0) == fails, done
    assert (tmp_path / f"capacity-{MATRIX['profile']}.json").read_text().startswith("{\"fits\"")


def test_each_step_declares_the_shell_it_is_tested_under():
    for s in steps():
        assert s["shell"] in SHELLS, s


def test_the_install_refuses_the_placeholder_and_installs_the_pinned_source(tmp_path):
    env = fake(tmp_path, "python", 'echo "python $*" >> calls.txt\n')
    install = step("Install")
    assert "pip install bsadvisor" not in install["run"]  # not on the public index

    placeholder = re.search(r'BSADVISOR: "(.*)"', WORKFLOW.read_text()).group(1)
    done = run_step(install, tmp_path, {**env, "BSADVISOR": placeholder}, SHELLS[install["shell"]])
    assert done.returncode != 0 and "set BSADVISOR" in done.stdout
    assert not (tmp_path / "calls.txt").exists()

    for source in ("bsadvisor @ git+https://github.com/acme/bsadvisor@" + "0" * 40,
                   "tools/bsadvisor-0.1.0-py3-none-any.whl"):
        (tmp_path / "calls.txt").unlink(missing_ok=True)
        done = run_step(install, tmp_path, {**env, "BSADVISOR": source}, SHELLS[install["shell"]])
        assert done.returncode == 0, done
        calls = (tmp_path / "calls.txt").read_text().splitlines()
        assert calls[-1] == f"python -m pip install {source}"
        assert "--index-url https://download.pytorch.org/whl/cpu" in calls[0]
