"""Who is in the world: the identity ids of each split, and the distractors an identity test
compares a subject against. Draws nothing (render.py draws an identity); the builders, the
trainer and both identity tests (evaluate.py, identify.py) read the splits from here."""

from __future__ import annotations

import numpy as np

from .render import identity, is_held_out

NUM_IDENTITIES = 400


def identity_ids(split: str) -> list[int]:
    """Ids of the 'train' or 'heldout' split (held out: id % 5 == 0)."""
    held = split == "heldout"
    return [i for i in range(NUM_IDENTITIES) if is_held_out(i) == held]


def distractors_for(true_id: int, k: int, rng: np.random.Generator) -> list[int]:
    """k other held-out identities of the same kind (character or object), drawn by `rng`."""
    kind = identity(true_id).kind
    pool = [i for i in identity_ids("heldout") if i != true_id and identity(i).kind == kind]
    return [int(i) for i in rng.choice(pool, size=min(k, len(pool)), replace=False)]
