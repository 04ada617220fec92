"""fmnist-train: reproduce the course's training run."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import click
from click.core import ParameterSource

from fmnist_deploy import launch, options
from fmnist_deploy.atomic import check_writable, remove_stale_temporaries
from fmnist_deploy.contract import WEIGHTS_NAME
from fmnist_deploy.training.checkpoint import load_checkpoint
from fmnist_deploy.training.config import Recipe
from fmnist_deploy.training.data import load, raw_dir
from fmnist_deploy.training.loop import CHECKPOINT_NAME, Batch, EpochStats, resolve_device, run
from fmnist_deploy.training.report import finalise

DEFAULTS = Recipe()
RECIPE_FLAGS = {"lr": "lr", "batch_size": "batch_size", "seed": "seed", "limit": "train_limit"}


def _epoch_line(stats: EpochStats, total: int) -> str:
    return (
        f"Epoch {stats.epoch:3d}/{total}  "
        f"train loss {stats.train_loss:.4f} acc {stats.train_acc:.4f}  "
        f"test loss {stats.valid_loss:.4f} acc {stats.valid_acc:.4f}  "
        f"{stats.seconds:.2f}s"
    )


def _progress(batches: Iterator[Batch], length: int) -> Iterable[Batch]:
    with click.progressbar(batches, length=length, file=sys.stderr, update_min_steps=25, label="  batches") as bar:
        yield from bar


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user set this option (on the command line or through its environment variable)."""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _recipe_for_resume(ctx: click.Context, out: Path, epochs: int, given: dict[str, object]) -> Recipe:
    """The checkpoint's recipe, to --epochs when given; a recipe flag given that contradicts it is an error."""
    saved = load_checkpoint(out / CHECKPOINT_NAME).recipe
    for flag, field in RECIPE_FLAGS.items():
        if _given(ctx, flag) and getattr(saved, field) != given[flag]:
            option = "--" + flag.replace("_", "-")
            raise click.BadParameter(
                f"the run in {out} used {field}={getattr(saved, field)!r}, cannot resume with {given[flag]!r}",
                param_hint=option,
            )
    return replace(saved, epochs=epochs) if _given(ctx, "epochs") else saved


def _resume_command(ctx: click.Context, out: Path) -> str:
    """The command that continues this run: --resume takes the recipe from the checkpoint, and the options
    that are not part of the recipe (where the data is, the device, the loader) are repeated as given."""
    words = ["fmnist-train", "--output", shlex.quote(str(out)), "--resume"]
    for name in ("data_dir", "device", "loader"):
        if _given(ctx, name):
            words += ["--" + name.replace("_", "-"), shlex.quote(str(ctx.params[name]))]
    return " ".join(words)


def _interrupted(ctx: click.Context, out: Path, done: list[int], resumed: bool) -> str:
    """One line: where the run stopped and the command that continues it."""
    if done:
        return f"interrupted after epoch {done[-1]}; resume with: {_resume_command(ctx, out)}"
    if resumed:
        return (
            f"interrupted before an epoch ended; {out / CHECKPOINT_NAME} is unchanged: resume again with: "
            f"{_resume_command(ctx, out)}"
        )
    return "interrupted before the first epoch ended; nothing to resume"


@options.command("fmnist-train")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS.epochs, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.lr, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size, show_default=True)
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@options.device(auto=True, default="auto")
@options.data_dir("Folder with the four IDX files (plain or .gz, or under FashionMNIST/raw).")
@options.output_folder(
    "Folder for the weights, checkpoint, history and plots.", default=Path("artifacts"), aliases=("--out",)
)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=60000),
    default=None,
    help="Train on the first N training images only (smoke runs).",
)
@click.option(
    "--loader",
    type=click.Choice(["fast", "reference"]),
    default="fast",
    show_default=True,
    help="fast: one tensor on the device; reference: the course's DataLoader. Same weights.",
)
@click.option(
    "--cuda-graph/--no-cuda-graph",
    default=None,
    help="Replay the training step as a CUDA graph [default: on with --device cuda and the fast loader].",
)
@options.resume("Continue the run checkpointed in --output, with its own recipe (--epochs may extend it).")
@options.overwrite("Start a new run even if --output holds one.")
@click.pass_context
def main(
    ctx: click.Context,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str,
    data_dir: Path | None,
    output: Path,
    limit: int | None,
    loader: str,
    cuda_graph: bool | None,
    resume: bool,
    overwrite: bool,
) -> None:
    """Train the course's Fashion-MNIST network and write weights, history and plots to --output.

    A checkpoint is written after every epoch; Ctrl-C (or a kill) loses at most the epoch
    in progress, and --resume continues to exactly the weights of an uninterrupted run.
    """
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other; give one")
    out = output
    done: list[int] = []  # epochs completed in this process, for the interruption message
    torch_device = resolve_device(device)  # cuda without a GPU: a DeviceError, exit 2 before any work
    try:
        if resume:
            recipe = _recipe_for_resume(
                ctx, out, epochs, {"lr": lr, "batch_size": batch_size, "seed": seed, "limit": limit}
            )
            start = load_checkpoint(out / CHECKPOINT_NAME).epoch
            if recipe.epochs < start:
                raise click.BadParameter(
                    f"{recipe.epochs}: {out / CHECKPOINT_NAME} already holds {start} epochs; ask for {start} or more",
                    param_hint="--epochs",
                )
            options.say(f"Resuming the run in {out} after epoch {start}, up to epoch {recipe.epochs}")
        else:
            if (out / CHECKPOINT_NAME).exists() and not overwrite:
                raise click.UsageError(
                    f"{out / CHECKPOINT_NAME} holds an earlier run: pass --resume to continue it "
                    "or --overwrite to start over"
                )
            recipe = Recipe(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, train_limit=limit)
        data = load(data_dir)  # before the output folder exists: a missing data set leaves nothing behind
        check_writable(out)  # a read-only or full output folder fails now, not after the first epoch
        for stale in remove_stale_temporaries(out):
            options.say(f"removed {stale}, left by an interrupted write")
        options.say(f"Fashion-MNIST from {raw_dir(data.root)}")
        if cuda_graph is None:
            cuda_graph = torch_device.type == "cuda" and loader == "fast"
        graphed = " and a CUDA-graphed step" if cuda_graph else ""
        options.say(f"Training on {torch_device} with the {loader} loader{graphed}: {recipe}")

        def on_epoch(stats: EpochStats) -> None:
            done.append(stats.epoch)
            if options.verbosity() >= 0:
                click.echo(_epoch_line(stats, recipe.epochs))

        state = run(
            recipe,
            data,
            out,
            device=torch_device,
            loader=loader,
            resume=resume,
            on_epoch=on_epoch,
            # the graphed step replays without a Python loop over batches to hang a progress bar on
            wrap_batches=_progress if sys.stderr.isatty() and not cuda_graph and options.verbosity() >= 0 else None,
            cuda_graph=cuda_graph,
        )
        weights = finalise(out, recipe, state.model, state.history, data, device=torch_device, loader=loader)
    except OSError as exc:  # the output folder: read-only, full, or not a folder
        raise click.ClickException(f"cannot write to {exc.filename or out}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        click.echo(_interrupted(ctx, out, done, resume), err=True)
        sys.exit(130)
    click.echo(f"Test accuracy {weights.test_accuracy:.4f}, loss {weights.test_loss:.4f}; wrote {out / WEIGHTS_NAME}")


if __name__ == "__main__":
    launch.run(main)
