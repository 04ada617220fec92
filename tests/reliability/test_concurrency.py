"""Concurrency: one predictor per backend shared by 8 threads, 10 000 predictions, the same answers
as one thread (no torn state, no cross-talk between calls)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fmnist_deploy.models import DEFAULT_FILES, models_dir
from fmnist_deploy.runtime import BACKENDS, load

THREADS, PREDICTIONS = 8, 10_000


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_eight_threads_ten_thousand_predictions(backend: str, data) -> None:
    predictor = load(models_dir() / DEFAULT_FILES[backend], backend=backend)
    images = data.test_images[:PREDICTIONS].numpy()
    expected = predictor.predict(images).logits
    per_thread = PREDICTIONS // THREADS
    results: dict[int, list[tuple[int, np.ndarray]]] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        rng = np.random.default_rng(t)
        start, stop, out = t * per_thread, (t + 1) * per_thread, []
        try:
            while start < stop:
                size = int(min(rng.integers(1, 17), stop - start))  # batches of 1 to 16, interleaved
                out.append((start, predictor.predict(images[start : start + size]).logits))
                start += size
        except BaseException as exc:  # noqa: BLE001 - any failure in a thread is the failure being tested
            errors.append(exc)
        results[t] = out

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors[:3]
    answered = sum(len(logits) for out in results.values() for _, logits in out)
    assert answered == PREDICTIONS
    for out in results.values():
        for start, logits in out:
            assert np.abs(logits - expected[start : start + len(logits)]).max() <= 1e-5
