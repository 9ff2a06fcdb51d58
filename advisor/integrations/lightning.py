"""A Lightning Callback that advises the batch size and learning rate at the start of `fit`.

    trainer = L.Trainer(callbacks=[BatchSizeAdvisor(apply=True, noise_budget="40steps")])
    trainer.fit(model, datamodule=dm)

It probes the real LightningModule (copies of it, in training mode), its training data (drawn from the
train dataloader's dataset, collated as the loader collates), its `training_step` as the loss and the
optimizer `configure_optimizers` made, on the module's device. With `apply=False` it prints the advice;
with `apply=True` it sets the batch size where Lightning's own BatchSizeFinder does (`batch_size` on the
model, its hparams or the datamodule), the trainer's gradient accumulation, and every optimizer's learning
rate (scaled alike, per parameter group, schedulers' base rates too). A warm-up, when advised, is printed:
schedules are the module's. One device: a data-parallel run is advised by `bsadvisor --nproc-per-node`.
"""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
from lightning.pytorch.utilities.parsing import lightning_getattr, lightning_hasattr, lightning_setattr
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from advisor import api
from advisor.errors import BadInput
from advisor.results import Report
from advisor.tables import paste_line


class BatchSizeAdvisor(pl.Callback):
    def __init__(self, apply: bool = False, batch_arg_name: str = "batch_size", echo=rank_zero_info, **options):
        """`options`: as advisor.recommend takes them (device defaults to the module's). `echo(line)` says the
        advice (not `log`: Lightning sets a callback's `log` to the module's)."""
        self.apply, self.batch_arg_name, self.echo, self.options = apply, batch_arg_name, echo, options
        self.report: Report | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise BadInput("BatchSizeAdvisor advises one device; for a data-parallel run use "
                           "`bsadvisor recommend --nproc-per-node N` on a model file")
        has_batch_size = lightning_hasattr(pl_module, self.batch_arg_name)
        if self.apply and not has_batch_size:
            raise BadInput(f"BatchSizeAdvisor(apply=True) sets `{self.batch_arg_name}` on the model, its hparams or "
                           "the datamodule, as Lightning's BatchSizeFinder does: none has it")
        loader = trainer.fit_loop._data_source.dataloader()  # the train dataloader as fit() resolves it
        base = lightning_getattr(pl_module, self.batch_arg_name) if has_batch_size else loader.batch_size
        options = {"device": str(pl_module.device), "base_batch": base, **self.options}
        self.report = api.recommend(pl_module, loader, loss=training_step_loss, optimizer=trainer.optimizers[0],
                                    **options)
        self.echo(f"bsadvisor: {paste_line(self.report.to_dict()['recommendation'])}")
        if self.apply:
            self._apply(trainer, pl_module, self.report)

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule, report: Report) -> None:
        lightning_setattr(pl_module, self.batch_arg_name, report.micro_batch)
        trainer.accumulate_grad_batches = report.accumulation_steps
        factor = report.learning_rate / report.recommendation.base_lr
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= factor
                if "initial_lr" in group:
                    group["initial_lr"] *= factor
        for config in trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "base_lrs"):
                config.scheduler.base_lrs = [lr * factor for lr in config.scheduler.base_lrs]
        if getattr(trainer.fit_loop, "_combined_loader", None) is not None:  # already built: at the new size
            trainer.fit_loop._combined_loader = None
        if report.warmup_steps:
            self.echo(f"bsadvisor: a linear warm-up over {report.warmup_steps} steps is advised; not applied "
                     "(the module's schedulers are its own)")


def training_step_loss(model: pl.LightningModule, batch) -> object:
    """The module's own training_step as the loss (its `self.log` calls have no trainer to go to: quiet)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log\\(\\)")
        out = model.training_step(batch, 0)
    if isinstance(out, dict):
        out = out.get("loss")
    if out is None:
        raise BadInput(f"{type(model).__name__}.training_step returned no loss (manual optimization is not "
                       "advised by this callback)")
    return out
