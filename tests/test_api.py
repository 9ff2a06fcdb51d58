"""The Python API: objects in (callables, a module instance, a DataLoader, an iterable of batches), a typed
report out, failures as exceptions, and nothing of the interpreter changed by a call."""

import signal
import sys
import types

import pytest
import torch

import advisor
from advisor.errors import BadInput, DeviceUnavailable
from advisor.inputs import DrawnFromDataset, JoinedBatches
from tests.models import MLP

TINY = {"memory": "1MiB", "noise_budget": "2steps", "noise_warmup_steps": 2, "lr_sweep": False,
        "max_step_seconds": 0.05, "device": "cpu"}


def teacher_data(n=512, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    return x, (x @ torch.randn(20, 5, generator=g)).argmax(1)


def test_recommend_takes_a_module_a_dataloader_and_an_optimizer_and_leaves_them_as_they_were():
    """As in a training script: the instance (in eval mode, as from_pretrained returns it), its optimizer and
    its loader. The probes train copies, in training mode; the instance keeps its weights and its mode."""
    net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Dropout(0.1), torch.nn.ReLU(), torch.nn.Linear(64, 5))
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*teacher_data()), batch_size=16)
    report = advisor.recommend(net, loader, optimizer=opt, base_batch=16, **TINY)

    assert report.batch_size == report.micro_batch * report.accumulation_steps
    assert report.recommendation.optimizer_family == "sgd" and report.recommendation.base_lr == 0.05
    assert report.learning_rate == report.to_dict()["recommendation"]["learning_rate"] > 0
    assert any("eval mode" in note and "model.train()" in note for note in report.notes)
    assert not net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert opt.state == {} or all(not s for s in opt.state.values())  # the caller's optimizer never stepped
    doc = report.to_dict()
    assert doc["model"] == "Sequential" and set(doc) >= {"memory", "throughput", "noise", "recommendation"}


def test_callables_as_in_a_model_file_and_the_single_probes():
    x, y = teacher_data()

    def model():
        return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))

    def batch(size):
        i = torch.randint(len(x), (size,))
        return x[i], y[i]

    memory = advisor.max_batch(model, batch, device="cpu", memory="1MiB")
    assert set(memory.to_dict()) >= {"memory"} and "throughput" not in memory.to_dict()
    assert memory.memory.max_batch >= memory.memory.safe_max_batch >= 1
    timed = advisor.throughput(model, batch, device="cpu", batch_sizes=[2, 8], max_step_seconds=0.05)
    assert [p.batch for p in timed.throughput.points] == [2, 8]
    with pytest.raises(AttributeError, match="only recommend"):
        timed.batch_size


def test_a_model_file_through_the_api(write_model):
    path = write_model(MLP)
    spec = advisor.load(path)
    assert advisor.max_batch(spec, device="cpu", memory="1MiB").memory.max_batch == \
        advisor.max_batch(str(path), device="cpu", memory="1MiB").memory.max_batch
    with pytest.raises(BadInput, match="a model file defines its own batch"):
        advisor.max_batch(spec, lambda n: None)


def test_an_iterable_of_batches_is_joined_and_cut_to_the_size_asked():
    rows = torch.arange(30).reshape(10, 3)
    batches = [(rows[i:i + 3], rows[i:i + 3, 0]) for i in range(0, 9, 3)]  # three batches of 3 rows (9 rows)
    draw = JoinedBatches(batches, "data")
    first, second = draw(5), draw(5)
    assert first[0].tolist() == rows[:5].tolist() and first[1].tolist() == rows[:5, 0].tolist()
    assert second[0].tolist() == rows[5:9].tolist() + rows[:1].tolist()  # the rest, then the iterable again
    assert draw(1)[0].shape == (1, 3)


def test_batches_of_different_shapes_cannot_be_joined():
    draw = JoinedBatches([torch.zeros(2, 3), torch.zeros(2, 4)], "padded")
    with pytest.raises(BadInput, match="differ in shape past the first dimension"):
        draw(3)


def test_a_dataloader_draws_examples_at_random_collated_as_it_collates():
    dataset = [{"x": torch.tensor([float(i)]), "label": i} for i in range(100)]
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    drawn = DrawnFromDataset(loader.dataset, loader.collate_fn)(7)
    assert drawn["x"].shape == (7, 1) and drawn["label"].shape == (7,)
    assert torch.equal(drawn["x"][:, 0].long(), drawn["label"])


def test_no_process_wide_state_survives_a_call(tmp_path, write_model):
    """sys.path, sys.modules (a caller's module of the same name as the file's helper is not replaced),
    the bytecode flag, torch's random state and threads, the SIGALRM handler; no __pycache__ beside the file.
    The file's helper stays importable from batch() at every call."""
    (tmp_path / "helpers.py").write_text("import torch\nSCALE = 1.0\n")
    path = write_model(MLP.replace("def batch(n):\n", "def batch(n):\n    from helpers import SCALE\n")
                       + "import helpers\n")
    mine = types.ModuleType("helpers")  # the caller's own `helpers`, from its own folder
    mine.__file__ = str(tmp_path.parent / "a-project-of-the-callers" / "helpers.py")
    sys.modules["helpers"] = mine
    try:
        torch.manual_seed(1234)
        state = (list(sys.path), set(sys.modules), sys.dont_write_bytecode, torch.get_num_threads(),
                 signal.getsignal(signal.SIGALRM))
        rng = torch.get_rng_state()
        advisor.throughput(str(path), device="cpu", batch_sizes=[2, 4], max_step_seconds=0.05)
        assert (list(sys.path), set(sys.modules), sys.dont_write_bytecode, torch.get_num_threads(),
                signal.getsignal(signal.SIGALRM)) == state
        assert torch.equal(torch.get_rng_state(), rng) and sys.modules["helpers"] is mine
        assert not list(tmp_path.rglob("__pycache__"))
    finally:
        sys.modules.pop("helpers", None)


def test_failures_are_exceptions_naming_the_keyword(write_model):
    path = str(write_model(MLP))
    with pytest.raises(BadInput, match=r"^memory: cannot read 'banana' as a size"):
        advisor.max_batch(path, memory="banana")
    with pytest.raises(BadInput, match=r"^margin must be a fraction in \[0, 1\), got 1.5"):
        advisor.max_batch(path, margin=1.5)
    with pytest.raises(BadInput, match=r"^batch_size must be at least 2"):
        advisor.noise(path, batch_size=1)
    with pytest.raises(BadInput, match="plan_gpus needs profile"):
        advisor.recommend(path, plan_gpus=8)
    with pytest.raises(BadInput, match="^zero_stage needs shard"):
        advisor.check(path, profile="t4-16gb", batch_size=2, zero_stage=2)
    with pytest.raises(BadInput, match="^shard_wrap 'blocks': expected one of layers, torchtitan, all"):
        advisor.check(path, profile="t4-16gb", batch_size=2, shard=4, shard_wrap="blocks")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
            advisor.max_batch(path, device="cuda")


def test_import_bsadvisor_is_the_same_api():
    import bsadvisor

    assert bsadvisor.recommend is advisor.recommend and bsadvisor.Report is advisor.Report
    assert bsadvisor.__version__ == advisor.__version__ and "recommend" in dir(bsadvisor)
