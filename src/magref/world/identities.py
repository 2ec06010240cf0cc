"""Who is in the world: the identity ids of each split, and the distractors an identity test
compares a subject against. Draws nothing (render.py draws an identity); the builders, the
trainer and both identity tests (evaluate.py, identify.py) read the splits from here."""

from __future__ import annotations

import numpy as np

from .render import UNIQUE_IDS, identity, is_held_out

NUM_IDENTITIES = 400
# Training may draw more identities than the 320 of the first 400 ids: every id below UNIQUE_IDS
# looks unlike every other, so ids 400-1023 that are not held out (id % 5 != 0) add 499 training
# looks, none of them a held-out one's.
MAX_TRAIN_IDENTITIES = sum(not is_held_out(i) for i in range(UNIQUE_IDS))
TRAIN_IDENTITIES = sum(not is_held_out(i) for i in range(NUM_IDENTITIES))  # the default split's 320


def identity_ids(split: str, count: int | None = None) -> list[int]:
    """Ids of the 'train' or 'heldout' split (held out: id % 5 == 0, among the first 400). `count`
    (train only): the first `count` training ids, up to MAX_TRAIN_IDENTITIES; the first
    TRAIN_IDENTITIES are the default split's."""
    held = split == "heldout"
    if count is None:
        return [i for i in range(NUM_IDENTITIES) if is_held_out(i) == held]
    if held:
        raise ValueError("the held-out split is fixed: only training identities can be counted")
    if not 1 <= count <= MAX_TRAIN_IDENTITIES:
        from ..errors import MagrefInputError

        raise MagrefInputError(f"--train-identities {count} is outside 1..{MAX_TRAIN_IDENTITIES} (the unique looks that are not held out).",
                               f"pass a number in 1..{MAX_TRAIN_IDENTITIES} (the default split: {TRAIN_IDENTITIES}).")
    return [i for i in range(UNIQUE_IDS) if not is_held_out(i)][:count]


def distractors_for(true_id: int, k: int, rng: np.random.Generator) -> list[int]:
    """k other held-out identities of the same kind (character or object), drawn by `rng`."""
    kind = identity(true_id).kind
    pool = [i for i in identity_ids("heldout") if i != true_id and identity(i).kind == kind]
    return [int(i) for i in rng.choice(pool, size=min(k, len(pool)), replace=False)]
