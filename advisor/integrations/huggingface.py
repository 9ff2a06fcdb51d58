"""Hugging Face `transformers.Trainer`: TrainingArguments with the advised batch and learning rate.

    args = advised_arguments(model, train_dataset, TrainingArguments(output_dir="out", learning_rate=5e-5,
                                                                     per_device_train_batch_size=8),
                             data_collator=collator, noise_budget="40steps")
    Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator).train()

The Trainer builds its dataloader and optimizer before any TrainerCallback runs, so the advice is applied
before the Trainer exists: the arguments come back with `per_device_train_batch_size`,
`gradient_accumulation_steps`, `learning_rate` and `warmup_steps` advised, the rest as given. The probes
train copies of the model (in training mode, whatever mode from_pretrained left it in) on examples drawn
from `train_dataset` and collated by `data_collator`, as the Trainer would, with the Trainer's optimizer
settings (AdamW: the arguments' rate, betas, epsilon, weight decay) and its mixed precision (bf16, fp16).
The dataset's examples must be what the model takes (tokenized, model columns only). The Trainer ramps
`warmup_steps` from 0, where the advice ramps from the base rate: over the same steps, a gentler ramp.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import TrainingArguments, default_data_collator

from advisor import api
from advisor.results import Report


def advised_arguments(model: torch.nn.Module, train_dataset, args: TrainingArguments, data_collator=None,
                      **options) -> TrainingArguments:
    """`args` with the advised per-device batch, accumulation, learning rate and warm-up; `options` as
    advisor.recommend takes them (`advice()` returns the Report beside them)."""
    return advice(model, train_dataset, args, data_collator, **options)[0]


def advice(model: torch.nn.Module, train_dataset, args: TrainingArguments, data_collator=None,
           **options) -> tuple[TrainingArguments, Report]:
    """The advised arguments and the Report they came from."""
    loader = torch.utils.data.DataLoader(train_dataset, collate_fn=data_collator or default_data_collator)
    base_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
    report = api.recommend(model, loader, optimizer=lambda params: adamw_as_configured(params, args),
                           autocast="bfloat16" if args.bf16 else "float16" if args.fp16 else None,
                           **{"base_batch": base_batch, "device": "cpu" if args.use_cpu else "auto", **options})
    advised = dataclasses.replace(args, per_device_train_batch_size=report.micro_batch,
                                  gradient_accumulation_steps=report.accumulation_steps,
                                  learning_rate=report.learning_rate, warmup_steps=report.warmup_steps)
    return advised, report


def adamw_as_configured(params, args: TrainingArguments) -> torch.optim.Optimizer:
    """The Trainer's default optimizer with these arguments' settings."""
    return torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, weight_decay=args.weight_decay)
