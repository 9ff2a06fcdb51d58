"""The integrations, against the real libraries on CPU: a Lightning Trainer.fit with BatchSizeAdvisor and a
transformers.Trainer with advised_arguments train at the advised batch and learning rate; a plain loop gets
the advice. Each is skipped where its library is not installed. The test clock (tests/clocked.py) makes the
advice deterministic, so that it can be told apart from the settings it replaces."""

import pytest
import torch

from tests.clocked import ClockedCpu

TINY = {"memory": "1MiB", "noise_budget": "2steps", "noise_warmup_steps": 2, "lr_sweep": False,
        "max_step_seconds": 0.05, "seed": 1}


def teacher_dataset(n=512):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 20, generator=g)
    return torch.utils.data.TensorDataset(x, (x @ torch.randn(20, 5, generator=g)).argmax(1))


def test_lightning_fit_trains_at_the_advised_batch_and_rate():
    L = pytest.importorskip("lightning.pytorch")
    from advisor.integrations.lightning import BatchSizeAdvisor

    class Data(L.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.batch_size = 2  # tuned for a tiny batch: the advice moves it

        def train_dataloader(self):
            return torch.utils.data.DataLoader(teacher_dataset(), batch_size=self.batch_size, drop_last=True)

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))
            self.seen = []  # (examples, learning rate, accumulation) at every training step

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("loss", loss)  # quiet on the probes' copies, which no trainer holds
            return loss

        def on_train_batch_start(self, batch, batch_idx):  # the real run's steps only
            self.seen.append((len(batch[0]), self.trainer.optimizers[0].param_groups[0]["lr"],
                              self.trainer.accumulate_grad_batches))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    advisor_callback = BatchSizeAdvisor(apply=True, device=ClockedCpu(), echo=lambda line: None, **TINY)
    module, data = Classifier(), Data()
    L.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False,
              callbacks=[advisor_callback]).fit(module, datamodule=data)
    report = advisor_callback.report
    assert report.recommendation.base_batch == 2 and report.recommendation.base_lr == 0.01
    assert (report.micro_batch, report.learning_rate) != (2, 0.01)  # the advice is a change...
    assert data.batch_size == report.micro_batch  # ...and training ran with it
    assert module.seen and all(seen == (report.micro_batch, pytest.approx(report.learning_rate),
                                        report.accumulation_steps) for seen in module.seen)


def test_transformers_trainer_trains_a_from_pretrained_model_at_the_advised_batch_and_rate(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from advisor.integrations.huggingface import advice

    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "tiny")
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "tiny")  # in eval mode, as always
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    ids = torch.randint(0, 64, (256, 16), generator=torch.Generator().manual_seed(0))
    dataset = [{"input_ids": row, "labels": row} for row in ids]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
                                          learning_rate=1e-3, max_steps=3, report_to=[], use_cpu=True,
                                          logging_strategy="no", save_strategy="no", disable_tqdm=True)
    advised, report = advice(model, dataset, args, device=ClockedCpu(), **TINY)

    assert modes and all(modes) and not model.training  # the probes trained copies, in training mode
    assert (advised.per_device_train_batch_size, advised.learning_rate) == (report.micro_batch, report.learning_rate)
    assert (report.micro_batch, report.learning_rate) != (2, 1e-3)
    assert advised.gradient_accumulation_steps == report.accumulation_steps
    seen = []

    class Record(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, train_dataloader=None, **kwargs):
            seen.append((train_dataloader.total_batch_size if hasattr(train_dataloader, "total_batch_size")
                         else train_dataloader.batch_size, optimizer.param_groups[0]["lr"]))

    transformers.Trainer(model=model, args=advised, train_dataset=dataset, callbacks=[Record()]).train()
    assert seen and {size for size, _ in seen} == {report.micro_batch}
    assert max(lr for _, lr in seen) == pytest.approx(report.learning_rate)  # after the warm-up, if one is advised
    assert advised.warmup_steps == report.warmup_steps and (seen[0][1] < report.learning_rate) == bool(report.warmup_steps)


def test_a_plain_loop_is_called_with_the_advice():
    from advisor.integrations.loop import advised

    data = teacher_dataset()

    def model():
        return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))

    @advised(model, torch.utils.data.DataLoader(data, batch_size=8), device=ClockedCpu(), base_batch=8, **TINY)
    def train(advice, steps):
        loader = torch.utils.data.DataLoader(data, batch_size=advice.micro_batch, shuffle=True, drop_last=True)
        net = model()
        opt = torch.optim.AdamW(net.parameters(), lr=advice.learning_rate)
        for step, (x, y) in zip(range(steps), loader):
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            opt.zero_grad()
        return advice, len(x)

    advice, last = train(steps=3)
    assert last == advice.micro_batch and advice.recommendation.base_batch == 8
