"""A procedural video world with known identities: subjects drawn from parameters, moving over
scenes, each clip with a templated caption and ground-truth masks. Used to train and evaluate
the miniature MAGREF (docs/miniature-world.md)."""

from .render import Identity, identity, render_subject, scene_image  # noqa: F401
from .clips import Clip, make_clip  # noqa: F401
