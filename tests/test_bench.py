"""Benchmark: truth-known metric behaviour, OpenS2V weighting, the score command's report."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import run_cli
from magref.bench.cases import load_cases
from magref.bench.metrics import MetricInput, opens2v_total, score_video
from magref.io import read_video, write_video
from videos import moving_subject_video


def ball(colour, size=64):
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((2, 2, size - 3, size - 3), fill=(*colour, 255))
    d.rectangle((size // 2 - 5, size // 2 - 5, size // 2 + 5, size // 2 + 5), fill=(250, 250, 60, 255))
    return im


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    ball((220, 40, 40)).save(root / "red.png")
    cases = [{"id": "red", "prompt": "a red ball rolls", "refs": [{"path": "red.png", "kind": "object"}], "tags": ["single"]}]
    (root / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    folders = {}
    # the right subject, moving
    folders["right"] = root / "right"
    moving_subject_video(folders["right"] / "red.mp4", colour=(220, 40, 40), frames=16, size=(64, 96))
    # a different subject, moving
    folders["wrong"] = root / "wrong"
    moving_subject_video(folders["wrong"] / "red.mp4", colour=(40, 60, 220), frames=16, size=(64, 96))
    # a static paste of the reference on the white canvas
    canvas = Image.new("RGB", (96, 64), (255, 255, 255))
    canvas.paste(ball((220, 40, 40), 64), (16, 0), ball((220, 40, 40), 64))
    folders["paste"] = root / "paste"
    write_video(folders["paste"] / "red.mp4", np.stack([np.asarray(canvas)] * 16), 8)
    # noise
    folders["noise"] = root / "noise"
    write_video(folders["noise"] / "red.mp4", np.random.default_rng(0).integers(0, 256, (16, 64, 96, 3), dtype=np.uint8), 8)
    return root, folders


def _scores(root, folder):
    case = load_cases(root / "cases.jsonl")[0]
    refs = [(Image.open(r.path), r.kind) for r in case.refs]
    return score_video(MetricInput(read_video(folder / "red.mp4"), refs, case.prompt), {})


def test_identity_prefers_the_referenced_subject(world):
    root, f = world
    assert _scores(root, f["right"])["subject_colour"].value > _scores(root, f["wrong"])["subject_colour"].value + 0.1


def test_static_paste_is_flagged(world):
    root, f = world
    assert _scores(root, f["paste"])["copy_paste"].value > 0.8
    for name in ("right", "wrong", "noise"):
        assert _scores(root, f[name])["copy_paste"].value < 0.5, name


def test_noise_scores_worst_on_quality(world):
    root, f = world
    q = {name: _scores(root, folder)["quality"].value for name, folder in f.items()}
    assert q["noise"] == min(q.values()) and q["noise"] < 0.5 * min(v for k, v in q.items() if k != "noise")
    assert _scores(root, f["right"])["motion"].value > _scores(root, f["paste"])["motion"].value


def test_missing_weights_are_not_computed_with_a_reason(world):
    root, f = world
    s = _scores(root, f["right"])
    for name in ("face_identity", "clip_score", "dino_subject"):
        assert s[name].value is None and s[name].reason.startswith("no weights given"), (name, s[name])


def test_opens2v_total_weighting():
    values = {"aesthetics": 5.5, "motion_smoothness": 0.9, "motion_amplitude": 0.3, "facesim": 0.3, "gme": 0.6, "nexus": 0.04, "natural": 3.0}
    expected = 100 * (0.16 * 0.5 + 0.06 * 0.9 + 0.02 * 0.3 + 0.20 * 0.3 + 0.12 * 0.6 + 0.20 * 0.8 + 0.24 * 0.5)
    assert opens2v_total(values) == pytest.approx(expected)
    human = 100 * (0.18 * 0.5 + 0.09 * 0.9 + 0.03 * 0.3 + 0.25 * 0.3 + 0.15 * 0.6 + 0.30 * 0.5)
    assert opens2v_total(values, "human") == pytest.approx(human)
    assert opens2v_total({**values, "aesthetics": 9.0}) - opens2v_total(values) == pytest.approx(100 * 0.16 * 0.5)  # clamped at 7
    assert opens2v_total({**values, "aesthetics": 2.0}) - opens2v_total(values) == pytest.approx(-100 * 0.16 * 0.5)  # clamped at 4
    with pytest.raises(ValueError):
        opens2v_total({"aesthetics": 5.0})


def test_bench_score_three_folders_side_by_side(world, tmp_path):
    root, f = world
    out = tmp_path / "report"
    rc, stdout, err = run_cli("bench", "score", root / "cases.jsonl", f["right"], f["wrong"], f["paste"], "--out", out)
    assert rc == 0, err
    assert "| metric | right | wrong | paste |" in stdout  # the side-by-side table is printed
    for name in ("report.json", "report.md", "metrics.png", "report.html"):
        assert (out / name).stat().st_size > 100, name
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"right", "wrong", "paste"}
    assert report["results"]["paste"]["aggregate"]["all"]["copy_paste_flags"] == 1
    md = (out / "report.md").read_text()
    assert "not computed (no weights given" in md and "## 1 subject" in md and "## kind: object" in md
    assert "OpenS2V Total (v1.1, open) | not computed" in md and "MAGREF-480P 52.51" in md
    n_cases = len(report["cases"])
    assert f"## all ({n_cases} case{'s' if n_cases != 1 else ''})" in md and f"(n={n_cases})" in md  # each mean says how many videos it covers
    assert "subject_colour ↑ (weight-free colour baseline)" in md  # a baseline is labelled as one
    _check_report_page((out / "report.html").read_text(), report["cases"], ["right", "wrong", "paste"])
    # with the OpenS2V-Eval scorers' values for one folder, its Total appears beside the others
    values = {"red": {"aesthetics": 5.5, "motion_smoothness": 0.9, "motion_amplitude": 0.3, "facesim": 0.3, "gme": 0.6, "nexus": 0.04, "natural": 3.0}}
    (tmp_path / "v.json").write_text(json.dumps(values))
    rc, _, err = run_cli("bench", "score", root / "cases.jsonl", f["right"], f["wrong"], "--out", out, "--opens2v", f"right={tmp_path / 'v.json'}")
    assert rc == 0, err
    assert "| OpenS2V Total (v1.1, open) | 55.20 | not computed" in (out / "report.md").read_text()


def _check_report_page(page: str, cases: list[dict], folders: list[str]) -> None:
    """report.html: tables as HTML tables (no markdown in a <pre>), the figure fitted to the page,
    and per case its references beside one strip of frames per folder."""
    from html.parser import HTMLParser

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.alts, self.text = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag == "img":
                self.alts.append(dict(attrs).get("alt", ""))

        def handle_data(self, data):
            self.text.append(data)

    p = Page()
    p.feed(page)
    assert "pre" not in p.tags and "|---|" not in page
    assert p.tags.count("table") >= 3 and p.tags.count("th") >= 1 + len(folders)
    assert "img{max-width:100%" in page and "aggregate metrics per folder" in p.alts
    for c in cases:
        assert sum(a.startswith("reference ") for a in p.alts) >= len(c["refs"])
        for f in folders:
            assert f"{f}: frames of {c['id']}" in p.alts, (f, c["id"])


def test_bench_score_keeps_folders_of_one_name_apart_and_survives_a_broken_video(world, tmp_path):
    """a/run and b/run are two columns, not one; a corrupt mp4 is scored as missing with a
    warning; an empty case file is one line."""
    import shutil

    root, f = world
    for parent, src in (("a", f["right"]), ("b", f["wrong"])):
        shutil.copytree(src, tmp_path / parent / "run")
    broken = sorted((tmp_path / "b" / "run").glob("*.mp4"))[0]
    broken.write_bytes(b"not a video")
    out = tmp_path / "report"
    rc, _, err = run_cli("bench", "score", root / "cases.jsonl", tmp_path / "a" / "run", tmp_path / "b" / "run", "--out", out)
    assert rc == 0 and "Traceback" not in err, err
    results = json.loads((out / "report.json").read_text())["results"]
    assert set(results) == {"a/run", "b/run"}
    assert "not a readable video" in results["b/run"]["per_case"][broken.stem]["missing"] and broken.name in err
    (tmp_path / "empty.jsonl").write_text("\n# nothing\n")
    rc, _, err = run_cli("bench", "score", tmp_path / "empty.jsonl", tmp_path / "a" / "run", "--out", out)
    assert rc == 2 and "has no cases" in err and len(err.strip().splitlines()) == 1


def test_importers(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "official.txt").write_text("one@@a man waves@@a.png@@b.png\n")
    cases = load_cases(tmp_path / "official.txt")
    assert cases[0].id == "one" and len(cases[0].refs) == 2 and cases[0].refs[0].kind == "object"
    (tmp_path / "opens2v.json").write_text(json.dumps([{"id": "x", "prompt": "p", "img_paths": ["a.png"], "types": ["human"], "domain": "open"}]))
    cases = load_cases(tmp_path / "opens2v.json")
    assert cases[0].refs[0].kind == "face" and cases[0].tags == ["open"]


def test_bundled_cases_generate_and_score(tmp_path):
    from conftest import ROOT

    cases_file = ROOT / "src" / "magref" / "assets" / "bench" / "cases.jsonl"
    cases = load_cases(cases_file)
    assert len(cases) == 3 and all(Image.open(r.path) for c in cases for r in c.refs)
    out = tmp_path / "videos"
    small = ["--model", "tiny-random", "--height", "64", "--width", "96", "--frames", "9", "--steps", "2"]
    rc, _, err = run_cli("bench", "generate", cases_file, "--out-dir", out, *small)
    assert rc == 0, err
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(f"{c.id}.mp4" for c in cases)
    rc, stdout, err = run_cli("bench", "score", cases_file, out, "--out", tmp_path / "report")
    assert rc == 0, err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report["results"]["videos"]["aggregate"]) >= {"all", "1 subject", "2 subjects", "kind: face", "kind: object"}


def test_bundled_world_cases_are_heldout_and_load():
    from conftest import ROOT
    from magref.world.render import is_held_out

    cases = load_cases(ROOT / "src" / "magref" / "assets" / "bench" / "world_cases.jsonl")
    assert sorted(len(c.refs) for c in cases) == [1, 1, 2, 2, 3, 3]
    for c in cases:
        for r in c.refs:
            assert Image.open(r.path).size == (96, 96)
            assert is_held_out(int(r.path.rsplit("id", 1)[1][:3]))


def _tiny_vision_models(root):
    """Tiny random CLIP and DINOv2 folders standing in for the user's weights."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, Dinov2Config, Dinov2Model

    from magref.tiny import byte_tokenizer

    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor  # noqa: F811
    except ImportError:
        pass
    torch.manual_seed(0)
    tok = byte_tokenizer()
    clip = CLIPModel(CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, max_position_embeddings=77, pad_token_id=0, bos_token_id=1, eos_token_id=1),
                                vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                   image_size=32, patch_size=16),
                                projection_dim=16))
    clip.save_pretrained(root / "clip")
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=proc, tokenizer=tok).save_pretrained(root / "clip")
    dino = Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16))
    for name in ("dino", "face"):
        dino.save_pretrained(root / name)
        proc.save_pretrained(root / name)
    return {k: str(root / k) for k in ("clip", "dino", "face")}


def test_metrics_with_user_weights_compute(world, tmp_path):
    from magref.bench.metrics import score_video as score

    root, f = world
    weights = _tiny_vision_models(tmp_path)
    frames = read_video(f["right"] / "red.mp4")
    face = Image.new("RGB", (48, 48), (230, 190, 160))
    s = score(MetricInput(frames, [(Image.open(root / "red.png"), "object"), (face, "face")], "a red ball rolls"), weights)
    for name in ("clip_score", "dino_subject", "face_identity"):
        assert s[name].value is not None and np.isfinite(s[name].value), (name, s[name])
    assert -1.0 <= s["dino_subject"].value <= 1.0 and -1.0 <= s["face_identity"].value <= 1.0
    assert len(s["dino_subject"].per_reference) == 1 and len(s["face_identity"].per_reference) == 1


def test_metrics_with_user_weights_score_identical_images_one_and_others_less(tmp_path):
    """A video whose frames are the reference itself scores ~1 on the embedding metrics; a video
    of another picture scores less: the metrics compare what they are given, not a constant."""
    from magref.bench.metrics import score_video as score

    weights = _tiny_vision_models(tmp_path)
    rng = np.random.default_rng(0)
    ref = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    other = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    same = score(MetricInput(np.stack([np.asarray(ref)] * 8), [(ref, "object"), (ref, "face")], "noise"), weights, ["dino_subject", "face_identity"])
    diff = score(MetricInput(np.stack([other] * 8), [(ref, "object"), (ref, "face")], "noise"), weights, ["dino_subject", "face_identity"])
    for name in ("dino_subject", "face_identity"):
        assert same[name].value == pytest.approx(1.0, abs=1e-5), (name, same[name])
        assert diff[name].value < same[name].value - 1e-3, (name, diff[name])
