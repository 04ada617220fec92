"""The checks every array entering a model passes: dtype, shape, contiguity, said once for every backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from fmnist_deploy.contract import IMAGE_SHAPE
from fmnist_deploy.errors import InputError


def describe(array: Any) -> str:
    """`float64 [3,32,32]` for an array, the type name for anything else: for error messages."""
    if isinstance(array, np.ndarray):
        return f"{array.dtype} [{','.join(map(str, array.shape))}]"
    return type(array).__name__


def check_images(images: Any) -> np.ndarray:
    """uint8 (N, 28, 28), (N, 28, 28, 1) or one (28, 28) image -> C-contiguous uint8 (N, 28, 28).

    Anything else is an InputError naming what was given.
    """
    if (
        type(images) is np.ndarray
        and images.dtype == np.uint8
        and images.ndim == 3
        and images.shape[1:] == IMAGE_SHAPE
        and images.shape[0]
        and images.flags.c_contiguous
    ):
        return images  # the common case, decided in a few attribute reads
    given = images
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]  # (N, 28, 28, 1): channels-last grayscale, as image libraries give it
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.shape[-2:] != IMAGE_SHAPE
        or images.ndim not in (2, 3)
        or (images.ndim == 3 and images.shape[0] == 0)
    ):
        raise InputError(f"expected uint8 [N,28,28] (N >= 1), [N,28,28,1] or [28,28], got {describe(given)}")
    if images.ndim == 2:
        images = images[None]
    return np.ascontiguousarray(images)
