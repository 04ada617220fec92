"""The training loop: the course's DataLoader path and an exact fast path.

Both paths draw from torch's global generator in the same order as the course
loop (per epoch: the train iterator's base seed, the RandomSampler's seed, the
dropout masks, then the validation iterator's base seed), so for one seed they
give bit-identical weights on the same device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from fmnist_deploy.errors import DeviceError, FmnistError
from fmnist_deploy.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fmnist_deploy.training.config import Recipe
from fmnist_deploy.training.data import FashionMNIST
from fmnist_deploy.training.model import FashionMLP, normalise

Batch = tuple[torch.Tensor, torch.Tensor]
CHECKPOINT_NAME = "checkpoint.pt"


class TrainingError(FmnistError):
    """A run cannot start or continue as asked; the message says why."""


def _draw_loader_seed() -> int:
    """One int64 from the global generator, drawn exactly as DataLoader and RandomSampler do."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class Batches(Protocol):
    """Where a training loop gets its batches; both implementations draw the same RNG."""

    n_train: int
    batch_size: int

    def train_batches(self) -> Iterator[Batch]:
        """One epoch's shuffled training batches."""

    def valid_batches(self) -> Iterator[Batch]:
        """The validation batches, in order."""


class TensorBatches:
    """The fast path: the whole normalised set as one tensor on the training device."""

    def __init__(self, data: FashionMNIST, recipe: Recipe, device: torch.device) -> None:
        n = recipe.train_limit or len(data.train_labels)
        norm = (recipe.norm_mean, recipe.norm_std)
        self.x = normalise(data.train_images[:n], *norm).reshape(n, -1).to(device)  # (n, 784)
        self.y = data.train_labels[:n].to(device)
        self.x_valid = normalise(data.test_images, *norm).reshape(len(data.test_labels), -1).to(device)
        self.y_valid = data.test_labels.to(device)
        self.n_train = n
        self.batch_size = recipe.batch_size
        self.device = device

    def epoch_order(self) -> torch.Tensor:
        """One epoch's permutation (n_train,) int64 on the device, drawn from the global RNG exactly as
        DataLoader + RandomSampler draw it."""
        _draw_loader_seed()  # the DataLoader iterator's base seed
        sampler = torch.Generator()
        sampler.manual_seed(_draw_loader_seed())  # RandomSampler's own generator
        # One host-to-device copy per epoch; every batch is then gathered on the device.
        return torch.randperm(self.n_train, generator=sampler).to(self.device)

    def train_batches(self) -> Iterator[Batch]:
        """One epoch's batches, drawn from the global RNG exactly as DataLoader + RandomSampler draw them."""
        order = self.epoch_order()
        for start in range(0, self.n_train, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)

    def valid_batches(self) -> Iterator[Batch]:
        """The test set in order, after the one RNG draw the course's validation loader makes."""
        _draw_loader_seed()  # the validation DataLoader draws one too, though it does not shuffle
        yield from in_order(self.x_valid, self.y_valid, self.batch_size)


def in_order(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[Batch]:
    """Consecutive batches, no shuffling and no RNG draw."""
    for start in range(0, len(y), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


class CourseBatches:
    """The course's own path: DataLoader(shuffle=True) over ToTensor + Normalize."""

    def __init__(self, data: FashionMNIST, recipe: Recipe, device: torch.device) -> None:
        from torch.utils.data import DataLoader, Subset
        from torchvision import datasets, transforms

        transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((recipe.norm_mean,), (recipe.norm_std,))]
        )
        train = datasets.FashionMNIST(str(data.root), train=True, download=False, transform=transform)
        test = datasets.FashionMNIST(str(data.root), train=False, download=False, transform=transform)
        if recipe.train_limit:
            train = Subset(train, range(recipe.train_limit))
        self.trainloader = DataLoader(train, batch_size=recipe.batch_size, shuffle=True)
        self.testloader = DataLoader(test, batch_size=recipe.batch_size, shuffle=False)
        self.n_train = len(train)
        self.batch_size = recipe.batch_size
        self.device = device

    def train_batches(self) -> Iterator[Batch]:
        """The course's DataLoader batches, moved to the device."""
        for images, labels in self.trainloader:
            yield images.to(self.device), labels.to(self.device)

    def valid_batches(self) -> Iterator[Batch]:
        """The course's validation DataLoader batches, moved to the device."""
        for images, labels in self.testloader:
            yield images.to(self.device), labels.to(self.device)


LOADERS: dict[str, type[TensorBatches] | type[CourseBatches]] = {
    "fast": TensorBatches,
    "reference": CourseBatches,
}


@dataclass(frozen=True)
class EpochStats:
    """Loss and accuracy of one epoch, training and validation, and its wall time."""

    epoch: int
    train_loss: float
    train_acc: float
    valid_loss: float
    valid_acc: float
    seconds: float


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Batch]
) -> tuple[float, float]:
    """One pass of SGD; returns (mean loss, accuracy). Sums stay on the device until the end."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for images, labels in batches:
        optimizer.zero_grad()
        logits = model(images)
        loss = criterion(logits, labels)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
    return loss_sum.item() / seen, correct.item() / seen


class GraphedEpochs:
    """The fast loader's epochs with the training step captured once as a CUDA graph and replayed.

    The data set stays on the GPU (TensorBatches); each step copies its 100 indices into a
    fixed buffer and replays one graph that gathers the batch, runs forward, backward and
    the SGD update, and adds to the epoch's loss and accuracy sums: two launches a step
    instead of ~40. Batches are drawn exactly as `train_batches` draws them, the first step
    of the run is an ordinary one (it also warms cuBLAS and autograd up on a side stream,
    and creates the momentum buffers a capture must find), and a short last batch (a
    `train_limit` that is not a multiple of the batch size) runs as an ordinary step too.

    Same weights as the fast loader? The graph replays the very kernels an ordinary step
    launches, in the same order, with the same inputs; dropout draws from the CUDA generator,
    whose Philox offset a replay advances by what an ordinary step takes, so each replay
    draws the masks the ordinary step would. It is meant to be bit-identical on the same
    GPU, and `tests/test_training.py::test_cuda_graphed_steps_are_bit_identical_to_the_fast_loader`
    checks that on a GPU. With `capture=False` the same bookkeeping runs without a graph
    (what the CPU tests exercise).
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, batches: TensorBatches, *, capture: bool
    ) -> None:
        device = batches.x.device
        self.model, self.optimizer, self.batches, self.capture = model, optimizer, batches, capture
        self.criterion = nn.CrossEntropyLoss()
        self.index = torch.zeros(batches.batch_size, dtype=torch.int64, device=device)  # (B,) the step's rows
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.steps = 0

    def _step(self, index: torch.Tensor) -> None:
        """One SGD step on rows `index` of the training set, its loss and hits added to the epoch's sums."""
        x = self.batches.x.index_select(0, index)  # (B, 784)
        y = self.batches.y.index_select(0, index)  # (B,)
        logits = self.model(x)
        loss = self.criterion(logits, y)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach() * len(index)
        self.correct += (logits.detach().argmax(1) == y).sum()

    def _ordinary_step(self, index: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        self._step(index)

    def _first_step_and_capture(self, index: torch.Tensor) -> None:
        # The first step runs on a side stream, as warm-up before a capture must (lazy cuBLAS and autograd
        # set-up), and it is a real step of the run; then the step is captured. Capturing runs nothing, and
        # the gradients it allocates live in the graph's own memory, where every replay writes them.
        side = torch.cuda.Stream(index.device)
        side.wait_stream(torch.cuda.current_stream(index.device))
        with torch.cuda.stream(side):
            self._ordinary_step(index)
        torch.cuda.current_stream(index.device).wait_stream(side)
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step(self.index)

    def epoch(self) -> tuple[float, float]:
        """One pass of SGD over the shuffled training set; returns (mean loss, accuracy) as train_one_epoch."""
        self.model.train()
        order = self.batches.epoch_order()  # (n_train,) int64 on the device
        self.loss_sum.zero_()
        self.correct.zero_()
        size = self.batches.batch_size
        for start in range(0, self.batches.n_train, size):
            index = order[start : start + size]
            if len(index) != size:
                self._ordinary_step(index)
            elif self.capture and self.graph is None:
                self._first_step_and_capture(index)
            else:
                self.index.copy_(index)
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._ordinary_step(self.index)
            self.steps += 1
        return self.loss_sum.item() / self.batches.n_train, self.correct.item() / self.batches.n_train


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], n_classes: int = 10) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, confusion matrix [true, predicted]) in eval mode.

    Sums stay on the batches' device; one copy to the host at the end.
    """
    criterion = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    loss_sum: torch.Tensor | None = None
    confusion: torch.Tensor | None = None
    for images, labels in batches:
        logits = model(images)
        if loss_sum is None or confusion is None:
            loss_sum = torch.zeros((), dtype=torch.float64, device=labels.device)
            confusion = torch.zeros(n_classes * n_classes, dtype=torch.int64, device=labels.device)
        loss_sum += criterion(logits, labels)
        confusion += torch.bincount(labels * n_classes + logits.argmax(1), minlength=n_classes * n_classes)
    if loss_sum is None or confusion is None:
        raise ValueError("evaluate() got no batches")
    matrix = confusion.cpu().reshape(n_classes, n_classes)
    total = int(matrix.sum())
    return loss_sum.item() / total, int(matrix.trace()) / total, matrix


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available; 'cuda' without a GPU is an error, never a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: torch.cuda.is_available() is False on this machine; use --device cpu")
    return torch.device(name)


@dataclass
class RunState:
    """A run in progress: the model, its optimizer and the history so far."""

    model: FashionMLP
    optimizer: torch.optim.Optimizer
    history: list[EpochStats]


def fresh_state(recipe: Recipe, device: torch.device) -> RunState:
    """A new run: seed the global RNG, build the model and the course's SGD optimizer."""
    torch.manual_seed(recipe.seed)
    model = FashionMLP.from_recipe(recipe).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    return RunState(model, optimizer, [])


def _resumed_state(ckpt: Checkpoint, device: torch.device) -> RunState:
    state = fresh_state(ckpt.recipe, device)
    state.model.load_state_dict(ckpt.model)
    state.optimizer.load_state_dict(ckpt.optimizer)
    state.history = [EpochStats(**h) for h in ckpt.history]
    torch.set_rng_state(ckpt.rng_cpu)
    if device.type == "cuda" and ckpt.rng_cuda is not None:
        torch.cuda.set_rng_state(ckpt.rng_cuda, device)
    return state


def run(
    recipe: Recipe,
    data: FashionMNIST,
    out_dir: Path,
    *,
    device: torch.device,
    loader: str = "fast",
    resume: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
    wrap_batches: Callable[[Iterator[Batch], int], Iterable[Batch]] | None = None,
    cuda_graph: bool | None = None,
) -> RunState:
    """Train `recipe` to `recipe.epochs`, checkpointing atomically after every epoch.

    With `resume`, continue the run checkpointed in `out_dir`: its recipe (all but
    `epochs`) and RNG states are restored, so the result equals an uninterrupted run.
    `cuda_graph` (default: on for the fast loader on CUDA) replays the training step as
    a CUDA graph (GraphedEpochs); it needs the fast loader on CUDA and no `wrap_batches`.
    """
    if cuda_graph is None:
        cuda_graph = device.type == "cuda" and loader == "fast" and wrap_batches is None
    if cuda_graph and (device.type != "cuda" or loader != "fast" or wrap_batches is not None):
        raise TrainingError(
            f"the CUDA-graphed step needs --device cuda and the fast loader (device {device.type}, loader {loader})"
        )
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    if resume:
        if not ckpt_path.is_file():
            raise TrainingError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = load_checkpoint(ckpt_path)
        if replace(ckpt.recipe, epochs=recipe.epochs) != recipe:
            raise TrainingError(
                f"--resume: {ckpt_path} was trained with {ckpt.recipe}, which differs from {recipe} "
                "in more than the number of epochs"
            )
        if recipe.epochs < ckpt.epoch:
            raise TrainingError(
                f"--resume: {ckpt_path} already holds {ckpt.epoch} epochs; ask for --epochs >= {ckpt.epoch}"
            )
        state = _resumed_state(ckpt, device)
        state.model.train()
    else:
        state = fresh_state(recipe, device)
    batches = LOADERS[loader](data, recipe, device)
    n_batches = -(-batches.n_train // batches.batch_size)
    graphed = (
        GraphedEpochs(state.model, state.optimizer, batches, capture=True)
        if cuda_graph and isinstance(batches, TensorBatches)
        else None
    )

    for epoch in range(len(state.history), recipe.epochs):
        start = time.perf_counter()
        if graphed is not None:
            train_loss, train_acc = graphed.epoch()
        else:
            train_iter: Iterable[Batch] = batches.train_batches()
            if wrap_batches is not None:
                train_iter = wrap_batches(train_iter, n_batches)
            train_loss, train_acc = train_one_epoch(state.model, state.optimizer, train_iter)
        valid_loss, valid_acc, _ = evaluate(state.model, batches.valid_batches(), recipe.n_classes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats = EpochStats(epoch + 1, train_loss, train_acc, valid_loss, valid_acc, time.perf_counter() - start)
        state.history.append(stats)
        save_checkpoint(
            ckpt_path,
            Checkpoint.capture(recipe, state.model, state.optimizer, state.history, data.sha256, device, loader),
        )
        if on_epoch is not None:
            on_epoch(stats)
    return state
