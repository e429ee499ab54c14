"""The ``colab`` training preset: the paper's schedule (MSAN paper, §3.1) scaled to one Colab session."""

from __future__ import annotations

import argparse

import pytest
import torch

from kitsmsan.bench.memory import (
    EFFICIENCY,
    GPUS,
    projected_hours,
    required_gib,
    train_flops_per_iter,
    training_memory,
)
from kitsmsan.commands import train as train_cmd
from kitsmsan.models import list_models
from kitsmsan.train.config import PRESETS, TrainConfig

#: what the colab preset promises: every network within this many hours on a T4 at EFFICIENCY
COLAB_TARGET_H = 4.0


def _lr_at(config: TrainConfig, iteration: int) -> float:
    """The learning rate the training loop's scheduler gives at ``iteration`` (StepLR, as in training)."""
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=config.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step, gamma=config.lr_gamma)
    for _ in range(iteration):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def test_schedule_shape_is_the_papers_scaled():
    paper, colab = TrainConfig.from_preset("paper"), TrainConfig.from_preset("colab")
    scale = colab.num_iters / paper.num_iters
    # milestones at 1/4, 2/4 and 3/4 of the run, as the paper's 100k, 200k, 300k of 400k
    assert paper.num_iters == 4 * paper.lr_step
    assert colab.num_iters == 4 * colab.lr_step
    assert colab.lr_step == paper.lr_step * scale
    assert (colab.lr, colab.lr_gamma) == (paper.lr, paper.lr_gamma) == (1e-3, 0.1)


def test_learning_rate_steps_at_quarters():
    colab = TrainConfig.from_preset("colab", lr_step=4, num_iters=16)  # same shape, small enough to step
    lrs = [_lr_at(colab, i) for i in (0, 3, 4, 8, 12, 15)]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5, 1e-6, 1e-6])


def test_everything_else_is_the_papers_recipe():
    paper, colab = PRESETS["paper"], PRESETS["colab"]
    changed = {k for k in paper if paper[k] != colab.get(k)}
    assert changed == {"num_iters", "lr_step", "ckpt_every", "eval_every", "workers"}
    assert set(colab) == set(paper)


def test_fits_a_colab_session_on_a_t4():
    colab = TrainConfig.from_preset("colab")
    flops = train_flops_per_iter()
    hours = {
        v: projected_hours(f, "T4", num_iters=colab.num_iters, efficiency=EFFICIENCY)
        for v, f in flops.items()
    }
    assert set(hours) == set(list_models())
    assert max(hours.values()) <= COLAB_TARGET_H
    assert max(hours.values()) >= 0.8 * COLAB_TARGET_H  # not needlessly short either
    # a checkpoint at least every 5 minutes at that speed, so a killed session loses little
    s_per_it = max(hours.values()) * 3600 / colab.num_iters
    assert colab.ckpt_every * s_per_it <= 300


def test_train_cli_offers_every_preset():
    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    action = next(
        a for a in parser._subparsers._group_actions[0].choices["train"]._actions if a.dest == "preset"
    )
    assert set(action.choices) == set(PRESETS)


def test_t4_memory_fits_with_fp16():
    row = training_memory("msan_v2_ds", precision="fp16")  # the largest network, the paper's step
    assert required_gib(row["counted_bytes"]) <= GPUS["T4"]["usable_gib"]
