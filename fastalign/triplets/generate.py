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

Coordination between ranks is through files only (no process group): rank 0
checks the output path, writes ``run.json`` and the cluster labels
(``clusters.npy``); other ranks wait for them; rank 0 merges the manifest.

Output layout: ``OUT/`` is the training store; with ``val_num > 0`` the
validation store (over a disjoint item subset) is ``OUT/val/``. Beside the
store files: ``run.json`` (options), ``clusters.npy`` + ``kmeans.json``,
``items.npy`` (the split's item subset), ``summary.json`` (counts, timings,
entropy histogram) and ``teacher_entropy.png``.
"""

from __future__ import annotations

import io as _io
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ._fs import read_json, write_bytes_atomic, write_json_atomic
from .kmeans import KMeansOptions, check_finite, kmeans
from .label import LabelOptions, entropy, label_triplets, softmax_np
from .sampling import TripletSampler, chunk_rng, parse_strategy, sample_chunk, split_counts
from .store import TripletStore, TripletStoreWriter

ENTROPY_BINS = 60
EMB_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class GenerateOptions:
    """Options of ``generate``; the CLI ``fastalign make-triplets`` fills them.

    Attributes:
        embeddings: path of the (N, D) features (any format ``fastalign.io.load_features`` reads).
        out: store directory to create (the training split).
        num: number of training triplets (>= 0).
        strategy: a strategy or a mix, e.g. ``"cluster_border"`` or ``"cluster_border:0.8,random:0.2"``.
        clusters: k for k-means on the teacher embeddings (needed by ``cluster_border``).
        labels: optional path of per-item class labels (.npy/.npz/.txt, one int per item; negative = none).
        transform: optional teacher transform (``fastalign.io.load_transform``); its calibrated
            temperature is the default ``temperature``.
        file_names: optional ``file_names.txt`` naming the N items (copied into the store).
        val_num: number of validation triplets (0: no validation store).
        val_fraction: fraction of items held out for validation (item-disjoint splits).
        seed: the seed of everything random.
        resume: continue an interrupted run in ``out`` (the options must match).
        shard_size: triplets per store shard.
        chunk_size: triplets sampled and labelled at a time (bounds working memory).
        label_batch: triplets per similarity call (the kernel gathers 3 * label_batch * D values).
        sim_dtype: "float16" or "float32" storage of the similarities.
        with_probs: also store ``softmax(s / T)``.
        temperature: T for the probabilities (None: the transform's, else 1).
        similarity: "dot" or "cosine".
        weighting: label weighting of the strategies, "size" or "uniform".
        kmeans_iters: Lloyd iterations.
        kmeans_normalize: L2-normalise the teacher embeddings before clustering.
        device: torch device for k-means and labelling (None: cuda if available, else cpu).
        emb_dtype: dtype the teacher embeddings are held in on the device: "float32", "bfloat16"
            or "float16" (half the memory; k-means and similarities still accumulate in float32).
        backend: kernel backend for the similarities (None: default dispatch).
        histogram: write the teacher-entropy histogram PNG.
        progress: show progress (tqdm if installed, else one line per shard).
        rank, world_size: None reads ``$RANK``/``$WORLD_SIZE`` (torchrun), else 0/1.
        wait_timeout: seconds a rank waits for another's files (None = forever).
    """

    embeddings: str
    out: str
    num: int
    strategy: str = "cluster_border"
    clusters: int = 500
    labels: Optional[str] = None
    transform: Optional[str] = None
    file_names: Optional[str] = None
    val_num: int = 0
    val_fraction: float = 0.1
    seed: int = 0
    resume: bool = False
    shard_size: int = 1_000_000
    chunk_size: int = 65536
    label_batch: int = 4096
    sim_dtype: str = "float16"
    with_probs: bool = True
    temperature: Optional[float] = None
    similarity: str = "dot"
    weighting: str = "size"
    kmeans_iters: int = 25
    kmeans_normalize: bool = False
    device: Optional[str] = None
    emb_dtype: str = "float32"
    backend: Optional[str] = None
    histogram: bool = True
    progress: bool = True
    rank: Optional[int] = None
    world_size: Optional[int] = None
    wait_timeout: Optional[float] = 24 * 3600.0


@dataclass
class SplitSummary:
    """What one split produced."""

    name: str
    path: str
    num: int
    items: int
    strategy_counts: Dict[str, int]
    skipped: Dict[str, object]
    shards_written: int
    shards_resumed: int


@dataclass
class GenerateSummary:
    """Returned by ``generate`` (and written to ``OUT/summary.json`` by rank 0)."""

    splits: List[SplitSummary] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    temperature: float = 1.0
    kmeans: Optional[Dict[str, object]] = None
    entropy_hist: Optional[Dict[str, object]] = None
    rank: int = 0
    world_size: int = 1


# ----------------------------------------------------------------------------- helpers


def _int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def check_options(o: GenerateOptions) -> List[Tuple[str, float]]:
    """Validate options that need no file access; returns the parsed strategy mix."""
    _int("num", o.num, 0)
    _int("val_num", o.val_num, 0)
    _int("shard_size", o.shard_size, 1)
    _int("chunk_size", o.chunk_size, 1)
    _int("label_batch", o.label_batch, 1)
    _int("seed", o.seed, 0)
    _int("kmeans_iters", o.kmeans_iters, 0)
    mix = parse_strategy(o.strategy)
    if any(n == "cluster_border" for n, _ in mix):
        _int("clusters", o.clusters, 1)
    if any(n in ("between_class", "within_class", "class_border") for n, _ in mix) and not o.labels:
        raise ValueError(f"strategy {o.strategy!r} needs per-item class labels (--labels)")
    if o.sim_dtype not in ("float16", "float32"):
        raise ValueError(f"sim_dtype must be float16 or float32, got {o.sim_dtype!r}")
    if o.emb_dtype not in EMB_DTYPES:
        raise ValueError(f"emb_dtype must be one of {sorted(EMB_DTYPES)}, got {o.emb_dtype!r}")
    if o.similarity not in ("dot", "cosine"):
        raise ValueError(f"similarity must be dot or cosine, got {o.similarity!r}")
    if o.val_num and not 0 < o.val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {o.val_fraction!r}")
    if o.temperature is not None and not (o.temperature > 0 and math.isfinite(o.temperature)):
        raise ValueError(f"temperature must be finite and > 0, got {o.temperature!r}")
    return mix


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    buf = _io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    write_bytes_atomic(path, [buf.getvalue()])


def load_labels(path: str, n: int) -> np.ndarray:
    """Per-item integer labels from .npy / .npz (single array or ``labels``) / text (one per line)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: labels file not found")
    if p.suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
    elif p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            key = "labels" if "labels" in z.files else (z.files[0] if len(z.files) == 1 else None)
            if key is None:
                raise ValueError(f"{p}: expected an array 'labels' (or a single array); found {z.files}")
            arr = z[key]
    else:
        try:
            arr = np.loadtxt(p, dtype=np.float64, ndmin=1)
        except ValueError as exc:
            raise ValueError(f"{p}: not a list of integer labels ({exc})") from None
    arr = np.asarray(arr).reshape(-1) if np.asarray(arr).ndim == 2 and 1 in np.asarray(arr).shape else np.asarray(arr)
    if arr.ndim != 1:
        raise ValueError(f"{p}: labels must be 1-D (one per item), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not (arr == np.round(arr)).all():
            raise ValueError(f"{p}: labels must be integers")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{p}: labels must be integers, got dtype {arr.dtype}")
    if arr.shape[0] != n:
        raise ValueError(f"{p}: has {arr.shape[0]} labels but the embeddings have {n} rows")
    return arr.astype(np.int64)


class _Progress:
    """tqdm when installed, else one plain line per update (to stderr)."""

    def __init__(self, total: int, desc: str, enabled: bool, initial: int = 0):
        self.enabled = enabled
        self.total, self.done, self.desc = total, initial, desc
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=desc, unit="trip", unit_scale=True, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
        else:
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            print(f"{self.desc}: {self.done}/{self.total} triplets ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _wait_for(path: Path, timeout: Optional[float], what: str, check: Callable[[Path], bool] = lambda p: True) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while not (path.exists() and check(path)):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what} ({path})")
        time.sleep(0.5)


# ----------------------------------------------------------------------------- stages


def _teacher_embeddings(o: GenerateOptions, device: torch.device) -> Tuple[torch.Tensor, float, Dict[str, object]]:
    from ..io import load_features, load_transform

    feats = load_features(o.embeddings)  # raises on NaN/Inf, wrong rank, missing file
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


def _clusters(o: GenerateOptions, emb: torch.Tensor, root: Path, rank: int, device: torch.device, say) -> Tuple[np.ndarray, Dict[str, object]]:
    """k-means cluster ids, computed once by rank 0 and cached in ``root`` (also for resume)."""
    f, meta_f = root / "clusters.npy", root / "kmeans.json"
    n = emb.shape[0]
    if o.clusters > n:
        raise ValueError(f"clusters={o.clusters} exceeds the number of items N={n}")
    want = {"k": o.clusters, "seed": o.seed, "iters": o.kmeans_iters, "normalize": o.kmeans_normalize, "n": n}
    if rank != 0:
        _wait_for(meta_f, o.wait_timeout, "rank 0's k-means", lambda p: read_json(p).get("options") == want)
    if meta_f.exists() and f.exists():
        info = read_json(meta_f)
        if info.get("options") == want:
            lab = np.load(f, allow_pickle=False)
            if lab.shape == (n,):
                say(f"k-means: reusing {f}")
                return lab.astype(np.int64), info
    ko = KMeansOptions(k=o.clusters, iters=o.kmeans_iters, seed=o.seed, normalize=o.kmeans_normalize, device=device)
    res = kmeans(emb, ko, progress=say if o.progress else None)
    lab = res.labels.cpu().numpy().astype(np.int64)
    info = {**res.to_dict(), "options": want}
    if sum(res.reseeded):
        say(f"k-means: re-seeded {sum(res.reseeded)} empty cluster(s) over {res.n_iter} iterations")
    _save_npy_atomic(f, lab)
    write_json_atomic(meta_f, info)  # written last: its presence means clusters.npy is complete
    return lab, info


def _split_items(o: GenerateOptions, n: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    if not o.val_num:
        return np.arange(n, dtype=np.int64), None
    perm = chunk_rng(o.seed, 2, 0).permutation(n)
    n_val = max(3, int(round(o.val_fraction * n)))
    if n - n_val < 3:
        raise ValueError(f"N={n} items are too few for an item-disjoint validation split")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _rotation(shard: int, chunk: int) -> int:
    """Which strategy gets the first rounding remainder in a chunk (spreads rounding evenly)."""
    return shard * 7919 + chunk


def _write_split(
    o: GenerateOptions, split: int, name: str, path: Path, num: int, sampler: TripletSampler,
    mix, emb: torch.Tensor, temperature: float, meta: Dict[str, object], rank: int, world: int,
    times: Dict[str, float],
) -> SplitSummary:
    strategies = [s for s, _ in mix]
    for s in strategies:
        sampler.check(s)
    n_shards = -(-num // o.shard_size)
    # Per-strategy counts are a pure function of the layout: sum the per-chunk splits.
    counts = {s: 0 for s in strategies}
    for h in range(n_shards):
        size = min(o.shard_size, num - h * o.shard_size)
        for c_id, a in enumerate(range(0, size, o.chunk_size)):
            for s, c in zip(strategies, split_counts(min(o.chunk_size, size - a), mix, _rotation(h, c_id))):
                counts[s] += c
    meta = dict(meta, split=name, num=num, strategy_counts=counts, items=int(sampler.items.size))
    if rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        _save_npy_atomic(path / "items.npy", sampler.items)
    writer = TripletStoreWriter(path, num_items=int(emb.shape[0]), sim_dtype=o.sim_dtype, with_probs=o.with_probs,
                                shard_size=o.shard_size, meta=meta, resume=o.resume, rank=rank, world_size=world,
                                merge_timeout=o.wait_timeout)
    done = set(writer.completed_shard_ids)
    todo = [h for h in range(n_shards) if writer.owns(h) and h not in done]
    mine = sum(min(o.shard_size, num - h * o.shard_size) for h in range(n_shards) if writer.owns(h))
    lopts = LabelOptions(temperature=temperature, similarity=o.similarity, with_probs=o.with_probs, backend=o.backend,
                         batch_size=o.label_batch)
    bar = _Progress(mine, f"{name} triplets" + (f" [rank {rank}/{world}]" if world > 1 else ""), o.progress,
                    initial=mine - sum(min(o.shard_size, num - h * o.shard_size) for h in todo))
    try:
        for h in todo:
            size = min(o.shard_size, num - h * o.shard_size)
            idx = np.empty((size, 3), dtype=np.int32)
            sims = np.empty((size, 3), dtype=np.float16 if o.sim_dtype == "float16" else np.float32)
            probs = np.empty((size, 3), dtype=np.float32) if o.with_probs else None
            for c, a in enumerate(range(0, size, o.chunk_size)):
                b = min(size, a + o.chunk_size)
                t0 = time.perf_counter()
                rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([o.seed, split, h, c])))
                trip, _ = sample_chunk(sampler, mix, b - a, rng, _rotation(h, c))
                t1 = time.perf_counter()
                lt, ls, lp = label_triplets(emb, trip, lopts)
                t2 = time.perf_counter()
                idx[a:b] = lt.numpy()
                sims[a:b] = ls.numpy()
                if probs is not None:
                    probs[a:b] = lp.numpy()
                times["sample"] += t1 - t0
                times["label"] += t2 - t1
                bar.update(b - a)
            t3 = time.perf_counter()
            writer.write_shard(h, idx, sims, probs)
            times["write"] += time.perf_counter() - t3
        t3 = time.perf_counter()
        writer.close()
        times["write"] += time.perf_counter() - t3
    finally:
        bar.close()
    return SplitSummary(name, str(path), num, int(sampler.items.size), counts, sampler.report(strategies),
                        len(todo), len(done))


def entropy_histogram(store: TripletStore, temperature: float, bins: int = ENTROPY_BINS,
                      chunk: int = 65536) -> Dict[str, object]:
    """Histogram of teacher entropies (nats) over the whole store, streamed in chunks.

    Reads shards with plain file reads rather than through the memory maps, so
    resident memory stays at one chunk however large the store is.
    """
    edges = np.linspace(0.0, math.log(3.0), bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    total = 0.0
    sim_dt = store.sims.dtype
    for sh in store.shards:
        # shard layout: indices (int32), sims (sim dtype), probs (float32), each (count, 3)
        sims_off = sh.count * 3 * 4
        probs_off = sims_off + sh.count * 3 * sim_dt.itemsize
        for a in range(0, sh.count, chunk):
            m = min(chunk, sh.count - a)
            if sh.probs is not None:
                p = np.fromfile(sh.file, dtype="<f4", count=3 * m, offset=probs_off + a * 12).reshape(m, 3)
            else:
                s = np.fromfile(sh.file, dtype=sim_dt, count=3 * m, offset=sims_off + a * 3 * sim_dt.itemsize)
                p = softmax_np(s.reshape(m, 3), temperature)
            h = np.clip(entropy(p), 0.0, math.log(3.0))
            counts += np.histogram(h, bins=edges)[0]
            total += float(h.sum())
    n = int(counts.sum())
    return {"edges": edges.tolist(), "counts": counts.tolist(), "mean": total / n if n else float("nan"), "n": n}


def plot_entropy(hists: Dict[str, Dict[str, object]], path: Path) -> None:
    """Write the teacher-entropy histogram(s) as a PNG (matplotlib, Agg; imported lazily)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for name, h in hists.items():
        edges = np.asarray(h["edges"])
        counts = np.asarray(h["counts"], dtype=np.float64)
        dens = counts / max(counts.sum(), 1) / np.diff(edges)
        ax.stairs(dens, edges, label=f"{name} (n={h['n']:,}, mean {h['mean']:.3f})", fill=name == "train", alpha=0.6)
    ax.axvline(math.log(3.0), color="k", lw=0.8, ls="--")
    ax.set_xlabel("teacher entropy (nats); ln 3 = uniform")
    ax.set_ylabel("density")
    ax.set_title("Teacher odd-one-out entropy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, [buf.getvalue()])


def _check_fresh(root: Path, resume: bool) -> None:
    if resume or not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if any(root.iterdir()):
        raise FileExistsError(f"{root} already exists and is not empty; pass --resume to continue it, or choose a new --out")


# ----------------------------------------------------------------------------- entry point


def generate(o: GenerateOptions, say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> GenerateSummary:
    """Run the whole stage (see the module docstring); returns a ``GenerateSummary``."""
    mix = check_options(o)
    rank = int(os.environ.get("RANK", 0)) if o.rank is None else int(o.rank)
    world = int(os.environ.get("WORLD_SIZE", 1)) if o.world_size is None else int(o.world_size)
    if not 0 <= rank < world:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got {rank}/{world}")
    root = Path(o.out)
    quiet = (lambda s: None) if rank != 0 else say
    if world > 1 and o.device is None and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    else:
        device = torch.device(o.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    times = {k: 0.0 for k in ("load", "kmeans", "sample", "label", "write", "histogram")}
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    # What determines the content (the output path and run-time knobs do not).
    runtime = ("out", "resume", "progress", "rank", "world_size", "device", "wait_timeout", "histogram", "backend",
               "label_batch")
    opts_doc = {k: v for k, v in asdict(o).items() if k not in runtime}
    if rank == 0:
        _check_fresh(root, o.resume)  # before any work, and before anything is created
    t0 = time.perf_counter()
    emb, temperature, emb_info = _teacher_embeddings(o, device)
    n = int(emb.shape[0])
    if n < 3:
        raise ValueError(f"need at least 3 items, the embeddings have {n} rows")
    classes = load_labels(o.labels, n) if o.labels else None
    names_ref = None
    if o.file_names:
        from ..io import read_file_names

        names = read_file_names(o.file_names)
        if len(names) != n:
            raise ValueError(f"{o.file_names}: lists {len(names)} names but the embeddings have {n} rows")
        names_ref = "file_names.txt"
    times["load"] = time.perf_counter() - t0
    if any(s == "cluster_border" for s, _ in mix) and o.clusters > n:
        raise ValueError(f"clusters={o.clusters} exceeds the number of items N={n}")

    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if o.resume and (root / "run.json").exists():
            prev = read_json(root / "run.json").get("options")
            if prev != opts_doc:
                diff = sorted(k for k in set(prev or {}) | set(opts_doc) if (prev or {}).get(k) != opts_doc.get(k))
                raise ValueError(f"{root}: cannot resume: options differ from the interrupted run ({', '.join(diff)})")
        write_json_atomic(root / "run.json", {"options": opts_doc, "run_id": run_id, "world_size": world})
    else:
        _wait_for(root / "run.json", o.wait_timeout, "rank 0 to start",
                  lambda p: read_json(p).get("run_id") == run_id and read_json(p).get("options") == opts_doc)


    summary = GenerateSummary(temperature=temperature, rank=rank, world_size=world)
    clusters = None
    if any(s == "cluster_border" for s, _ in mix):
        t0 = time.perf_counter()
        clusters, summary.kmeans = _clusters(o, emb, root, rank, device, quiet)
        times["kmeans"] = time.perf_counter() - t0

    train_items, val_items = _split_items(o, n)
    meta = {
        "generator": "fastalign make-triplets",
        "options": opts_doc,
        "strategy": [[s, w] for s, w in mix],
        "temperature": temperature,
        "similarity": o.similarity,
        "chunk_size": o.chunk_size,
        "embeddings": emb_info,
        "file_names": names_ref,
        "teacher": emb_info.get("transform", {}).get("path") if isinstance(emb_info.get("transform"), dict) else None,
    }
    splits = [(0, "train", root, o.num, train_items)]
    if val_items is not None:
        splits.append((1, "val", root / "val", o.val_num, val_items))
    # Check every split's strategies before writing anything, so a bad validation split
    # cannot fail after the training store is already written.
    samplers = []
    for split, name, path, num, items in splits:
        sampler = TripletSampler(n, classes=classes, clusters=clusters, items=items, weighting=o.weighting)
        for s, _ in mix:
            try:
                sampler.check(s)
            except ValueError as exc:
                raise ValueError(f"{name} split ({items.size} items): {exc}") from None
        samplers.append(sampler)
    for (split, name, path, num, items), sampler in zip(splits, samplers):
        if rank == 0 and names_ref:
            path.mkdir(parents=True, exist_ok=True)
            data = ("\n".join(names) + "\n").encode("utf-8")
            write_bytes_atomic(path / "file_names.txt", [data])
        summary.splits.append(_write_split(o, split, name, path, num, sampler, mix, emb, temperature, meta,
                                           rank, world, times))

    if rank == 0:
        t0 = time.perf_counter()
        hists = {}
        for sp in summary.splits:
            if sp.num:
                hists[sp.name] = entropy_histogram(TripletStore.open(sp.path, verify=False), temperature)
        summary.entropy_hist = hists
        if o.histogram and hists:
            plot_entropy(hists, root / "teacher_entropy.png")
        times["histogram"] = time.perf_counter() - t0
        summary.seconds = times
        write_json_atomic(root / "summary.json", _jsonable(asdict(summary)))
    summary.seconds = times
    return summary


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


def format_summary(s: GenerateSummary) -> str:
    """Human-readable summary: counts per strategy, skipped labels, time per stage, throughput."""
    lines = []
    for sp in s.splits:
        lines.append(f"{sp.name}: {sp.num:,} triplets over {sp.items:,} items -> {sp.path} "
                     f"({sp.shards_written} shards written, {sp.shards_resumed} resumed)")
        for name, c in sp.strategy_counts.items():
            rep = sp.skipped.get(name, {}) if isinstance(sp.skipped, dict) else {}
            skip = rep.get("skipped_labels", 0) if isinstance(rep, dict) else 0
            extra = f"; {skip} label(s) with too few items skipped for the {rep.get('role')} role" if skip else ""
            lines.append(f"  {name:<15} {c:>14,}{extra}")
    if s.entropy_hist:
        for name, h in s.entropy_hist.items():
            lines.append(f"teacher entropy ({name}): mean {h['mean']:.4f} nats (ln 3 = {math.log(3):.4f}) over {h['n']:,}")
    lines.append(f"temperature: {s.temperature:g}")
    total = sum(sp.num for sp in s.splits)
    lines.append("| stage | seconds | triplets/s |")
    lines.append("|---|---:|---:|")
    for k, v in s.seconds.items():
        rate = f"{total / v:,.0f}" if k in ("sample", "label", "write") and v > 0 else ""
        lines.append(f"| {k} | {v:.3f} | {rate} |")
    return "\n".join(lines)
