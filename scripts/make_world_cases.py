"""Render the bundled benchmark cases from held-out world identities (no third-party photos):
    python scripts/make_world_cases.py src/magref/assets/bench
writes world/<id>.png reference sheets and world_cases.jsonl (2 cases each with 1, 2, 3 subjects)."""

import json
import sys
from pathlib import Path

from magref.world.evaluate import eval_cases, sprite_on_white
from magref.world.render import identity

out = Path(sys.argv[1] if len(sys.argv) > 1 else "src/magref/assets/bench")
(out / "world").mkdir(parents=True, exist_ok=True)
lines = []
for subjects in (1, 2, 3):
    for k, case in enumerate(eval_cases(subjects, 2, seed=1)):
        refs = []
        for i in case.ids:
            path = out / "world" / f"id{i:03d}.png"
            sprite_on_white(i, 96).save(path)
            refs.append({"path": f"world/{path.name}", "kind": "face" if identity(i).kind == "character" else "object"})
        tags = [f"{subjects}-subject", "world", "held-out"] + sorted({m.split()[0] for m in case.motions})
        lines.append(json.dumps({"id": f"world_{subjects}s_{k}", "prompt": case.prompt, "refs": refs, "tags": tags}))
(out / "world_cases.jsonl").write_text("\n".join(lines) + "\n")
print(f"wrote {len(lines)} cases to {out / 'world_cases.jsonl'}")
