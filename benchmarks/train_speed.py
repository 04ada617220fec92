"""Training speed: the course's DataLoader loop vs the fast loader vs bare SGD steps (and, on CUDA,
the fast loader with its step replayed as a CUDA graph, what `fmnist-train --device cuda` runs).

All three are measured in one process, one after the other, so their ratios are
comparable even on a noisy machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fmnist_deploy.machine import environment
from fmnist_deploy.training.config import Recipe
from fmnist_deploy.training.data import FashionMNIST
from fmnist_deploy.training.loop import (
    Batch,
    CourseBatches,
    GraphedEpochs,
    TensorBatches,
    evaluate,
    fresh_state,
    train_one_epoch,
)


@dataclass(frozen=True)
class EpochTimes:
    """Seconds of one epoch, train pass alone and with the validation pass."""

    train_s: float  # the SGD pass over the training set
    epoch_s: float  # train pass + the course's per-epoch validation


def _time_epochs(
    batches: CourseBatches | TensorBatches, recipe: Recipe, device: torch.device, epochs: int
) -> EpochTimes:
    state = fresh_state(recipe, device)
    train_total = epoch_total = 0.0
    for _ in range(epochs):
        start = time.perf_counter_ns()
        train_one_epoch(state.model, state.optimizer, batches.train_batches())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        mid = time.perf_counter_ns()
        evaluate(state.model, batches.valid_batches(), recipe.n_classes)
        end = time.perf_counter_ns()
        train_total += (mid - start) / 1e9
        epoch_total += (end - start) / 1e9
    return EpochTimes(train_total / epochs, epoch_total / epochs)


def _time_graphed(batches: TensorBatches, recipe: Recipe, device: torch.device, epochs: int) -> EpochTimes:
    """The CUDA-graphed epochs; the first one (it captures the graph) runs before the clock starts."""
    state = fresh_state(recipe, device)
    graphed = GraphedEpochs(state.model, state.optimizer, batches, capture=True)
    graphed.epoch()
    torch.cuda.synchronize(device)
    train_total = epoch_total = 0.0
    for _ in range(epochs):
        start = time.perf_counter_ns()
        graphed.epoch()  # ends with .item(): synchronised
        mid = time.perf_counter_ns()
        evaluate(state.model, batches.valid_batches(), recipe.n_classes)
        end = time.perf_counter_ns()
        train_total += (mid - start) / 1e9
        epoch_total += (end - start) / 1e9
    return EpochTimes(train_total / epochs, epoch_total / epochs)


def bare_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Batch]) -> None:
    """forward / loss / backward / step and nothing else: the floor for one epoch."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    for images, labels in batches:
        optimizer.zero_grad()
        criterion(model(images), labels).backward()
        optimizer.step()


def _time_bare(fast: TensorBatches, recipe: Recipe, device: torch.device, epochs: int) -> float:
    state = fresh_state(recipe, device)
    prebuilt = list(fast.train_batches())  # built before the clock starts
    total = 0.0
    for _ in range(epochs):
        start = time.perf_counter_ns()
        bare_steps(state.model, state.optimizer, prebuilt)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total += (time.perf_counter_ns() - start) / 1e9
    return total / epochs


def measure(
    data: FashionMNIST,
    *,
    device: torch.device,
    reference_epochs: int = 1,
    fast_epochs: int = 3,
    limit: int | None = None,
) -> dict[str, Any]:
    """Seconds per epoch of each path and their ratios, as a JSON-ready dict."""
    recipe = Recipe(train_limit=limit)
    fast_batches = TensorBatches(data, recipe, device)
    _time_epochs(fast_batches, recipe, device, 1)  # warm-up: allocator, kernels, caches
    fast = _time_epochs(fast_batches, recipe, device, fast_epochs)
    bare = _time_bare(fast_batches, recipe, device, fast_epochs)
    reference = _time_epochs(CourseBatches(data, recipe, device), recipe, device, reference_epochs)
    graphed = _time_graphed(fast_batches, recipe, device, fast_epochs) if device.type == "cuda" else None
    extra_s = {"graphed_train": graphed.train_s, "graphed_epoch": graphed.epoch_s} if graphed else {}
    extra_r = {"fast_train_over_graphed": fast.train_s / graphed.train_s} if graphed else {}
    return {
        "benchmark": "train_speed",
        "device": str(device),
        "train_images": fast_batches.n_train,
        "batch_size": recipe.batch_size,
        "epochs_timed": {"reference": reference_epochs, "fast": fast_epochs, "bare": fast_epochs},
        "seconds_per_epoch": {
            "reference_train": reference.train_s,
            "reference_epoch": reference.epoch_s,
            "fast_train": fast.train_s,
            "fast_epoch": fast.epoch_s,
            "bare_train": bare,
            **extra_s,
        },
        "ratios": {
            "reference_over_fast_epoch": reference.epoch_s / fast.epoch_s,
            "reference_over_fast_train": reference.train_s / fast.train_s,
            "fast_train_over_bare": fast.train_s / bare,
            **extra_r,
        },
        "targets": {"reference_over_fast_epoch": ">= 10", "fast_train_over_bare": "<= 1.3"},
        "environment": environment(torch_threads=torch.get_num_threads()),
    }


def to_markdown(report: dict[str, Any]) -> str:
    """The training-speed comparison as Markdown."""
    s, r = report["seconds_per_epoch"], report["ratios"]
    return "\n".join(
        [
            f"Training speed on {report['device']} ({report['train_images']} images, batch {report['batch_size']}, "
            f"{report['environment']['torch_threads']} torch threads, {report['environment']['cpu']})",
            "",
            "| path | train pass (s/epoch) | epoch incl. validation (s) |",
            "|---|---:|---:|",
            f"| course DataLoader loop (`--loader reference`) | {s['reference_train']:.2f} | {s['reference_epoch']:.2f} |",
            f"| fast loader (`--loader fast`) | {s['fast_train']:.3f} | {s['fast_epoch']:.3f} |",
            f"| bare forward/backward/step on pre-built batches | {s['bare_train']:.3f} | — |",
            *(
                [
                    f"| fast loader, CUDA-graphed step (`fmnist-train --device cuda`) | {s['graphed_train']:.3f} | "
                    f"{s['graphed_epoch']:.3f} |"
                ]
                if "graphed_train" in s
                else []
            ),
            "",
            f"Fast vs course loop: **{r['reference_over_fast_epoch']:.1f}×** per epoch "
            f"({r['reference_over_fast_train']:.1f}× on the train pass); "
            f"fast train pass / bare steps: **{r['fast_train_over_bare']:.2f}×**.",
            "",
        ]
    )
