"""Render the bundled example references from held-out world identities (never seen in training;
no third-party photos in the repo): the first held-out character and the first held-out mug.
    python scripts/make_example_refs.py src/magref/assets/examples
"""

import json
import sys
from pathlib import Path

from magref.world.identities import identity_ids
from magref.world.render import identity, render_subject

out = Path(sys.argv[1] if len(sys.argv) > 1 else "src/magref/assets/examples")
out.mkdir(parents=True, exist_ok=True)
held = identity_ids("heldout")
character = next(i for i in held if identity(i).kind == "character")
mug = next(i for i in held if identity(i).kind == "object" and identity(i).params["shape"] == "mug")
about = {}
for name, i in (("character", character), ("mug", mug)):
    render_subject(identity(i), 192).save(out / f"{name}.png")  # RGBA: transparent around the subject
    about[f"{name}.png"] = {"world_identity": i, "description": identity(i).describe()}
(out / "examples.json").write_text(json.dumps(about, indent=2) + "\n")
print(json.dumps(about, indent=2))
