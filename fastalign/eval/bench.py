"""Benchmark of the evaluation module; prints (and optionally writes) a markdown table.

Run: ``python -m fastalign.eval.bench`` (defaults: 1,854 and 10,000 items, D=64,
plus the bundled THINGS evaluation), or ``--items 500 --episodes 10`` for a
quick smoke run. References (when scipy is installed) are
``scipy.spatial.distance.pdist``, ``scipy.stats.spearmanr`` and
``scipy.stats.kendalltau`` (tau-b by scipy's Cython merge sort, the same
O(n log n) algorithm rsatoolbox's ``_tau_a`` reuses; equal to tau-a when
there are no ties, as with continuous RDMs).
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch


@dataclass
class Row:
    task: str
    size: str
    ours_s: float
    ref_s: Optional[float]
    ref: str
    agree: str


def _time(fn: Callable[[], object], device: torch.device) -> tuple:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def bench_rsa(items: int, dim: int, device: torch.device, max_ref_pairs: int) -> List[Row]:
    from . import kendall_tau_a, rdm_upper, spearman

    rng = np.random.default_rng(0)
    x = rng.normal(size=(items, dim)).astype(np.float32)
    y = (x @ rng.normal(size=(dim, dim)).astype(np.float32) + rng.normal(size=(items, dim)).astype(np.float32))
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    pairs = items * (items - 1) // 2
    rows = []
    t, ua = _time(lambda: rdm_upper(xt, "cosine"), device)
    ub = rdm_upper(yt, "cosine")
    ref_t, agree = None, "-"
    try:
        from scipy.spatial.distance import pdist
        from scipy.stats import kendalltau, spearmanr
    except ImportError:  # references are optional
        pdist = spearmanr = kendalltau = None
    if pdist is not None:
        ref_t, ref = _time(lambda: pdist(x, "cosine"), torch.device("cpu"))
        agree = f"max abs diff {np.abs(ref - ua.cpu().numpy()).max():.1e}"
    rows.append(Row("RDM upper triangle (cosine, chunked)", f"N={items}, D={dim}", t, ref_t, "scipy pdist", agree))
    t, ours = _time(lambda: spearman(ua, ub), device)
    ref_t, agree = None, "-"
    if spearmanr is not None and pairs <= max_ref_pairs:
        a64, b64 = ua.cpu().double().numpy(), ub.cpu().double().numpy()
        ref_t, ref = _time(lambda: spearmanr(a64, b64)[0], torch.device("cpu"))
        agree = f"|diff| {abs(ref - ours):.1e}"
    rows.append(Row("Spearman of RDMs", f"{pairs:,} pairs", t, ref_t, "scipy spearmanr", agree))
    t, ours = _time(lambda: kendall_tau_a(ua, ub), device)
    ref_t, agree = None, "-"
    if kendalltau is not None and pairs <= max_ref_pairs:
        a64, b64 = ua.cpu().double().numpy(), ub.cpu().double().numpy()
        ref_t, ref = _time(lambda: kendalltau(a64, b64)[0], torch.device("cpu"))
        agree = f"|diff| {abs(ref - ours):.1e}"
    rows.append(Row("Kendall tau-a of RDMs", f"{pairs:,} pairs", t, ref_t, "scipy kendalltau (merge sort)", agree))
    return rows


def bench_things(episodes: int, device: torch.device) -> List[Row]:
    from ..datasets.things import load_things
    from . import EvalOptions, FewShotOptions, evaluate_representation, few_shot_accuracy, single_category_labels

    d = load_things()
    clip = torch.from_numpy(np.array(d.features["clip"])).to(device)
    labels = single_category_labels(d.categories)
    rows = []
    for probe in ("centroid", "logreg"):
        t, _ = _time(lambda: few_shot_accuracy(clip, labels, (1, 5, 10), episodes, probe), device)
        rows.append(Row(f"few-shot {probe}, 1/5/10 shots", f"THINGS CLIP, {episodes} episodes", t, None, "-", "-"))
    opts = EvalOptions(few_shot=FewShotOptions(episodes=episodes))
    t, rep = _time(lambda: evaluate_representation(
        clip, d.triplets["test_10"], categories=d.categories, human_rdm_emb=d.features["spose49"],
        few_shot_labels=labels, similarity="cosine", options=opts), device)
    rows.append(Row("evaluate_representation (all metrics)", "THINGS CLIP, 50k triplets", t, None, "-",
                    f"accuracy {100 * rep['accuracy']:.1f}%"))
    return rows


def to_markdown(rows: Sequence[Row], header: str) -> str:
    lines = [header, "", "| task | size | fastalign (s) | reference (s) | reference | agreement |",
             "|---|---|---:|---:|---|---|"]
    for r in rows:
        ref = "-" if r.ref_s is None else f"{r.ref_s:.3f}"
        lines.append(f"| {r.task} | {r.size} | {r.ours_s:.3f} | {ref} | {r.ref} | {r.agree} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastalign.eval.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, nargs="+", default=[1854, 10000], help="RDM sizes (objects)")
    p.add_argument("--dim", type=int, default=64, help="embedding dimension for the RDM benchmark")
    p.add_argument("--episodes", type=int, default=100, help="few-shot episodes on bundled THINGS")
    p.add_argument("--max-ref-pairs", type=int, default=20_000_000,
                   help="skip the scipy correlation references above this many pairs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-things", action="store_true", help="skip the bundled THINGS rows")
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows: List[Row] = []
    for n in args.items:
        rows += bench_rsa(n, args.dim, device, args.max_ref_pairs)
    if not args.no_things:
        rows += bench_things(args.episodes, device)
    header = (f"fastalign.eval benchmark: {platform.processor() or platform.machine()}, "
              f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    table = to_markdown(rows, header)
    print(table)
    if args.out:
        from ..io import atomic_write_text

        atomic_write_text(args.out, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
