"""Benchmark of the evaluation module (``fastalign.eval``) against scipy; a markdown table.

Run: ``python benchmarks/bench_eval.py`` or ``python -m fastalign.bench.eval_bench``
(defaults: 1,854 and 10,000 items, D=64, plus the bundled THINGS evaluation), or
``--items 500 --episodes 10`` for a quick smoke run. References (when scipy is
installed) are ``scipy.spatial.distance.pdist``, ``scipy.stats.spearmanr`` and
``scipy.stats.kendalltau`` (tau-b by scipy's Cython merge sort, the same
O(n log n) algorithm rsatoolbox's ``_tau_a`` reuses; equal to tau-a when
there are no ties, as with continuous RDMs).

Every time is the harness's (``timing.timed``): one untimed warm-up call, then
the median of the repeats (a call slower than ``--slow-ms`` is timed twice).
This lived in ``fastalign/eval/bench.py`` until the redesign (issue 13): the
evaluation layer holds no benchmark code.
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import eval as fa_eval
from ..common.jsonsafe import json_safe
from ..common.seeds import derive_rng
from ..datasets.things import load_things
from ..io import atomic_write_json, atomic_write_text
from .timing import timed


@dataclass
class Row:
    """One task: fastalign's median seconds, the reference's (``None`` when not run) and their agreement."""

    task: str
    size: str
    ours_s: float
    ref_s: Optional[float]
    ref: str
    agree: str


@dataclass(frozen=True)
class EvalTimer:
    """How each call is timed (budgets in ms, as ``timing.time_call``)."""

    device: torch.device
    warmup_ms: float = 0.0
    rep_ms: float = 200.0
    slow_ms: float = 1000.0

    def __call__(self, fn: Callable[[], object], on_cpu: bool = False) -> Tuple[float, object]:
        """(median seconds, the warm-up call's output) of ``fn`` (a reference runs ``on_cpu``)."""
        device = torch.device("cpu") if on_cpu else self.device
        stats, out = timed(fn, device, self.warmup_ms, self.rep_ms, self.slow_ms, slow_reps=2)
        return stats.median_ms / 1e3, out


def _scipy():
    """(pdist, spearmanr, kendalltau), or Nones when scipy is missing."""
    try:
        from scipy.spatial.distance import pdist  # optional heavy dependency: the references only
        from scipy.stats import kendalltau, spearmanr
    except ImportError:
        return None, None, None
    return pdist, spearmanr, kendalltau


def bench_rsa(items: int, dim: int, timer: EvalTimer, max_ref_pairs: int, seed: int = 0) -> List[Row]:
    """RDM, Spearman and Kendall tau-a of two correlated random representations against scipy."""
    rng = derive_rng(seed)
    x = rng.normal(size=(items, dim)).astype(np.float32)
    y = (x @ rng.normal(size=(dim, dim)).astype(np.float32) + rng.normal(size=(items, dim)).astype(np.float32))
    xt, yt = torch.from_numpy(x).to(timer.device), torch.from_numpy(y).to(timer.device)
    pairs = items * (items - 1) // 2
    pdist, spearmanr, kendalltau = _scipy()
    rows = []
    t, ua = timer(lambda: fa_eval.rdm_upper(xt, "cosine"))
    ub = fa_eval.rdm_upper(yt, "cosine")
    ref_t, agree = None, "-"
    if pdist is not None:
        ref_t, ref = timer(lambda: pdist(x, "cosine"), on_cpu=True)
        agree = f"max abs diff {np.abs(ref - ua.cpu().numpy()).max():.1e}"
    rows.append(Row("RDM upper triangle (cosine, chunked)", f"N={items}, D={dim}", t, ref_t, "scipy pdist", agree))
    a64, b64 = ua.cpu().double().numpy(), ub.cpu().double().numpy()
    for task, ours_fn, ref_fn, ref_name in (
            ("Spearman of RDMs", fa_eval.spearman, spearmanr, "scipy spearmanr"),
            ("Kendall tau-a of RDMs", fa_eval.kendall_tau_a, kendalltau, "scipy kendalltau (merge sort)")):
        t, ours = timer(lambda: ours_fn(ua, ub))
        ref_t, agree = None, "-"
        if ref_fn is not None and pairs <= max_ref_pairs:
            ref_t, ref = timer(lambda: ref_fn(a64, b64)[0], on_cpu=True)
            agree = f"|diff| {abs(ref - float(ours)):.1e}"
        rows.append(Row(task, f"{pairs:,} pairs", t, ref_t, ref_name, agree))
    return rows


def bench_things(episodes: int, timer: EvalTimer) -> List[Row]:
    """Few-shot probes and ``evaluate_representation`` on the bundled THINGS CLIP features."""
    d = load_things()
    clip = torch.from_numpy(np.array(d.features["clip"])).to(timer.device)
    labels = fa_eval.single_category_labels(d.categories)
    rows = []
    for probe in ("centroid", "logreg"):
        t, _ = timer(lambda: fa_eval.few_shot_accuracy(clip, labels, (1, 5, 10), episodes, probe))
        rows.append(Row(f"few-shot {probe}, 1/5/10 shots", f"THINGS CLIP, {episodes} episodes", t, None, "-", "-"))
    opts = fa_eval.EvalOptions(few_shot=fa_eval.FewShotOptions(episodes=episodes))
    t, rep = timer(lambda: fa_eval.evaluate_representation(
        clip, d.triplets["test_10"], categories=d.categories, human_rdm_emb=d.features["spose49"],
        few_shot_labels=labels, similarity="cosine", options=opts))
    rows.append(Row("evaluate_representation (all metrics)", "THINGS CLIP, 50k triplets", t, None, "-",
                    f"accuracy {100 * rep['accuracy']:.1f}%"))
    return rows


def to_markdown(rows: Sequence[Row], header: str) -> str:
    lines = [header, "", "| task | size | fastalign (s) | reference (s) | reference | agreement |",
             "|---|---|---:|---:|---|---|"]
    for r in rows:
        ref = "-" if r.ref_s is None else f"{r.ref_s:.4g}"
        lines.append(f"| {r.task} | {r.size} | {r.ours_s:.4g} | {ref} | {r.ref} | {r.agree} |")
    return "\n".join(lines) + "\n"


def parser(prog: str = "python -m fastalign.bench.eval_bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, nargs="+", default=[1854, 10000], help="RDM sizes (objects)")
    p.add_argument("--dim", type=int, default=64, help="embedding dimension for the RDM benchmark")
    p.add_argument("--episodes", type=int, default=100, help="few-shot episodes on bundled THINGS")
    p.add_argument("--max-ref-pairs", type=int, default=20_000_000,
                   help="skip the scipy correlation references above this many pairs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-things", action="store_true", help="skip the bundled THINGS rows")
    p.add_argument("--rep-ms", type=float, default=200.0, help="repetition budget per call (ms)")
    p.add_argument("--slow-ms", type=float, default=1000.0, help="a call slower than this is timed twice")
    p.add_argument("--seed", type=int, default=0, help="seed of the random RDM inputs")
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--json", help="also write the rows as JSON here")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m fastalign.bench.eval_bench") -> int:
    args = parser(prog).parse_args(argv)
    device = torch.device(args.device)
    timer = EvalTimer(device, rep_ms=args.rep_ms, slow_ms=args.slow_ms)
    rows: List[Row] = []
    for n in args.items:
        rows += bench_rsa(n, args.dim, timer, args.max_ref_pairs, args.seed)
    if not args.no_things:
        rows += bench_things(args.episodes, timer)
    header = (f"fastalign.eval benchmark: {platform.processor() or platform.machine()}, "
              f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}; "
              f"median seconds after a warm-up call")
    table = to_markdown(rows, header)
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
    if args.json:
        atomic_write_json(args.json, json_safe({"header": header, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
