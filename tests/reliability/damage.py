"""Seeded damaged copies of a file's bytes, for the readers that must refuse them in one line."""

from __future__ import annotations

import random

ABSURD_WORDS = (b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80")  # the largest int32, the smallest


def damaged_copies(
    data: bytes, count: int, seed: int, *, keep: int = 0, lies_from: int = 0, align: int = 1
) -> list[bytes]:
    """`count` copies of `data`, in turn: up to 8 bytes flipped, cut after at least `keep` bytes, or one 32-bit
    word (at an offset from `lies_from` on, rounded down to `align`) made absurd or random. Seeded, so a
    failing case repeats."""
    rng = random.Random(seed)
    copies = []
    for case in range(count):
        variant = bytearray(data)
        if case % 3 == 0:
            for _ in range(rng.randint(1, 8)):
                variant[rng.randrange(len(variant))] = rng.randrange(256)
        elif case % 3 == 1:
            variant = variant[: rng.randrange(keep, len(variant))]
        else:
            at = rng.randrange(lies_from, len(variant) - 4) // align * align
            variant[at : at + 4] = rng.choice([*ABSURD_WORDS, rng.randbytes(4)])
        copies.append(bytes(variant))
    return copies
