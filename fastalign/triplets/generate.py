"""AligNet stage 2 end to end: teacher embeddings -> clusters -> sampled triplets -> soft labels -> store.

Determinism and layout independence
-----------------------------------
Split ``s`` (0 = train, 1 = val) of ``num`` triplets is cut into shards of
``shard_size`` and each shard into chunks of ``chunk_size``. Chunk ``c`` of
shard ``h`` is sampled from ``SeedSequence([seed, s, h, c])`` alone, then
labelled by the teacher. So a shard's bytes depend only on the options, never
on which rank makes it or whether the run was interrupted: ``torchrun`` ranks
(``$RANK``/``$WORLD_SIZE``) each write the shards ``h % world_size == rank``,
an interrupted run resumes by skipping the shards already committed, and both
give the same store as one uninterrupted process.

Coordination between ranks is through files only (``fastalign.triplets.ranks``):
rank 0 checks the output path, writes ``run.json`` and the cluster labels
(``clusters.npy``); other ranks wait for them; rank 0 merges the manifest.

Inputs besides the embeddings: ``labels`` (one class per item, the ``*_class`` strategies) and
``categories`` (an (N, K) multi-label matrix, the ``*_category`` strategies, see
``fastalign.triplets.sampling``), both read through ``fastalign.io.resolve`` (a row count other
than the embeddings' is refused) and hashed into the resume fingerprint.

Output layout: ``OUT/`` is the training store; with ``val_num > 0`` the
validation store (over a disjoint item subset) is ``OUT/val/``. Beside the
store files: ``run.json`` (options), ``clusters.npy`` + ``kmeans.json``,
``items.npy`` (the split's item subset), ``summary.json`` (counts, timings,
entropy histogram) and ``teacher_entropy.png`` (``fastalign.triplets.report``).

Modules: ``options`` (``GenerateOptions``), ``ranks`` (coordination),
``split_writer`` (sampling and labelling a split's shards), ``report``
(summary, histogram figure); this module runs them in order.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..common.seeds import derive_rng
from ..common.timing import StageTimer
from ..io.atomic import atomic_save_npy, atomic_write_text, read_json
from ..io.faults import fault_point
from ..io.resolve import resolve_categories, resolve_features, resolve_file_names, resolve_labels
from ..teacher import load_transform
from .fingerprint import input_digests, run_fingerprint
from .kmeans import KMeansOptions, check_finite, kmeans
from .options import EMB_DTYPES, GenerateOptions, check_options, content_options, share_note, uses_clusters
from .ranks import check_fresh, rank_and_world, rank_device, start_run, wait_for, write_shared_json
from .report import (
    ENTROPY_BINS,
    GenerateSummary,
    SplitSummary,
    entropy_histogram,
    format_summary,
    plot_entropy,
    write_summary,
)
from .sampling import CategorySets, TripletSampler
from .split_writer import SplitJob, write_split
from .store import TripletStore

__all__ = ["ENTROPY_BINS", "EMB_DTYPES", "GenerateOptions", "GenerateSummary", "SplitSummary", "check_options",
           "entropy_histogram", "format_summary", "generate", "load_labels", "plot_entropy"]

# Every stage is listed in the summary (0 s when skipped), in this order.
STAGES = ("load", "kmeans", "sample", "label", "write", "histogram")


@dataclass
class _Inputs:
    emb: torch.Tensor  # (N, D) teacher embeddings on the device, transformed
    temperature: float
    info: Dict[str, object]
    classes: Optional[np.ndarray]
    names: Optional[List[str]]
    categories: Optional[CategorySets] = None  # shared by every split's sampler
    category_info: Optional[Dict[str, object]] = None


def load_labels(spec: str, n: int) -> np.ndarray:
    """Per-item integer labels from ``things`` or a file (``fastalign.io.resolve_labels``), one per embedding row."""
    labels, _ = resolve_labels(spec)
    if labels.shape[0] != n:
        raise ValueError(f"{spec}: has {labels.shape[0]} labels but the embeddings have {n} rows")
    return labels


def _teacher_embeddings(o: GenerateOptions, device: torch.device) -> Tuple[torch.Tensor, float, Dict[str, object]]:
    feats = resolve_features(o.embeddings)  # raises on NaN/Inf, wrong rank, missing file, unknown things:KEY
    info: Dict[str, object] = {"path": str(o.embeddings), "shape": list(feats.shape), "dtype": str(feats.dtype)}
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    temperature = 1.0
    if o.transform:
        tr = load_transform(o.transform, dim_in=x.shape[1])
        with torch.no_grad():
            x = tr.to(device)(x.to(device)).float()
        if tr.calibrated:
            temperature = float(tr.temperature)
        info["transform"] = {"path": str(o.transform), "temperature": float(tr.temperature), "calibrated": bool(tr.calibrated)}
    x = x.to(device).contiguous()
    check_finite(x)
    if o.emb_dtype != "float32":
        x = x.to(EMB_DTYPES[o.emb_dtype])
        check_finite(x)  # float16 overflows to Inf above 65504
    if o.temperature is not None:
        temperature = float(o.temperature)
    return x, temperature, info


def _load_inputs(o: GenerateOptions, device: torch.device) -> _Inputs:
    emb, temperature, info = _teacher_embeddings(o, device)
    n = int(emb.shape[0])
    if n < 3:
        raise ValueError(f"need at least 3 items, the embeddings have {n} rows")
    classes = load_labels(o.labels, n) if o.labels else None
    names = None
    if o.file_names:
        names = resolve_file_names(o.file_names)
        if len(names) != n:
            raise ValueError(f"{o.file_names}: lists {len(names)} names but the embeddings have {n} rows")
    categories, category_info = _load_categories(o.categories, n) if o.categories else (None, None)
    return _Inputs(emb, temperature, info, classes, names, categories, category_info)


def _load_categories(spec: str, n: int) -> Tuple[CategorySets, Dict[str, object]]:
    """The (N, K) category matrix (``fastalign.io.resolve_categories``: other row counts refused) and its description."""
    matrix, names = resolve_categories(spec, n=n)
    sets = CategorySets(matrix)
    info = {"spec": str(spec), "shape": list(matrix.shape), "categorised": int(sets.categorised.sum()),
            "names": names}
    return sets, info


# k-means options that cannot change the labels (chunking only bounds memory: the sums are float64).
_KMEANS_RUNTIME = ("device", "verbose", "chunk_size")


def _clusters(o: GenerateOptions, emb: torch.Tensor, root: Path, rank: int, device: torch.device,
              say: Callable[[str], None]) -> Tuple[np.ndarray, Dict[str, object]]:
    """k-means cluster ids, computed once by rank 0 and cached in ``root`` (also for resume)."""
    f, meta_f = root / "clusters.npy", root / "kmeans.json"
    n = emb.shape[0]
    if o.clusters > n:
        raise ValueError(f"clusters={o.clusters} exceeds the number of items N={n}")
    ko = KMeansOptions(k=o.clusters, iters=o.kmeans_iters, seed=o.seed, normalize=o.kmeans_normalize, device=device)
    # Every option that can change the labels (init, restarts, tolerance, ...) keys the cache, so a
    # resume never reuses clusters computed with other options or by the older algorithm.
    want = {**{k: v for k, v in asdict(ko).items() if k not in _KMEANS_RUNTIME}, "n": n}
    if rank != 0:
        wait_for(meta_f, o.wait_timeout, "rank 0's k-means", lambda p: read_json(p).get("options") == want)
    if meta_f.exists() and f.exists():
        info = read_json(meta_f)
        if info.get("options") == want:
            lab = np.load(f, allow_pickle=False)
            if lab.shape == (n,):
                say(f"k-means: reusing {f}")
                return lab.astype(np.int64), info
    res = kmeans(emb, ko, progress=_every(say, KMEANS_LINE_SECONDS) if o.progress else None)
    if o.progress:
        for r, run in enumerate(res.restarts):
            say(f"k-means restart {r + 1}/{len(res.restarts)}: {run['n_iter']} iterations, "
                f"{'converged' if run['converged'] else 'not converged'}, inertia {run['inertia']:.6g}"
                + (" (best)" if r == res.best_restart else ""))
    lab = res.labels.cpu().numpy().astype(np.int64)
    info = {**res.to_dict(), "options": want}
    if sum(res.reseeded):
        say(f"k-means: re-seeded {sum(res.reseeded)} empty cluster(s) over {res.n_iter} iterations")
    atomic_save_npy(f, lab, named_tmp=True)
    fault_point("kmeans.saved")  # clusters.npy in place, kmeans.json not yet: a resume must recompute
    write_shared_json(meta_f, info)  # written last: its presence means clusters.npy is complete
    return lab, info


# Per-iteration k-means lines at most this often: a long clustering (ImageNet, k = 500) still
# shows progress, a short one prints its restart summaries and little else.
KMEANS_LINE_SECONDS = 10.0


def _every(say: Callable[[str], None], seconds: float) -> Callable[[str], None]:
    """``say``, passing a line only when ``seconds`` have gone by since the last one it passed."""
    last = [-float("inf")]

    def throttled(line: str) -> None:
        now = time.monotonic()
        if now - last[0] >= seconds:
            last[0] = now
            say(line)
    return throttled


def _split_items(o: GenerateOptions, n: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(train items, val items or None): an item-disjoint split drawn from its own seed stream."""
    if not o.val_num:
        return np.arange(n, dtype=np.int64), None
    perm = derive_rng(o.seed, 2, 0).permutation(n)
    n_val = max(3, int(round(o.val_fraction * n)))
    if n - n_val < 3:
        raise ValueError(f"N={n} items are too few for an item-disjoint validation split")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _split_jobs(o: GenerateOptions, root: Path, n: int, mix, inputs: _Inputs,
                clusters: Optional[np.ndarray]) -> List[SplitJob]:
    """The splits to write, every strategy checked on every split before anything is written
    (so a bad validation split cannot fail after the training store is already written)."""
    train_items, val_items = _split_items(o, n)
    splits = [(0, "train", root, o.num, train_items)]
    if val_items is not None:
        splits.append((1, "val", root / "val", o.val_num, val_items))
    jobs = []
    for index, name, path, num, items in splits:
        sampler = TripletSampler(n, classes=inputs.classes, clusters=clusters, items=items, weighting=o.weighting,
                                 categories=inputs.categories)
        for s, _ in mix:
            try:
                sampler.check(s)
            except ValueError as exc:
                raise ValueError(f"{name} split ({items.size} items): {exc}") from None
        jobs.append(SplitJob(index, name, path, num, sampler))
    return jobs


def _store_meta(o: GenerateOptions, mix, inputs: _Inputs, options: Dict[str, object],
                fingerprint: Dict[str, object]) -> Dict[str, object]:
    """What every store of the run records about how it was made (``inputs``: the digests of its input files)."""
    transform = inputs.info.get("transform")
    return {
        "generator": "fastalign make-triplets",
        "options": options,
        "strategy": [[s, w] for s, w in mix],
        "temperature": inputs.temperature,
        "similarity": o.similarity,
        "chunk_size": o.chunk_size,
        "embeddings": inputs.info,
        "categories": inputs.category_info,
        "file_names": "file_names.txt" if inputs.names is not None else None,
        "teacher": transform.get("path") if isinstance(transform, dict) else None,
        "inputs": input_digests(fingerprint),
    }


def _report(o: GenerateOptions, root: Path, summary: GenerateSummary, timer: StageTimer) -> None:
    """Rank 0: entropy histograms of the finished stores, the figure and ``summary.json``."""
    with timer("histogram"):
        hists = {}
        for sp in summary.splits:
            if sp.num:
                hists[sp.name] = entropy_histogram(TripletStore.open(sp.path, verify=False), summary.temperature)
        summary.entropy_hist = hists
        if o.histogram and hists:
            plot_entropy(hists, root / "teacher_entropy.png")
    summary.seconds = timer.seconds
    write_summary(root / "summary.json", summary)


def generate(o: GenerateOptions, say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> GenerateSummary:
    """Run the whole stage (see the module docstring); returns a ``GenerateSummary``."""
    mix = check_options(o)
    rank, world = rank_and_world(o.rank, o.world_size)
    note = share_note(o.strategy)
    if note and rank == 0:
        say(note)
    root = Path(o.out)
    quiet = say if rank == 0 else (lambda s: None)
    device = rank_device(o.device, rank, world)
    timer = StageTimer()
    timer.seconds.update(dict.fromkeys(STAGES, 0.0))
    options = content_options(o)
    if rank == 0:
        check_fresh(root, o.resume)  # before any work, and before anything is created
    with timer("load"):
        inputs = _load_inputs(o, device)  # the loaders check every input before it is hashed
        fingerprint = run_fingerprint(o, device)
    n = int(inputs.emb.shape[0])
    if uses_clusters(mix) and o.clusters > n:
        raise ValueError(f"clusters={o.clusters} exceeds the number of items N={n}")
    start_run(root, options, fingerprint, o.resume, rank, world, o.wait_timeout)

    summary = GenerateSummary(temperature=inputs.temperature, rank=rank, world_size=world)
    clusters = None
    if uses_clusters(mix):
        with timer("kmeans"):
            clusters, summary.kmeans = _clusters(o, inputs.emb, root, rank, device, quiet)
    jobs = _split_jobs(o, root, n, mix, inputs, clusters)
    meta = _store_meta(o, mix, inputs, options, fingerprint)
    for job in jobs:
        if rank == 0 and inputs.names is not None:
            # a .tmp- temp name: the store writer's resume deletes it if this write is killed
            atomic_write_text(job.path / "file_names.txt", "\n".join(inputs.names) + "\n", named_tmp=True)
        summary.splits.append(write_split(o, job, mix, inputs.emb, inputs.temperature, meta, rank, world, timer))
    if rank == 0:
        _report(o, root, summary, timer)
    summary.seconds = timer.seconds
    return summary
