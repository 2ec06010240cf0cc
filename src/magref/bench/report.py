"""`magref bench score`: score one or more folders of videos on the same cases, side by side.

Writes report.json (every number and every "not computed" reason), report.md (tables),
metrics.png (aggregates per folder) and a self-contained report.html with thumbnails.
Aggregates are broken down by number of subjects and by reference kind.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import load_reference, read_video
from .cases import Case
from .metrics import COPY_PASTE_FLAG, REGISTRY, MetricInput, opens2v_total, score_video

# Published OpenS2V-Eval v1.1 open-domain Totals, for reading our numbers beside the leaderboard.
LEADERBOARD_OPEN_TOTAL = {"MAGREF-480P": 52.51, "VACE-14B": 57.55, "Phantom-14B": 56.77}


def score_folder(cases: list[Case], videos_dir: Path, weights: dict[str, str]) -> dict:
    per_case = {}
    for case in cases:
        video = videos_dir / f"{case.id}.mp4"
        if not video.is_file():
            per_case[case.id] = {"missing": f"no {video.name} in {videos_dir}"}
            continue
        frames = _read_or_none(video)
        if frames is None or len(frames) == 0:
            per_case[case.id] = {"missing": f"{video} is not a readable video"}
            print(f"magref bench score: warning: {video} is not a readable video; scored as missing", file=sys.stderr)
            continue
        refs = [(load_reference(r.path), r.kind) for r in case.refs]
        scores = score_video(MetricInput(frames, refs, case.prompt), weights)
        per_case[case.id] = {
            name: ({"value": s.value, "per_reference": s.per_reference} if s.value is not None else {"not_computed": s.reason})
            for name, s in scores.items()
        }
        cp = scores.get("copy_paste")
        per_case[case.id]["copy_paste_flag"] = bool(cp and cp.value is not None and cp.value > COPY_PASTE_FLAG)
    return per_case


def aggregate(cases: list[Case], per_case: dict) -> dict:
    groups: dict[str, list[str]] = defaultdict(list)
    for c in cases:
        groups["all"].append(c.id)
        groups[f"{len(c.refs)} subject{'s' if len(c.refs) > 1 else ''}"].append(c.id)
        for kind in sorted({r.kind for r in c.refs}):
            groups[f"kind: {kind}"].append(c.id)
    out = {}
    for group, ids in groups.items():
        row = {}
        for name in REGISTRY:
            values = [per_case[i][name]["value"] for i in ids if name in per_case.get(i, {}) and "value" in per_case[i][name]]
            reasons = {per_case[i][name]["not_computed"] for i in ids if name in per_case.get(i, {}) and "not_computed" in per_case[i][name]}
            if values:
                row[name] = {"mean": float(np.mean(values)), "sem": float(np.std(values) / np.sqrt(len(values))), "n": len(values)}
            elif reasons:
                row[name] = {"not_computed": sorted(reasons)[0]}
        row["copy_paste_flags"] = sum(bool(per_case.get(i, {}).get("copy_paste_flag")) for i in ids)
        row["cases"] = len(ids)
        out[group] = row
    return out


def _read_or_none(video: Path):
    try:
        return read_video(video)
    except Exception:  # imageio-ffmpeg raises RuntimeError/OSError/StopIteration variants for a broken file
        return None


def folder_labels(folders: list[Path]) -> list[str]:
    """A name per folder for the report: the base name, or as many trailing path parts as it
    takes to tell folders apart (a/run and b/run are not both 'run')."""
    resolved = [f.resolve() for f in folders]
    if len(set(resolved)) != len(resolved):
        from ..errors import MagrefInputError

        raise MagrefInputError("The same video folder was given twice.", "pass each folder once.")
    for k in range(1, max(len(f.parts) for f in resolved) + 1):
        labels = ["/".join(f.parts[-k:]) for f in resolved]
        if len(set(labels)) == len(labels):
            return labels
    return [str(f) for f in resolved]


def _png(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _frame_strip(video: Path, n: int = 6, height: int = 128) -> str | None:
    """`n` frames spread over the video, side by side, `height` px high (nearest-neighbour when
    enlarged, so a small video's pixels stay visible); None when it is missing or unreadable."""
    frames = _read_or_none(video) if video.is_file() else None
    if frames is None or len(frames) == 0:
        return None
    picks = [frames[i] for i in np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int)]
    h, w = picks[0].shape[:2]
    width = max(1, round(w * height / h))
    strip = Image.new("RGB", (len(picks) * (width + 2) - 2, height), (255, 255, 255))
    for k, f in enumerate(picks):
        im = Image.fromarray(f)
        im = im.resize((width, height), Image.Resampling.NEAREST if height >= h else Image.Resampling.LANCZOS)
        strip.paste(im, (k * (width + 2), 0))
    return _png(strip)


def _reference_thumb(path: str, size: int = 128) -> str | None:
    from ..composition import to_rgb_on_white

    try:
        im = to_rgb_on_white(load_reference(path))
    except Exception:  # the case file names it; the score already reports what is wrong with it
        return None
    scale = size / max(im.size)
    return _png(im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                          Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS))


def _cell(entry: dict) -> str:
    if "mean" in entry:
        return f"{entry['mean']:.4f} ± {entry['sem']:.4f} (n={entry['n']})"
    return f"not computed ({entry['not_computed']})"


def _metric_label(metric: str) -> str:
    m = REGISTRY[metric]
    return f"{metric} {'↑' if m.higher_is_better else '↓'}" + (f" ({m.label})" if m.label else "")


def _tables(results: dict, names: list[str], opens2v_domain: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(group, header, rows) per case group: the numbers of report.md and report.html."""
    out = []
    for group in results[names[0]]["aggregate"]:
        cases = results[names[0]]["aggregate"][group]["cases"]
        rows = [[_metric_label(m)] + [_cell(results[n]["aggregate"][group].get(m, {"not_computed": "-"})) for n in names] for m in REGISTRY]
        rows.append(["copy-paste flags"] + [str(results[n]["aggregate"][group]["copy_paste_flags"]) for n in names])
        if group == "all":
            totals = [results[n].get("opens2v", {}).get("total") for n in names]
            rows.append([f"OpenS2V Total (v1.1, {opens2v_domain})"] + [f"{t:.2f}" if t is not None else "not computed (no --opens2v values)" for t in totals])
        out.append((f"{group} ({cases} case{'s' if cases != 1 else ''})", ["metric"] + names, rows))
    return out


def opens2v_for(cases: list[Case], values_file: Path, domain: str) -> dict:
    """Per-case OpenS2V totals from the OpenS2V-Eval scorers' per-case values
    ({case_id: {aesthetics, motion_smoothness, motion_amplitude, facesim, gme, nexus, natural}})."""
    values = json.loads(Path(values_file).read_text())
    per_case = {}
    for c in cases:
        if c.id in values:
            try:
                per_case[c.id] = opens2v_total(values[c.id], domain)
            except ValueError as e:
                per_case[c.id] = None
                values[c.id]["_error"] = str(e)
    totals = [v for v in per_case.values() if v is not None]
    return {"domain": domain, "per_case": per_case, "total": float(np.mean(totals)) if totals else None, "n": len(totals)}


def write_report(cases: list[Case], folders: list[Path], out: Path, weights: dict[str, str] | None = None, log=print,
                 opens2v: dict[str, Path] | None = None, opens2v_domain: str = "open") -> dict:
    out.mkdir(parents=True, exist_ok=True)
    weights = weights or {}
    results = {}
    names = folder_labels(folders)
    for folder, name in zip(folders, names):
        per_case = score_folder(cases, folder, weights)
        results[name] = {"folder": str(folder), "per_case": per_case, "aggregate": aggregate(cases, per_case)}
        key = name if opens2v and name in opens2v else folder.name  # --opens2v names a folder by its label or base name
        if opens2v and key in opens2v:
            results[name]["opens2v"] = opens2v_for(cases, opens2v[key], opens2v_domain)
    report = {"cases": [c.to_dict() for c in cases], "metrics": {k: {"description": m.description, "higher_is_better": m.higher_is_better, "label": m.label}
              for k, m in REGISTRY.items()}, "results": results}
    (out / "report.json").write_text(json.dumps(report, indent=2))

    # report.md: aggregate table per group, folders side by side; n = videos each mean covers
    tables = _tables(results, names, opens2v_domain)
    lines = ["# Benchmark report", "", f"{len(cases)} cases; folders: {', '.join(names)}; ± is the standard error, n the videos a mean covers", ""]
    for title, header, rows in tables:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|---|" + "---|" * len(names)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    lines += ["Published OpenS2V-Eval v1.1 open-domain Totals: " + ", ".join(f"{k} {v}" for k, v in LEADERBOARD_OPEN_TOTAL.items()), ""]
    md = "\n".join(lines)
    (out / "report.md").write_text(md)

    _plot(results, names, out / "metrics.png")
    (out / "report.html").write_text(_html(cases, folders, names, tables, out / "metrics.png"))
    log(md.split("\n## ")[1].split("\n", 1)[1] if "\n## " in md else md)
    log(f"wrote {out}/report.json, report.md, metrics.png, report.html")
    return report


def _html(cases: list[Case], folders: list[Path], names: list[str], tables, figure: Path) -> str:
    """A page to read: the tables as tables, the figure within the page width, and per case its
    references beside a strip of frames from each folder's video."""
    e = html.escape
    parts = ["<!doctype html><html lang='en'><meta charset='utf-8'><title>magref benchmark</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:0 1em} img{max-width:100%;image-rendering:pixelated}"
             " table{border-collapse:collapse;margin-bottom:1em} td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
             " .case td{border:none} figure{display:inline-block;margin:0 8px 0 0}</style>",
             f"<h1>magref benchmark</h1><p>{len(cases)} cases; folders: {e(', '.join(names))}. ± is the standard error, n the videos a mean covers;"
             " metrics marked as baselines are weight-free reference points, not learned similarity.</p>",
             f"<img class='figure' alt='aggregate metrics per folder' src='{_png(Image.open(figure).convert('RGB'))}'>"]
    for title, header, rows in tables:
        parts.append(f"<h2>{e(title)}</h2><table><tr>{''.join(f'<th>{e(h)}</th>' for h in header)}</tr>")
        parts += [f"<tr>{''.join(f'<td>{e(c)}</td>' for c in r)}</tr>" for r in rows]
        parts.append("</table>")
    parts.append("<h2>Cases</h2>")
    for c in cases:
        refs = "".join(f"<figure><img alt='reference {k + 1}' src='{src}'><figcaption>{e(r.kind)}</figcaption></figure>"
                       if (src := _reference_thumb(r.path)) else f"<span>reference {k + 1} unreadable</span>" for k, r in enumerate(c.refs))
        parts.append(f"<section><h3>{e(c.id)}</h3><p>{e(c.prompt)}</p><div class='refs'>{refs}</div><table class='case'>")
        for f, n in zip(folders, names):
            strip = _frame_strip(f / f"{c.id}.mp4")
            cell = f"<img alt='{e(n)}: frames of {e(c.id)}' src='{strip}'>" if strip else "<i>no readable video</i>"
            parts.append(f"<tr><td><b>{e(n)}</b></td><td>{cell}</td></tr>")
        parts.append("</table></section>")
    return "".join(parts) + "</html>"


def _plot(results: dict, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in REGISTRY if any("mean" in results[n]["aggregate"]["all"].get(m, {}) for n in names)]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(3 * max(1, len(metrics)), 3))
    axes = np.atleast_1d(axes)
    for ax, m in zip(axes, metrics):
        vals = [results[n]["aggregate"]["all"].get(m, {}).get("mean", np.nan) for n in names]
        errs = [results[n]["aggregate"]["all"].get(m, {}).get("sem", 0) for n in names]
        ax.bar(range(len(names)), vals, yerr=errs)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(m + (" ↑" if REGISTRY[m].higher_is_better else " ↓"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
