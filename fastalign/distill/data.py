"""Turn a triplet stream into step batches: unique items, local triplets, inputs.

``StepStream`` is an ``IterableDataset``: in DataLoader workers it decodes the
step's images (PIL) so the main process only trains. Worker ``w`` of ``W``
builds the steps ``g`` with ``g % W == w`` of one deterministic step sequence,
and the DataLoader yields workers round-robin, so the order is the same with
any number of workers and resuming at a position is exact.

A corrupt or missing image is skipped (its triplets are dropped), counted in
the batch and logged once per item, never a crash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..common.seeds import derive_seed
from ..io import read_file_names  # noqa: F401  (re-exported: it lived here before fastalign.io had it)
from ..triplets import TripletBatch
from .sampler import DenseTripletSampler
from .source import TripletSource, hard_labels
from .step import StepBatch

log = logging.getLogger("fastalign.distill")


class ImageItems:
    """Decode item ``i`` = ``root / file_names[i]`` to a normalised (3, S, S) tensor.

    Args:
        root: directory the names are relative to.
        file_names: one path per item.
        size: output side (resize the short side, then centre crop).
        mean, std: per-channel normalisation.
    """

    def __init__(self, root: str, file_names: Sequence[str], size: int = 224,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)):
        self.root = Path(root)
        self.file_names = list(file_names)
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.file_names)

    def load(self, i: int) -> Optional[torch.Tensor]:
        """The image tensor, or None when the file is missing or cannot be decoded."""
        from PIL import Image, UnidentifiedImageError  # optional: only image students decode images

        path = self.root / self.file_names[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                w, h = img.size
                scale = self.size / min(w, h)
                img = img.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))),
                                 Image.BICUBIC)
                w, h = img.size
                left, top = (w - self.size) // 2, (h - self.size) // 2
                img = img.crop((left, top, left + self.size, top + self.size))
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            log.warning("skipping image %s (item %d): %s", path, i, exc)
            return None
        return (torch.from_numpy(arr).permute(2, 0, 1) - self.mean) / self.std


@dataclass
class StreamSpec:
    """What ``StepStream`` streams.

    Attributes:
        source: a ``TripletSource`` (a triplet store, ``ArrayTripletSource``) or a
            ``DenseTripletSampler``.
        batch_size: triplets per step on this rank.
        seed, shuffle: data order.
        rank, world_size: this process's shard.
        human: (H, 3) global hard human triplets to mix in, or None.
        human_batch: human triplets drawn per step.
        images: ``ImageItems`` when items are images; None when the student's
            inputs are item indices.
    """

    source: Union[TripletSource, DenseTripletSampler]
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    rank: int = 0
    world_size: int = 1
    human: Optional[torch.Tensor] = None
    human_batch: int = 0
    images: Optional[ImageItems] = None


class StepStream(IterableDataset):
    """Infinite stream of ``StepBatch`` starting at ``position``.

    ``position`` is ``{"step": s, "epoch": e, "batch": b}``: ``s`` steps done,
    and the store's next batch is batch ``b`` of epoch ``e`` (ignored for
    dense sampling, which depends on ``s`` only).
    """

    def __init__(self, spec: StreamSpec, position: Optional[Dict[str, int]] = None):
        super().__init__()
        self.spec = spec
        self.position = dict(position or {"step": 0, "epoch": 0, "batch": 0})

    def _raw(self) -> Iterator[tuple]:
        """(TripletBatch, position after it) for every step from ``position`` on."""
        spec = self.spec
        step, epoch, batch = self.position["step"], self.position["epoch"], self.position["batch"]
        if isinstance(spec.source, DenseTripletSampler):
            while True:
                tb = spec.source.sample(step, seed=spec.seed, rank=spec.rank)
                step += 1
                yield tb, {"step": step, "epoch": 0, "batch": step}
        while True:
            produced, first = False, batch
            for tb in spec.source.stream(spec.batch_size, seed=spec.seed, epoch=epoch, shuffle=spec.shuffle,
                                         rank=spec.rank, world_size=spec.world_size, start_batch=batch):
                batch += 1
                # A short last batch would give ranks different batch sizes
                # (and break the DDP average): it is dropped, like drop_last.
                if tb.triplets.shape[0] < spec.batch_size:
                    continue
                produced = True
                step += 1
                yield tb, {"step": step, "epoch": epoch, "batch": batch}
            if not produced and first == 0:
                raise ValueError(f"the triplet source yields no full batch of {spec.batch_size} triplets on "
                                 f"rank {spec.rank} of {spec.world_size}; lower train.batch_triplets")
            epoch, batch = epoch + 1, 0

    def __iter__(self) -> Iterator[StepBatch]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        bad: Dict[int, bool] = {}
        for g, (tb, pos) in enumerate(self._raw()):
            if g % nw == wid:
                yield self.build(tb, pos, bad)

    def build(self, tb: TripletBatch, pos: Dict[str, int], bad: Optional[Dict[int, bool]] = None) -> StepBatch:
        """Assemble a ``StepBatch``: unique items, local triplets, inputs."""
        spec = self.spec
        trip = tb.triplets.long()
        human = None
        if spec.human is not None and spec.human_batch > 0:
            gen = torch.Generator().manual_seed(derive_seed(spec.seed, pos["step"], spec.rank, 0x4855))
            rows = torch.randint(0, spec.human.shape[0], (spec.human_batch,), generator=gen)
            human = spec.human[rows]
        allidx = trip.reshape(-1) if human is None else torch.cat([trip.reshape(-1), human.reshape(-1)])
        items, inverse = torch.unique(allidx, return_inverse=True)
        local = inverse[: trip.numel()].view(-1, 3)
        hlocal = None if human is None else inverse[trip.numel():].view(-1, 3)
        # The loss takes exactly one target. Similarities are preferred (the loss
        # applies the teacher temperature); a hard-label store (THINGS text import)
        # carries one-hot probabilities and placeholder similarities.
        dense = isinstance(spec.source, DenseTripletSampler)  # labelled on the fly: always similarities
        if tb.sims is not None and (dense or not hard_labels(spec.source)):
            sims, probs = tb.sims, None
        else:
            sims, probs = None, tb.probs
        skipped_items = skipped_triplets = 0
        if spec.images is None:
            inputs = items
        else:
            bad = {} if bad is None else bad
            imgs, ok = [], torch.ones(items.shape[0], dtype=torch.bool)
            for j, item in enumerate(items.tolist()):
                img = None if bad.get(item) else spec.images.load(item)
                if img is None:
                    bad[item] = True
                    ok[j] = False
                else:
                    imgs.append(img)
            if not ok.all():
                skipped_items = int((~ok).sum())
                keep = ok[local].all(dim=1)
                skipped_triplets = int((~keep).sum())
                remap = torch.cumsum(ok.long(), 0) - 1  # old local index -> new local index
                local, sims = remap[local[keep]], None if sims is None else sims[keep]
                probs = None if probs is None else probs[keep]
                if hlocal is not None:
                    hlocal = remap[hlocal[ok[hlocal].all(dim=1)]]
                items = items[ok]
            if not imgs:
                inputs = torch.empty(0, 3, spec.images.size, spec.images.size)
            else:
                inputs = torch.stack(imgs)
        return StepBatch(inputs=inputs, triplets=local, target_sims=sims, target_probs=probs, human=hlocal,
                         items=items, position=dict(pos), skipped_items=skipped_items,
                         skipped_triplets=skipped_triplets)
