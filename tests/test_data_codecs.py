"""Clips stored as video in the shards: round trip within a stated PSNR (lossless for FFV1),
datasets mixing codecs load, old raw datasets keep loading, a changed codec is a new cache."""

import numpy as np
import pytest

from magref.data.shards import ClipDataset, Sample, ShardWriter, decode_clip, encode_clip
from magref.world.clips import make_clip
from magref.world.render import identity


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _clip(seed: int = 0, frames: int = 17, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_clip([identity(3), identity(8)], rng, frames, size, size).frames


def test_codecs_round_trip():
    clip = _clip()
    raw, h264, ffv1 = (encode_clip(clip, c) for c in ("raw", "h264", "ffv1"))
    assert np.array_equal(decode_clip(ffv1, ".frames.mkv"), clip)  # lossless
    assert np.array_equal(decode_clip(raw, ".frames.npy"), clip)
    back = decode_clip(h264, ".frames.mp4")
    assert back.shape == clip.shape and psnr(back, clip) >= 40, psnr(back, clip)
    assert len(h264) * 8 < len(raw)  # measured on this clip: about 1/20


def test_a_dataset_mixing_codecs_loads_every_clip(tmp_path):
    clips = [_clip(s) for s in range(6)]
    manifest = {"format": "magref-clips-v1", "settings": {"frames": 17, "height": 64, "width": 64}, "shards": [], "skipped": []}
    for k, codec in enumerate(("raw", "h264", "ffv1")):  # an old raw shard beside new ones
        writer = ShardWriter(tmp_path, manifest, 2, clip_codec=codec)
        for j in (2 * k, 2 * k + 1):
            writer.add(Sample(f"c{j}", clips[j], "a caption", [], {"fps": 8.0}, masks=np.zeros((17, 64, 64), np.uint8)))
        writer.close()
    ds = ClipDataset(tmp_path)
    assert len(ds) == 6
    for j in range(6):
        frames = ds[j].frames
        assert frames.shape == clips[j].shape and (np.array_equal(frames, clips[j]) if j not in (2, 3) else psnr(frames, clips[j]) >= 40)
        assert ds.masks(j) is not None


def test_prepare_refuses_an_unknown_codec_and_resumes_an_old_raw_dataset_with_raw(tmp_path):
    import json
    from dataclasses import asdict

    from magref.data.prepare import PrepareSettings, prepare
    from magref.errors import MagrefInputError
    from videos import moving_subject_video

    with pytest.raises(MagrefInputError, match="--clip-codec 'gif'"):
        PrepareSettings(clip_codec="gif").validate()
    videos = tmp_path / "videos"
    videos.mkdir()
    moving_subject_video(videos / "a.mp4", colour=(220, 40, 40), seed=0, frames=20, caption="a red ball rolls")
    out = tmp_path / "ds"
    out.mkdir()
    old = {k: v for k, v in asdict(PrepareSettings(frames=9)).items() if k != "clip_codec"}  # a manifest from before codecs
    (out / "manifest.json").write_text(json.dumps({"format": "magref-clips-v1", "settings": old, "shards": [], "skipped": []}))
    with pytest.raises(MagrefInputError, match="other settings"):
        prepare(videos, out, PrepareSettings(frames=9), log=lambda *a: None)  # h264 by default: not what it holds
    manifest = prepare(videos, out, PrepareSettings(frames=9, clip_codec="raw"), log=lambda *a: None)
    assert manifest["num_samples"] >= 1 and ClipDataset(out)[0].frames.shape == (9, 64, 64, 3)


def test_prepare_with_two_workers_every_video_once_and_a_killed_run_resumes(tmp_path):
    import json
    import os
    import subprocess
    import sys
    import time

    from conftest import kill_tree, run_cli
    from videos import moving_subject_video

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(12):
        moving_subject_video(videos / f"v{i:02d}.mp4", colour=(40 + 15 * i, 200 - 10 * i, 60), seed=i, frames=20, caption=f"ball {i} rolls")
    out = tmp_path / "ds"
    args = ["prepare", str(videos), str(out), "--frames", "9", "--samples-per-shard", "2", "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "magref.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and sum(len(p.read_text().splitlines()) for p in out.glob("progress.rank*.jsonl")) < 3:
        time.sleep(0.05)
    kill_tree(proc.pid)
    proc.wait()
    finished_before = {json.loads(line)["video"] for p in out.glob("progress.rank*.jsonl") for line in p.read_text().splitlines()}
    assert 3 <= len(finished_before) < 12, finished_before
    assert not (out / "manifest.json").exists()  # merged only at the end
    rc, stdout, err = run_cli(*args, isolated=True, timeout=300)  # the rerun, as a user would
    assert rc == 0, err[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    files = [s["file"] for s in manifest["shards"]]
    assert len(files) == len(set(files)) and {f.split("-")[1] for f in files} == {"r0", "r1"}
    ds = ClipDataset(out)
    sources = [ds[i].meta["source"] for i in range(len(ds))]
    assert sorted(set(sources)) == [f"v{i:02d}.mp4" for i in range(12)]  # every video
    assert len(sources) == len(set(sources)) * 2  # once: 20 frames at 8 fps make two 9-frame clips each, no video twice
    logged = [json.loads(line)["video"] for p in out.glob("progress.rank*.jsonl") for line in p.read_text().splitlines()]
    assert len(logged) == len(set(logged))  # nothing finished before the kill was done again
    # a kill between a shard's manifest entry and its progress line leaves videos finished by the manifest alone
    assert set(logged) | {v for s in manifest["shards"] for v in s["videos"]} == {f"v{i:02d}.mp4" for i in range(12)}


def test_a_run_stopped_after_its_manifest_but_before_its_progress_does_not_prepare_those_videos_twice(tmp_path, monkeypatch):
    """The shard and its manifest entry are written, then the progress log: a stop between the two
    (found by the two-worker test above, whose kill lands there by chance) must not make the rerun
    prepare those videos again, or their clips would be in the dataset twice."""
    import json

    from magref.data import shards
    from magref.data.prepare import PrepareSettings, prepare
    from videos import moving_subject_video

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        moving_subject_video(videos / f"v{i}.mp4", colour=(40 + 60 * i, 200 - 50 * i, 60), seed=i, frames=9, caption=f"ball {i} rolls")
    out, settings = tmp_path / "ds", PrepareSettings(frames=9, samples_per_shard=1, clip_codec="raw")

    def stop(*_):
        raise KeyboardInterrupt  # as a kill would land: the manifest written, the progress not

    flush = shards.ShardWriter.flush

    def flush_then_stop(self, final=False):
        self.on_flush = stop
        flush(self, final)

    monkeypatch.setattr(shards.ShardWriter, "flush", flush_then_stop)
    with pytest.raises(KeyboardInterrupt):
        prepare(videos, out, settings, log=lambda *a: None)
    assert not (out / "progress.jsonl").exists() and len(json.loads((out / "manifest.json").read_text())["shards"]) == 1
    monkeypatch.undo()
    manifest = prepare(videos, out, settings, log=lambda *a: None)
    sources = sorted(ClipDataset(out)[i].meta["source"] for i in range(manifest["num_samples"]))
    assert sources == ["v0.mp4", "v1.mp4", "v2.mp4"]


def test_a_process_that_starts_after_another_finished_videos_still_takes_its_whole_share(tmp_path):
    """Processes of one run read what is finished at different moments (one may start after the
    other has finished videos); their shares must not depend on that moment."""
    from magref.data.prepare import PrepareSettings, merge_manifests, prepare
    from videos import moving_subject_video

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(6):
        moving_subject_video(videos / f"v{i}.mp4", colour=(40 + 30 * i, 200 - 20 * i, 60), seed=i, frames=9, caption=f"ball {i} rolls")
    out, settings = tmp_path / "ds", PrepareSettings(frames=9, samples_per_shard=1, clip_codec="raw")
    prepare(videos, out, settings, log=lambda *a: None, rank=0, world=2)  # all of process 0's share before process 1 starts
    prepare(videos, out, settings, log=lambda *a: None, rank=1, world=2)
    merged = merge_manifests(out, settings)
    sources = sorted(ClipDataset(out)[i].meta["source"] for i in range(merged["num_samples"]))
    assert sources == [f"v{i}.mp4" for i in range(6)]
