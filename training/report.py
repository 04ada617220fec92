"""What a finished run leaves behind: history files, plots and the final weights."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fmnist_deploy.atomic import atomic_path, write_text_atomic
from fmnist_deploy.contract import WEIGHTS_NAME
from fmnist_deploy.training.checkpoint import Weights, save_weights, versions
from fmnist_deploy.training.config import CLASS_NAMES, Recipe
from fmnist_deploy.training.data import FashionMNIST
from fmnist_deploy.training.loop import EpochStats, evaluate, in_order
from fmnist_deploy.training.model import FashionMLP, normalise

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds")


def write_history(out_dir: Path, recipe: Recipe, history: list[EpochStats]) -> None:
    """history.json (with the recipe) and history.csv, one row per epoch."""
    rows = [asdict(h) for h in history]
    write_text_atomic(
        out_dir / "history.json", json.dumps({"recipe": recipe.to_dict(), "epochs": rows}, indent=2) + "\n"
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "history.csv", buffer.getvalue())


def _save_figure(fig: Figure, path: Path) -> None:
    # A bare Figure (no pyplot): no global backend switch, no window, nothing to close.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})


def plot_curves(path: Path, history: list[EpochStats]) -> None:
    """Loss and accuracy per epoch, training set vs test set, as in the course figures (the course's
    "validation" loader runs over the test set, so the plot calls it what it is, as the confusion matrix does)."""
    epochs = [h.epoch for h in history]
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h.train_loss for h in history], label="Training set loss")
    ax_loss.plot(epochs, [h.valid_loss for h in history], label="Test set loss")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss (training set, test set)")
    ax_acc.plot(epochs, [h.train_acc for h in history], label="Training set accuracy")
    ax_acc.plot(epochs, [h.valid_acc for h in history], label="Test set accuracy")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy (training set, test set)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers, even on short runs
    fig.tight_layout()
    _save_figure(fig, path)


@torch.no_grad()
def plot_samples(path: Path, model: FashionMLP, data: FashionMNIST, recipe: Recipe) -> None:
    """A 3x3 grid of the first test images titled with true and predicted class."""
    images = data.test_images[:9]
    model.eval()
    device = next(model.parameters()).device
    predicted = model(normalise(images, recipe.norm_mean, recipe.norm_std).to(device)).argmax(1).cpu()
    fig = Figure(figsize=(7, 7.6))
    axes = fig.subplots(3, 3)
    for ax, image, label, pred in zip(axes.flat, images, data.test_labels[:9], predicted, strict=True):
        ax.imshow(image.numpy(), cmap="gray")
        ok = int(label) == int(pred)
        ax.set_title(
            f"true: {CLASS_NAMES[label]}\npred: {CLASS_NAMES[pred]}", fontsize=9, color="black" if ok else "red"
        )
        ax.axis("off")
    fig.tight_layout()
    _save_figure(fig, path)


def plot_confusion(path: Path, confusion: list[list[int]], class_names: tuple[str, ...]) -> None:
    """The test-set confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    counts = torch.tensor(confusion)
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.subplots()
    image = ax.imshow(counts.numpy(), cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (test set)")
    threshold = counts.max().item() / 2
    for i in ticks:
        for j in ticks:
            value = int(counts[i, j])
            ax.text(
                j, i, str(value), ha="center", va="center", fontsize=7, color="white" if value > threshold else "black"
            )
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save_figure(fig, path)


def finalise(
    out_dir: Path,
    recipe: Recipe,
    model: FashionMLP,
    history: list[EpochStats],
    data: FashionMNIST,
    *,
    device: torch.device,
    loader: str,
) -> Weights:
    """Evaluate on the test set, then write the weights file, history and plots."""
    x_test = normalise(data.test_images, recipe.norm_mean, recipe.norm_std).to(device)
    batches = in_order(x_test, data.test_labels.to(device), recipe.batch_size)
    test_loss, test_acc, confusion = evaluate(model, batches, recipe.n_classes)
    per_class = (confusion.diag().double() / confusion.sum(1).double()).tolist()
    weights = Weights(
        recipe=recipe,
        model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        class_names=CLASS_NAMES,
        test_loss=test_loss,
        test_accuracy=test_acc,
        per_class_accuracy=per_class,
        confusion_matrix=confusion.tolist(),
        data_sha256=dict(data.sha256),
        versions=versions(),
        device=str(device),
        loader=loader,
    )
    save_weights(out_dir / WEIGHTS_NAME, weights)
    metrics = {
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "per_class_accuracy": dict(zip(CLASS_NAMES, per_class, strict=True)),
        "confusion_matrix": {
            "rows": "true class",
            "columns": "predicted class",
            "classes": list(CLASS_NAMES),
            "counts": confusion.tolist(),
        },
        "epochs": len(history),
        "recipe": recipe.to_dict(),
        "device": str(device),
        "loader": loader,
        "versions": weights.versions,
    }
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_history(out_dir, recipe, history)
    plot_curves(out_dir / "curves.png", history)
    plot_confusion(out_dir / "confusion.png", weights.confusion_matrix, CLASS_NAMES)
    plot_samples(out_dir / "samples.png", model, data, recipe)
    return weights
