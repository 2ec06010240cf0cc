"""Streaming a dataset's shards front to back, for data on network or object storage
(`data_loading: stream` in a training config).

`ClipDataset` seeks inside each tar (random access: fine on a local disk, one request per member
over a network). A stream reads every shard sequentially instead, through the webdataset library
(our shards are in its layout): each epoch this rank's shards come in a seeded order, and the
samples are shuffled within a buffer of `buffer` samples, which is how large datasets are read
from object storage. Shards are split over ranks by position (rank r reads shards r, r + N, ...),
so a dataset needs at least as many shards as processes. The order is a function of (seed,
epoch, rank): a resumed run skips the samples it has already read and continues the same stream.
"""

from __future__ import annotations

import io
import json
from itertools import count

import numpy as np

from .shards import CLIP_CODECS, Sample, decode_clip, decode_sample, read_manifest


def _open_through_fsspec(scheme: str) -> None:
    """webdataset opens local paths, http(s), gs, hf and pipe: URLs itself; any other scheme
    (s3://, az://, memory://, ...) it is given fsspec's opener for."""
    import sys

    import webdataset  # noqa: F401  (its gopen module, which the package name shadows)

    schemes = sys.modules["webdataset.gopen"].gopen_schemes
    if scheme not in schemes:
        import fsspec

        schemes[scheme] = lambda url, mode="rb", bufsize=8192, **kw: fsspec.open(url, mode).open()


def sample_from_files(files: dict) -> Sample:
    """A sample from webdataset's dict of one key's members (`json`, `frames.mp4`, `subject0.png`, ...)."""
    key = files["__key__"]
    meta = json.loads(files["json"])
    for suffix, *_ in CLIP_CODECS.values():
        if suffix[1:] in files:
            frames = decode_clip(files[suffix[1:]], suffix)
            break
    else:
        raise KeyError(f"{key}: no clip in {files.get('__url__')}")
    subjects = [files[sub["file"][len(key) + 1 :]] for sub in meta["subjects"]]
    masks = np.load(io.BytesIO(files["masks.npy"])) if "masks.npy" in files else None
    return decode_sample(key, meta, frames, subjects, masks)


class ClipStream:
    """An endless stream of this rank's samples, epoch after epoch; `take(n)` the next n."""

    def __init__(self, root: str, seed: int = 0, buffer: int = 100, rank: int = 0, world_size: int = 1):
        from ..errors import MagrefInputError

        self.root, self.seed, self.buffer = str(root), seed, buffer
        self.manifest = read_manifest(self.root)
        shard_count = len(self.manifest["shards"])
        if shard_count < world_size:
            raise MagrefInputError(f"{root} has {shard_count} shard(s) for {world_size} processes: a stream gives each process whole shards.",
                                   "prepare it with a smaller --samples-per-shard, or use data_loading: random.")
        own = self.manifest["shards"][rank::world_size]
        self.shards = [self.root.rstrip("/") + "/" + s["file"] for s in own]
        self.epoch_length = sum(len(s["keys"]) for s in own)
        if "://" in self.root:
            _open_through_fsspec(self.root.split("://")[0])
        self._samples = self._all()

    def epoch(self, epoch: int):
        """The undecoded samples of one epoch, in the order of (seed, epoch)."""
        import webdataset as wds

        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        pipeline = wds.WebDataset(self.shards, shardshuffle=len(self.shards), detshuffle=True, seed=seed, nodesplitter=None, workersplitter=None,
                                  empty_check=False).shuffle(self.buffer, seed=seed)
        return pipeline  # dicts of one key's members each

    def _all(self, start: int = 0):
        for e in count(start):
            yield from self.epoch(e)

    def first(self) -> Sample:
        """The first sample of the first shard (a look at what the dataset holds; the stream does not move)."""
        import webdataset as wds

        return sample_from_files(next(iter(wds.WebDataset(self.shards[:1], shardshuffle=False, nodesplitter=None, workersplitter=None))))

    def take(self, n: int) -> list[Sample]:
        return [sample_from_files(next(self._samples)) for _ in range(n)]

    def skip(self, n: int) -> None:
        """Put a new stream n samples on (a resumed run's position): whole epochs are not read
        again, only the samples of the last one, without decoding their clips."""
        epochs, rest = divmod(n, self.epoch_length)
        self._samples = self._all(epochs)
        for _ in range(rest):
            next(self._samples)
