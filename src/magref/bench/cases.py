"""Benchmark cases: JSONL, one case per line:
    {"id": "c1", "prompt": "...", "refs": [{"path": "a.png", "kind": "face|object|animal|background"}], "tags": [...]}
Importers read the official `name@@prompt@@img...` prompt files (kind unknown: "object") and
OpenS2V-Eval-style JSON lists. Relative paths resolve against the case file's folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MagrefInputError
from ..io import parse_official_line

KINDS = ("face", "object", "animal", "background")


@dataclass
class Reference:
    path: str
    kind: str = "object"


@dataclass
class Case:
    id: str
    prompt: str
    refs: list[Reference]
    tags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "refs": [vars(r) for r in self.refs], "tags": self.tags}


def _resolve(path: str, base: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() or p.exists() else base / p)


def _case(obj: dict, where: str, base: Path) -> Case:
    try:
        refs = [Reference(_resolve(r["path"], base), r.get("kind", "object")) if isinstance(r, dict) else Reference(_resolve(r, base)) for r in obj["refs"]]
        case = Case(str(obj["id"]), str(obj["prompt"]), refs, list(obj.get("tags", [])))
    except (KeyError, TypeError):
        raise MagrefInputError(f"{where} needs id, prompt and refs.",
                               'write {"id": "c1", "prompt": "...", "refs": [{"path": "a.png", "kind": "face"}]}.') from None
    bad = [r.kind for r in case.refs if r.kind not in KINDS]
    if bad:
        raise MagrefInputError(f"{where}: unknown reference kind {bad[0]!r}.", f"use one of {', '.join(KINDS)}.")
    return case


def load_cases(path: str | Path) -> list[Case]:
    """JSONL cases, or the official `name@@prompt@@img...` format (detected per line)."""
    path = Path(path)
    if not path.is_file():
        raise MagrefInputError(f"Case file {path} does not exist.", "check the path.")
    text = path.read_text(encoding="utf-8").strip()
    if text.startswith("["):
        return import_opens2v(path)
    cases = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        if line.startswith("{"):
            cases.append(_case(json.loads(line), where, path.parent))
        else:
            name, prompt, images = parse_official_line(line, where)
            cases.append(Case(name, prompt, [Reference(_resolve(p, path.parent)) for p in images]))
    if not cases:
        raise MagrefInputError(f"Case file {path} has no cases.", "add one case per line (JSON or name@@prompt@@image).")
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise MagrefInputError(f"{path} repeats a case id.", "give every case its own id.")
    return cases


def import_opens2v(path: str | Path) -> list[Case]:
    """OpenS2V-Eval-style lists: [{"id"|"name", "prompt"|"text", "images"|"img_paths": [...],
    "types"|"kinds": [...], "domain": ...}] (keys vary between releases; these are the ones read)."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = [{"id": k, **v} for k, v in data.items()]
    cases = []
    for i, obj in enumerate(data):
        images = obj.get("images") or obj.get("img_paths") or obj.get("refs") or []
        kinds = obj.get("types") or obj.get("kinds") or []
        refs = []
        for j, im in enumerate(images):
            kind = kinds[j] if j < len(kinds) else "object"
            kind = {"human": "face", "person": "face", "scene": "background", "pet": "animal"}.get(kind, kind)
            refs.append(Reference(_resolve(im, path.parent), kind if kind in KINDS else "object"))
        tags = [t for t in [obj.get("domain")] if t]
        cases.append(Case(str(obj.get("id", obj.get("name", i))), str(obj.get("prompt", obj.get("text", ""))), refs, tags))
    return cases


def write_cases(path: str | Path, cases: list[Case]) -> None:
    Path(path).write_text("".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in cases), encoding="utf-8")
