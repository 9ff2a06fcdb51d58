"""The catalogue of bad inputs: each one, through the real CLI, is exit 2 (3 for a device this machine
lacks) with ONE line on stderr, `bsadvisor: error: ...`, that names the file or flag and the problem,
and never a traceback."""

import pytest
import torch
from typer.testing import CliRunner

from advisor.cli import app

FAST = ["--device", "cpu", "--max-step-seconds", "0.05", "--noise-warmup-steps", "0", "--noise-budget", "20steps"]

# A valid model file; each case appends lines that redefine or delete one name (the last definition wins).
GOOD = """\
import torch

def model():
    return torch.nn.Linear(4, 3)

def batch(n):
    return torch.randn(n, 4), torch.randint(0, 3, (n,))
"""


def run_cli(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}")
    return result


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bsadvisor: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""


# --- the model file ------------------------------------------------------------------------------------

FILE_CASES = {
    # id: (file contents appended to GOOD, or replacing it when bytes / starting with "!"), fragments
    "prose": ("!Train the model on my data, then tell me the best batch size please.\n", ["not valid Python"]),
    "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01" + bytes(range(256)), ["not valid Python"]),
    "latin1": (b"x = '\xe9t\xe9'\n", ["not valid Python"]),
    "syntax-error": ("def model(:\n    pass\n", ["not valid Python", "line 9"]),
    "import-error": ("import nonexistent_module_xyz\n", ["importing it raised ModuleNotFoundError",
                                                          "nonexistent_module_xyz"]),
    "raises-at-import": ("raise RuntimeError('no data directory')\n", ["importing it raised RuntimeError",
                                                                       "no data directory"]),
    "exits-at-import": ("import sys\nsys.exit(1)\n", ["importing it", "sys.exit"]),
    "empty": ("!", ["defines no `model`"]),
    "no-model": ("del model\n", ["defines no `model`"]),
    "no-batch": ("del batch\n", ["defines no `batch`"]),
    "model-not-callable": ("model = 5\n", ["`model` is int", "expected a function"]),
    "batch-not-callable": ("batch = [1, 2]\n", ["`batch` is list", "expected a function"]),
    "loss-not-callable": ("loss = 'mse'\n", ["`loss` is str"]),
    "optimizer-not-callable": ("optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)\n",
                               ["`optimizer` is SGD"]),
    "model-returns-non-module": ("def model():\n    return [torch.nn.Linear(4, 3)]\n",
                                 ["model() returned list", "torch.nn.Module"]),
    "model-returns-class": ("def model():\n    return torch.nn.Linear\n", ["model() returned type"]),
    "model-no-parameters": ("def model():\n    return torch.nn.ReLU()\n", ["model()", "no trainable parameters"]),
    "model-frozen": ("def model():\n    m = torch.nn.Linear(4, 3)\n    m.requires_grad_(False)\n    return m\n",
                     ["model()", "no trainable parameters"]),
    "model-raises": ("def model():\n    raise ValueError('bad config')\n",
                     ["model() raised ValueError: bad config"]),
    "model-exits": ("def model():\n    import sys; sys.exit('bye')\n", ["model()", "sys.exit"]),
    "batch-none": ("def batch(n):\n    return None\n", ["batch(2) returned NoneType", "no tensors"]),
    "batch-string": ("def batch(n):\n    return 'data/train.csv'\n", ["batch(2) returned str", "no tensors"]),
    "batch-list-of-ints": ("def batch(n):\n    return list(range(n))\n", ["batch(2) returned list", "no tensors"]),
    "batch-scalar-tensor": ("def batch(n):\n    return torch.tensor(1.0)\n", ["batch(2)", "first dimension"]),
    "batch-fewer": ("def batch(n):\n    return torch.randn(n - 1, 4), torch.randint(0, 3, (n - 1,))\n",
                    ["batch(2) must return 2 examples", "(1, 4)"]),
    "batch-more": ("def batch(n):\n    return torch.randn(n + 5, 4), torch.randint(0, 3, (n + 5,))\n",
                   ["batch(2) must return 2 examples", "(7, 4)"]),
    "batch-fixed-size": ("def batch(n):\n    return torch.randn(32, 4), torch.randint(0, 3, (32,))\n",
                         ["batch(2) must return 2 examples"]),
    "batch-mismatched": ("def batch(n):\n    return torch.randn(n, 4), torch.randint(0, 3, (n + 1,))\n",
                         ["batch(2) must return 2 examples", "(2, 4), (3,)"]),
    "batch-dict-mismatched": ("def batch(n):\n    return {'x': torch.randn(n, 4), 'y': torch.zeros(1)}\n",
                              ["batch(2) must return 2 examples"]),
    "batch-nan": ("def batch(n):\n    return torch.full((n, 4), float('nan')), torch.randint(0, 3, (n,))\n",
                  ["batch(2)", "NaN or infinite"]),
    "batch-inf": ("def batch(n):\n    x = torch.randn(n, 4); x[0, 0] = float('inf')\n"
                  "    return x, torch.randint(0, 3, (n,))\n", ["batch(2)", "NaN or infinite"]),
    "batch-raises": ("def batch(n):\n    raise FileNotFoundError('train.bin')\n",
                     ["batch(2) raised FileNotFoundError", "train.bin"]),
    "batch-wrong-features": ("def batch(n):\n    return torch.randn(n, 7), torch.randint(0, 3, (n,))\n",
                             ["the default loss raised RuntimeError at batch 2", "mat1 and mat2"]),
    "loss-non-scalar": ("def loss(m, b):\n    return (m(b[0]) ** 2).sum(1)\n",
                        ["loss(model, batch) returned (2,)", "scalar"]),
    "loss-nan": ("def loss(m, b):\n    return m(b[0]).sum() * float('nan')\n", ["loss(model, batch)", "not finite"]),
    "loss-inf": ("def loss(m, b):\n    return m(b[0]).sum() * float('inf')\n", ["loss(model, batch)", "not finite"]),
    "loss-float": ("def loss(m, b):\n    return m(b[0]).mean().item()\n", ["loss(model, batch) returned float",
                                                                         "scalar tensor"]),
    "loss-none": ("def loss(m, b):\n    m(b[0])\n", ["loss(model, batch) returned NoneType"]),
    "loss-detached": ("def loss(m, b):\n    return m(b[0]).mean().detach()\n",
                      ["loss(model, batch)", "not differentiable"]),
    "loss-constant": ("def loss(m, b):\n    return torch.tensor(1.0)\n", ["loss(model, batch)", "not differentiable"]),
    "loss-raises": ("def loss(m, b):\n    raise KeyError('labels')\n", ["loss(model, batch) raised KeyError"]),
    "loss-default-no-target": ("def batch(n):\n    return torch.randn(n, 4)\n",
                               ["the default loss raised TypeError", "define loss(model, batch)"]),
    "optimizer-raises": ("def optimizer(params):\n    raise ImportError('apex is not installed')\n",
                         ["optimizer(params) raised ImportError", "apex"]),
    "optimizer-not-optimizer": ("def optimizer(params):\n    return 'adam'\n",
                                ["optimizer(params) returned str", "torch.optim.Optimizer"]),
    "optimizer-class": ("optimizer = torch.optim.Adam\n", []),  # valid: a class is a factory; see below
    "base-batch-zero": ("BASE_BATCH_SIZE = 0\n", ["BASE_BATCH_SIZE must be a positive int, got 0"]),
    "base-batch-negative": ("BASE_BATCH_SIZE = -3\n", ["BASE_BATCH_SIZE", "got -3"]),
    "base-batch-string": ("BASE_BATCH_SIZE = '32'\n", ["BASE_BATCH_SIZE", "got '32'"]),
    "base-batch-bool": ("BASE_BATCH_SIZE = True\n", ["BASE_BATCH_SIZE", "got True"]),
    "base-batch-float": ("BASE_BATCH_SIZE = 32.0\n", ["BASE_BATCH_SIZE", "got 32.0"]),
}
del FILE_CASES["optimizer-class"]


def _write(tmp_path, contents, name="model.py"):
    path = tmp_path / name
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    elif contents.startswith("!"):
        path.write_text(contents[1:])
    else:
        path.write_text(GOOD + "\n" + contents)
    return path


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_bad_model_file(tmp_path, case):
    contents, fragments = FILE_CASES[case]
    path = _write(tmp_path, contents)
    result = run_cli("recommend", path, *FAST)
    assert_one_line_error(result, 2, str(path), *fragments)


@pytest.mark.parametrize("command", ["max-batch", "noise", "throughput"])
@pytest.mark.parametrize("case", ["syntax-error", "batch-fewer", "loss-nan", "model-raises"])
def test_bad_model_file_other_commands(tmp_path, command, case):
    contents, fragments = FILE_CASES[case]
    path = _write(tmp_path, contents)
    flags = ["--device", "cpu"] + (["--noise-warmup-steps", "0"] if command == "noise" else [])
    assert_one_line_error(run_cli(command, path, *flags), 2, str(path), *fragments)


ELSEWHERE = {  # a model file written for a device the runner lacks: model() or batch() puts tensors there
    "model-to-mps": "def model():\n    return torch.nn.Linear(4, 3).to('mps')\n",
    "batch-on-mps": "def batch(n):\n    return torch.randn(n, 4, device='mps'), torch.randint(0, 3, (n,), device='mps')\n",
    "model-cuda": "def model():\n    return torch.nn.Linear(4, 3).cuda()\n",
}


@pytest.mark.parametrize("command", [["check", "--profile", "t4-16gb", "--batch-size", "2"], ["max-batch", *FAST[:2]]])
@pytest.mark.parametrize("case", sorted(ELSEWHERE))
def test_a_file_that_builds_on_a_device_this_machine_lacks_is_told_the_contract(tmp_path, command, case):
    if "cuda" in case and torch.cuda.is_available() or "mps" in case and torch.backends.mps.is_available():
        pytest.skip("the device exists here")
    path = _write(tmp_path, ELSEWHERE[case])
    result = run_cli(command[0], path, *command[1:])
    assert_one_line_error(result, 2, str(path), "the file builds on the CPU")


LATE = """
def loss(m, b):
    x, y = b
    value = torch.nn.functional.cross_entropy(m(x), y)
    if x.shape[0] <= 4:
        return value
    {}
"""


@pytest.mark.parametrize("late, fragments", [
    ("raise ValueError('longer than the cache')", ["loss(model, batch) raised ValueError at batch 8", "cache"]),
    ("return value.item()", ["loss(model, batch) returned float at batch 8"]),
    ("return value.detach()", ["loss(model, batch) is not differentiable"]),
    ("return value.expand(x.shape[0])", ["loss(model, batch) returned (8,) at batch 8"]),
])
def test_loss_that_fails_only_at_a_larger_batch(tmp_path, late, fragments):
    """The contract check passes at batch 2; the throughput probe meets the failure at batch 8, and it is
    still one line naming the file, not the user's traceback."""
    path = _write(tmp_path, LATE.format(late))
    result = run_cli("throughput", path, "--device", "cpu", "--batch-sizes", "2,8")
    assert_one_line_error(result, 2, str(path), *fragments)


def test_missing_model_file(tmp_path):
    path = tmp_path / "nowhere" / "model.py"
    assert_one_line_error(run_cli("recommend", path, *FAST), 2, str(path), "no such model file")


def test_model_file_is_a_directory(tmp_path):
    assert_one_line_error(run_cli("max-batch", tmp_path, "--device", "cpu"), 2, str(tmp_path), "directory")


def test_model_file_without_py_suffix_is_read_as_python(tmp_path):
    path = _write(tmp_path, "del batch\n", name="model.txt")
    assert_one_line_error(run_cli("max-batch", path, "--device", "cpu"), 2, str(path), "defines no `batch`")


# --- flags ---------------------------------------------------------------------------------------------

FLAG_CASES = [
    # (command, flags, exit code, fragments)
    ("recommend", ["--memory", "0"], 2, ["--memory", "'0'"]),
    ("recommend", ["--memory", "-5GB"], 2, ["--memory", "'-5GB'"]),
    ("recommend", ["--memory", "banana"], 2, ["--memory", "'banana'", "512MiB"]),
    ("recommend", ["--memory", "1.5XB"], 2, ["--memory", "'1.5XB'"]),
    ("recommend", ["--memory", "1e999"], 2, ["--memory", "'1e999'"]),
    ("recommend", ["--memory", ""], 2, ["--memory"]),
    ("recommend", ["--margin", "1"], 2, ["--margin", "[0, 1)", "1.0"]),
    ("recommend", ["--margin", "-0.1"], 2, ["--margin", "-0.1"]),
    ("recommend", ["--margin", "nan"], 2, ["--margin"]),
    ("recommend", ["--base-batch", "0"], 2, ["--base-batch", "positive"]),
    ("recommend", ["--base-lr", "0"], 2, ["--base-lr", "positive"]),
    ("recommend", ["--base-lr", "nan"], 2, ["--base-lr", "nan"]),
    ("recommend", ["--base-lr", "-inf"], 2, ["--base-lr"]),
    ("recommend", ["--noise-warmup-steps", "-1"], 2, ["--noise-warmup-steps", "-1"]),
    ("recommend", ["--max-step-seconds", "0"], 2, ["--max-step-seconds", "positive"]),
    ("recommend", ["--max-step-seconds", "inf"], 2, ["--max-step-seconds"]),
    ("recommend", ["--seed", "-1"], 2, ["--seed"]),
    ("recommend", ["--seed", str(2**70)], 2, ["--seed"]),
    ("recommend", ["--device", "tpu"], 2, ["--device 'tpu'", "auto, cpu, cuda, mps or cuda:N"]),
    ("recommend", ["--device", "cuda:"], 2, ["--device 'cuda:'"]),
    ("recommend", ["--device", "cuda:-1"], 2, ["--device 'cuda:-1'"]),
    ("max-batch", ["--memory", "12 parsecs"], 2, ["--memory"]),
    ("max-batch", ["--margin", "1.5"], 2, ["--margin"]),
    ("max-batch", ["--device", "gpu"], 2, ["--device 'gpu'"]),
    ("noise", ["--batch-size", "0"], 2, ["--batch-size"]),
    ("noise", ["--batch-size", "1"], 2, ["--batch-size", "at least 2"]),
    ("noise", ["--snapshots", "0"], 2, ["--snapshots"]),
    ("noise", ["--noise-warmup-steps", "-4"], 2, ["--noise-warmup-steps"]),
    ("throughput", ["--batch-sizes", "8,x"], 2, ["--batch-sizes", "'8,x'"]),
    ("throughput", ["--batch-sizes", "0,4"], 2, ["--batch-sizes", "'0,4'"]),
    ("throughput", ["--batch-sizes", "-8"], 2, ["--batch-sizes"]),
    ("throughput", ["--batch-sizes", ","], 2, ["--batch-sizes"]),
    ("throughput", ["--batch-sizes", ""], 2, ["--batch-sizes"]),
    ("throughput", ["--batch-sizes", "4.5"], 2, ["--batch-sizes"]),
    ("throughput", ["--max-step-seconds", "-1"], 2, ["--max-step-seconds"]),
]
if not torch.cuda.is_available():
    FLAG_CASES += [
        ("recommend", ["--device", "cuda"], 3, ["--device cuda", "CUDA is not available"]),
        ("recommend", ["--device", "cuda:7"], 3, ["--device cuda:7", "CUDA is not available"]),
        ("max-batch", ["--device", "cuda:0"], 3, ["--device cuda:0"]),
        ("noise", ["--device", "cuda"], 3, ["--device cuda"]),
        ("throughput", ["--device", "cuda:1"], 3, ["--device cuda:1"]),
    ]
elif torch.cuda.device_count() < 8:
    FLAG_CASES += [("recommend", ["--device", "cuda:7"], 3, ["--device cuda:7", "no GPU 7"])]


@pytest.mark.parametrize("command, flags, code, fragments", FLAG_CASES,
                         ids=[f"{c}{' '.join(f)}".replace(" ", "_") or c for c, f, _, _ in FLAG_CASES])
def test_bad_flag(tmp_path, command, flags, code, fragments):
    path = _write(tmp_path, "")
    defaults = {"recommend": FAST, "max-batch": ["--device", "cpu"], "noise": ["--device", "cpu"],
                "throughput": ["--device", "cpu", "--max-step-seconds", "0.05"]}[command]
    result = run_cli(command, path, *defaults, *flags)  # the last occurrence of a flag wins
    assert_one_line_error(result, code, *fragments)


@pytest.mark.parametrize("flags", [["--margin", "x"], ["--base-batch", "3.5"], ["--seed", "abc"],
                                   ["--json", "--no-such-flag"], ["--noise-warmup-steps", ""]])
def test_typer_usage_errors_carry_no_traceback(tmp_path, flags):
    result = run_cli("recommend", _write(tmp_path, ""), *FAST, *flags)
    assert result.exit_code == 2, result.stderr
    assert "Usage:" in result.stderr
    assert result.stdout == ""


def test_missing_model_argument():
    result = run_cli("recommend")
    assert result.exit_code == 2
    assert "Missing argument" in result.stderr


# --- memory --------------------------------------------------------------------------------------------

# 4·256 + 256 + 256·3 + 3 = 2051 parameters: 8 KiB of weights, as much again of gradients, twice of Adam.
WIDER = "def model():\n    return torch.nn.Sequential(torch.nn.Linear(4, 256), torch.nn.Linear(256, 3))\n"

@pytest.mark.parametrize("command", ["recommend", "max-batch", "noise", "throughput"])
def test_nothing_fits(tmp_path, command):
    path = _write(tmp_path, WIDER)
    flags = FAST if command == "recommend" else ["--device", "cpu"]
    result = run_cli(command, path, *flags, "--memory", "1KiB")
    assert_one_line_error(result, 2, str(path), "nothing fits", "bytes", "1 KiB")
    # the bytes it would need: the parameters and their gradients at least (4*3 + 3 floats, twice)
    needed = int(result.stderr.split("needs ")[1].split("(")[1].split(" bytes")[0])
    assert needed >= 4 * 2051 * 4


def test_nothing_fits_once_the_margin_is_kept(tmp_path):
    path = _write(tmp_path, WIDER)
    result = run_cli("max-batch", path, "--device", "cpu", "--memory", "80KiB", "--margin", "0.9")
    assert_one_line_error(result, 2, str(path), "nothing fits")


def test_a_valid_file_passes(tmp_path):
    """The cases above fail for the reason they name: the same file without the change succeeds."""
    path = _write(tmp_path, "optimizer = torch.optim.Adam\nBASE_BATCH_SIZE = 8\n")
    result = run_cli("max-batch", path, "--device", "cpu", "--memory", "64MiB", "--json")
    assert result.exit_code == 0, result.stderr
