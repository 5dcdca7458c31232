"""One entry point that evaluates a representation, and a plain-text table of the result.

``evaluate_representation`` returns a JSON-serialisable dict (floats, ints,
strings, lists, dicts; ``None`` where a number is undefined) used by the CLI
and by the pipeline.

Report keys for human data beyond the odd-one-out triplets:

- ``levels``: accuracy by level derived from object categories, named by
  ``EvalOptions.category_levels_name`` ("THINGS category levels" for the bundled
  THINGS categories): a proxy, not the Levels dataset;
- ``rsa``: RSA and CKA against a human similarity *embedding*;
- ``human_rdms``: a list, one entry per measured human RDM file
  (``fastalign.eval.human_rdm.human_rdm_report``: Spearman, Pearson and Kendall
  tau-a against the pooled RDM and averaged over subjects, noise ceiling,
  bootstrap interval, with n of stimuli, subjects and pairs);
- ``levels_dataset``: the Levels dataset (``fastalign.eval.levels_data.levels_report``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..common.jsonsafe import finite_or_none as nan_to_none
from ..common.progress import Progress
from ..common.tensors import as_emb, as_index, as_triplets
from ..datasets.levels import LevelsData
from ..io.rdm import HumanRDMs
from .calibration import DEFAULT_BINS, triplet_calibration
from .cka import linear_cka
from .few_shot import FewShotOptions, few_shot_probes
from .human_rdm import human_rdm_report
from .levels import LEVELS, accuracy_by_level, encode_levels, triplet_levels
from .levels_data import LevelsOptions, levels_report
from .odd_one_out import DEFAULT_CEILING, noise_ceiling_normalized, triplet_accuracy
from .rsa import COMPARISONS, rdm_reference, rsa
from .uncertainty import human_uncertainty

__all__ = ["EvalOptions", "evaluate_representation", "evaluate_representations", "format_table"]


@dataclass(frozen=True)
class EvalOptions:
    """Options of ``evaluate_representation``.

    Attributes:
        ceiling: human noise ceiling for the normalised score (> 1/3).
        n_bins: ECE bins.
        min_repeats: responses an object set needs to count for human uncertainty (>= 2).
        uncertainty_bootstrap: object-set resamples for the 95 % interval of the KL to
            repeated human choices (0: none).
        uncertainty_seed: seed of that bootstrap.
        uncategorized: how objects without a category enter the levels ("distinct" or "exclude").
        rdm_metric: RDM metric of the evaluated representation; ``None`` = "dot" for
            dot similarity, "cosine" for cosine similarity.
        human_rdm_metric: RDM metric of the human reference embedding (SPoSE is a dot model).
        rsa_methods: RDM comparisons to run.
        few_shot_probes: probes to run when few-shot labels are given.
        few_shot: episode options (its ``probe`` is overridden by each of ``few_shot_probes``).
        chunk_size: rows per block when building RDMs.
        show_progress: print one line per stage to stderr (and few-shot progress bars).
        category_levels_name: what the category-derived ``levels`` are called in the report
            ("THINGS category levels" for the bundled THINGS categories).
        rdm_bootstrap: stimulus resamples for the measured-RDM intervals (0: none).
        rdm_seed: seed of that bootstrap.
        levels_data: options of the Levels dataset scoring.
    """

    ceiling: float = DEFAULT_CEILING
    n_bins: int = DEFAULT_BINS
    min_repeats: int = 2
    uncertainty_bootstrap: int = 1000
    uncertainty_seed: int = 0
    uncategorized: str = "distinct"
    rdm_metric: Optional[str] = None
    human_rdm_metric: str = "dot"
    rsa_methods: Tuple[str, ...] = tuple(COMPARISONS)
    few_shot_probes: Tuple[str, ...] = ("centroid", "logreg")
    few_shot: FewShotOptions = field(default_factory=FewShotOptions)
    chunk_size: int = 2048
    show_progress: bool = False
    category_levels_name: str = "category levels"
    rdm_bootstrap: int = 1000
    rdm_seed: int = 0
    levels_data: LevelsOptions = field(default_factory=LevelsOptions)


def _level_dict(acc: Mapping[str, Tuple[float, int]]) -> Dict[str, Dict[str, Any]]:
    return {k: {"accuracy": nan_to_none(a), "n": n} for k, (a, n) in acc.items()}


class _Shared:
    """The inputs every representation is scored against, and what is computed from them once.

    Several representations of the same objects (``evaluate_representations``) share the
    triplets' level codes, the human RDM and its ranks, and the measured RDMs' human side.
    """

    def __init__(self, triplets: Any, odd: Optional[Any], categories: Optional[Any], levels: Optional[Any],
                 level_names: Optional[Sequence[str]], human_rdm_emb: Optional[Any], few_shot_labels: Optional[Any],
                 human_rdms: Sequence[HumanRDMs], human_rdm_items: Optional[Sequence[Optional[Any]]],
                 levels_data: Optional[LevelsData], file_names: Optional[Sequence[str]], opts: EvalOptions):
        self.triplets, self.odd = triplets, odd
        self.categories, self.levels, self.level_names = categories, levels, level_names
        self.human_rdm_emb, self.few_shot_labels = human_rdm_emb, few_shot_labels
        self.human_rdms = list(human_rdms)
        self.human_rdm_items = human_rdm_items
        self.levels_data, self.file_names = levels_data, file_names
        self.opts = opts
        self._cache: Dict[Any, Any] = {}

    def measures(self) -> List[str]:
        """Names of the measures ``evaluate_representation`` runs on these inputs, in order."""
        names = ["accuracy and calibration"]
        names += ["accuracy by level"] if self.categories is not None else []
        names += ["levels file"] if self.levels is not None else []
        names += ["human uncertainty"]
        names += ["RSA and CKA"] if self.human_rdm_emb is not None else []
        names += ["measured human RDMs"] if self.human_rdms else []
        names += ["Levels dataset"] if self.levels_data is not None else []
        names += ["few-shot"] if self.few_shot_labels is not None and self.opts.few_shot_probes else []
        return names

    def once(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


def evaluate_representation(
    emb: Any,
    triplets: Any,
    *,
    odd: Optional[Any] = None,
    categories: Optional[Any] = None,
    levels: Optional[Any] = None,
    level_names: Optional[Sequence[str]] = None,
    human_rdm_emb: Optional[Any] = None,
    few_shot_labels: Optional[Any] = None,
    human_rdms: Sequence[HumanRDMs] = (),
    human_rdm_items: Optional[Sequence[Optional[Any]]] = None,
    levels_data: Optional[LevelsData] = None,
    file_names: Optional[Sequence[str]] = None,
    similarity: str = "dot",
    temperature: float = 1.0,
    options: Optional[EvalOptions] = None,
    backend: Optional[str] = None,
    on_measure: Optional[Callable[[str, float], None]] = None,
) -> Dict[str, Any]:
    """Evaluate an (N, D) representation against human odd-one-out choices and more.

    Args:
        emb: (N, D) embeddings (numpy or torch; work runs on its device).
        triplets: (B, 3) human triplets, column 2 the odd one out unless ``odd`` is given.
        odd: optional (B,) odd-one-out positions.
        categories: optional (N, K) 0/1 object categories: accuracy per derived
            level (fine / class_boundary / coarse / mixed, see ``fastalign.eval.levels``).
        levels: optional (B,) per-triplet level labels (a Levels-style file).
        level_names: names of integer ``levels`` codes.
        human_rdm_emb: optional (N, D_h) human similarity embedding for RSA and CKA.
        few_shot_labels: optional (N,) class per object (negative = unlabelled) for the few-shot probes.
        human_rdms: measured human RDMs (``fastalign.io.read_human_rdm``) for ``human_rdms``.
        human_rdm_items: per RDM, the feature row of each of its stimuli (None: its rows are
            the feature rows); default all None.
        levels_data: Levels dataset trials (``fastalign.datasets.load_levels``); needs ``file_names``.
        file_names: the N feature rows' image names (for ``levels_data``).
        similarity: ``"dot"`` or ``"cosine"`` for the triplet similarities.
        temperature: softmax temperature of the model's probabilities (> 0).
        options: ``EvalOptions``.
        backend: kernel backend for the triplet ops.
        on_measure: called as ``on_measure(name, seconds)`` after each measure.

    Returns a JSON-serialisable dict with keys ``n_objects``, ``dim``, ``n_triplets``,
    ``similarity``, ``temperature``, ``accuracy``, ``ceiling``,
    ``noise_ceiling_normalized``, ``calibration``, ``uncertainty`` and, when their
    inputs are given, ``levels`` (from categories), ``levels_file`` (from ``levels``),
    ``rsa`` (with ``cka``), ``human_rdms``, ``levels_dataset`` and ``few_shot``.
    """
    opts = options or EvalOptions()
    shared = _Shared(triplets, odd, categories, levels, level_names, human_rdm_emb, few_shot_labels, human_rdms,
                     human_rdm_items, levels_data, file_names, opts)
    return _evaluate(emb, shared, similarity, temperature, opts, backend, on_measure)


def evaluate_representations(
    representations: Mapping[str, Mapping[str, Any]],
    triplets: Any,
    *,
    odd: Optional[Any] = None,
    categories: Optional[Any] = None,
    levels: Optional[Any] = None,
    level_names: Optional[Sequence[str]] = None,
    human_rdm_emb: Optional[Any] = None,
    few_shot_labels: Optional[Any] = None,
    human_rdms: Sequence[HumanRDMs] = (),
    human_rdm_items: Optional[Sequence[Optional[Any]]] = None,
    levels_data: Optional[LevelsData] = None,
    file_names: Optional[Sequence[str]] = None,
    options: Optional[EvalOptions] = None,
    backend: Optional[str] = None,
    progress: bool = False,
    on_measure: Optional[Callable[[str, str, float], None]] = None,
) -> Dict[str, Dict[str, Any]]:
    """``evaluate_representation`` of several representations of the same objects.

    What depends only on the shared inputs (triplet levels, the human RDM and its ranks,
    the measured RDMs' human side) is computed once; every number equals what one
    ``evaluate_representation`` call per representation gives.

    Args:
        representations: ``{name: {"emb": (N, D), "similarity": "dot" | "cosine",
            "temperature": float, "rdm_metric": optional}}``; ``rdm_metric`` defaults to
            ``options.rdm_metric``.
        triplets, odd, categories, levels, level_names, human_rdm_emb, few_shot_labels,
            human_rdms, human_rdm_items, levels_data, file_names, options, backend: as in
            ``evaluate_representation``.
        progress: a progress bar over representations and measures on stderr
            (``fastalign.common.progress``: a line every 30 s off a terminal).
        on_measure: called as ``on_measure(representation, measure, seconds)`` after each measure.

    Returns ``{name: report}``.
    """
    opts = options or EvalOptions()
    shared = _Shared(triplets, odd, categories, levels, level_names, human_rdm_emb, few_shot_labels, human_rdms,
                     human_rdm_items, levels_data, file_names, opts)
    n_measures = len(shared.measures())
    results: Dict[str, Dict[str, Any]] = {}
    with Progress(len(representations) * n_measures, "evaluate", progress, unit="measure") as bar:
        for name, rep in representations.items():
            def done(measure: str, seconds: float, name: str = name) -> None:
                bar.update(1)
                bar.note(f"{name}: {measure} {seconds:.1f} s")
                if on_measure is not None:
                    on_measure(name, measure, seconds)

            rep_opts = replace(opts, rdm_metric=rep.get("rdm_metric", opts.rdm_metric))
            results[name] = _evaluate(rep["emb"], shared, rep.get("similarity", "dot"),
                                      float(rep.get("temperature", 1.0)), rep_opts, backend, done)
    return results


def _evaluate(emb: Any, shared: _Shared, similarity: str, temperature: float, opts: EvalOptions,
              backend: Optional[str], on_measure: Optional[Callable[[str, float], None]]) -> Dict[str, Any]:
    e = as_emb(emb)
    if not bool(torch.isfinite(e).all()):
        row = int((~torch.isfinite(e)).any(1).nonzero()[0, 0])
        raise ValueError(f"emb has a NaN or Inf in row {row}")
    t = as_triplets(shared.triplets, e.shape[0], e.device)
    o = None if shared.odd is None else as_index(shared.odd, "odd", e.device)
    report: Dict[str, Any] = {}
    steps = {
        "accuracy and calibration": lambda: report.update(
            _accuracy_and_calibration(e, t, o, similarity, temperature, opts, backend)),
        "accuracy by level": lambda: _category_levels(report, e, t, o, shared, similarity, opts, backend),
        "levels file": lambda: _levels_file(report, e, t, o, shared, similarity, backend),
        "human uncertainty": lambda: report.update(uncertainty=human_uncertainty(
            e, t, o, similarity, temperature, opts.min_repeats, backend, opts.uncertainty_bootstrap,
            opts.uncertainty_seed)),
        "RSA and CKA": lambda: report.update(rsa=_rsa(e, shared, similarity, opts)),
        "measured human RDMs": lambda: report.update(human_rdms=_measured_rdms(e, shared, similarity, opts)),
        "Levels dataset": lambda: report.update(levels_dataset=_levels_dataset(e, shared, similarity, opts,
                                                                                backend)),
        "few-shot": lambda: report.update(few_shot=_few_shot(e, shared.few_shot_labels, opts)),
    }
    for name in shared.measures():
        if opts.show_progress:
            print(f"[evaluate] {name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        steps[name]()
        if on_measure is not None:
            on_measure(name, time.perf_counter() - start)
    return report


def _accuracy_and_calibration(e: torch.Tensor, t: torch.Tensor, o: Optional[torch.Tensor], similarity: str,
                              temperature: float, opts: EvalOptions, backend: Optional[str]) -> Dict[str, Any]:
    """The report's head: sizes, accuracy against chance and the ceiling, and calibration."""
    acc = triplet_accuracy(e, t, o, similarity, backend)
    report: Dict[str, Any] = {
        "n_objects": int(e.shape[0]),
        "dim": int(e.shape[1]),
        "n_triplets": int(t.shape[0]),
        "similarity": similarity,
        "temperature": float(temperature),
        "accuracy": nan_to_none(acc),
        "ceiling": float(opts.ceiling),
        "noise_ceiling_normalized": nan_to_none(noise_ceiling_normalized(acc, opts.ceiling)),
    }
    report["calibration"] = {
        k: (nan_to_none(v) if isinstance(v, float) else v)
        for k, v in triplet_calibration(e, t, o, temperature, similarity, opts.n_bins, backend).items()
    }
    return report


def _category_levels(report: Dict[str, Any], e: torch.Tensor, t: torch.Tensor, o: Optional[torch.Tensor],
                     shared: _Shared, similarity: str, opts: EvalOptions, backend: Optional[str]) -> None:
    """``levels``: accuracy by the levels a category matrix gives each triplet."""
    n = e.shape[0]
    cats = shared.categories
    cats = cats if isinstance(cats, torch.Tensor) else torch.from_numpy(np.array(cats))
    if cats.dim() != 2 or cats.shape[0] != n:
        raise ValueError(f"categories must have shape ({n}, K) to match emb, got {tuple(cats.shape)}")
    # The triplets' levels depend on the triplets and categories only.
    codes = shared.once(("levels", n, opts.uncategorized), lambda: triplet_levels(t.cpu(), cats, opts.uncategorized))
    report["levels"] = {
        "name": opts.category_levels_name,
        "source": "categories",
        "uncategorized": opts.uncategorized,
        "accuracy": _level_dict(accuracy_by_level(e, t, codes, o, similarity, LEVELS, backend)),
    }


def _levels_file(report: Dict[str, Any], e: torch.Tensor, t: torch.Tensor, o: Optional[torch.Tensor],
                 shared: _Shared, similarity: str, backend: Optional[str]) -> None:
    """``levels_file``: accuracy by per-triplet level labels."""
    codes, names = shared.once("levels_file", lambda: encode_levels(shared.levels, shared.level_names))
    report["levels_file"] = {
        "source": "levels",
        "accuracy": _level_dict(accuracy_by_level(e, t, codes, o, similarity, names, backend)),
    }


def _rsa(e: torch.Tensor, shared: _Shared, similarity: str, opts: EvalOptions) -> Dict[str, Any]:
    """RSA and linear CKA against a human similarity embedding over the same objects."""
    h = shared.once(("human_emb", e.device), lambda: as_emb(shared.human_rdm_emb, "human_rdm_emb", device=e.device))
    if h.shape[0] != e.shape[0]:
        raise ValueError(f"human_rdm_emb has {h.shape[0]} rows but emb has {e.shape[0]}; "
                         "both must list the same objects")
    metric = opts.rdm_metric or ("dot" if similarity == "dot" else "cosine")
    # The human RDM and its ranks are the same for every representation.
    ref = shared.once(("human_rdm", e.device, opts.human_rdm_metric, opts.chunk_size),
                      lambda: rdm_reference(h, opts.human_rdm_metric, opts.chunk_size))
    scores = rsa(e, ref, metric, None, opts.rsa_methods, opts.chunk_size)
    return {"metric": metric, "human_metric": opts.human_rdm_metric,
            **{k: nan_to_none(v) for k, v in scores.items()}, "cka": nan_to_none(linear_cka(e, h))}


def _few_shot(e: torch.Tensor, labels: Any, opts: EvalOptions) -> Dict[str, Any]:
    """Few-shot accuracy of every configured probe, all on the same episodes."""
    o_fs = FewShotOptions(**{**asdict(opts.few_shot), "shots": tuple(opts.few_shot.shots),
                             "show_progress": opts.few_shot.show_progress or opts.show_progress})
    res = few_shot_probes(e, labels, tuple(opts.few_shot_probes), options=o_fs)
    return {probe: {str(k): v for k, v in r.items()} for probe, r in res.items()}


def _measured_rdms(e: torch.Tensor, shared: _Shared, similarity: str, opts: EvalOptions) -> List[Dict[str, Any]]:
    """``human_rdms``: RSA against every measured human RDM."""
    human_rdms = shared.human_rdms
    items = list(shared.human_rdm_items) if shared.human_rdm_items is not None else [None] * len(human_rdms)
    if len(items) != len(human_rdms):
        raise ValueError(f"{len(items)} item maps for {len(human_rdms)} human RDMs")
    metric = opts.rdm_metric or ("dot" if similarity == "dot" else "cosine")
    return [human_rdm_report(e, h, it, metric, opts.rsa_methods, opts.rdm_bootstrap, opts.rdm_seed, opts.chunk_size)
            for h, it in zip(human_rdms, items)]


def _levels_dataset(e: torch.Tensor, shared: _Shared, similarity: str, opts: EvalOptions,
                    backend: Optional[str]) -> Dict[str, Any]:
    if shared.file_names is None:
        raise ValueError("the Levels dataset needs the feature rows' file names (--file-names)")
    return levels_report(e, shared.levels_data, shared.file_names, similarity, opts.levels_data, backend)


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{100 * v:.1f}%" if pct else f"{v:.4f}"
    return str(v)


def _interval(iv: Optional[Mapping[str, Any]]) -> str:
    ci = (iv or {}).get("ci95")
    return "-" if not ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _rows(report: Mapping[str, Any]) -> List[Tuple[str, str]]:
    rows = [
        ("triplets", _fmt(report.get("n_triplets"))),
        ("accuracy", _fmt(report.get("accuracy"), True)),
        (f"noise-ceiling-normalised (ceiling {report.get('ceiling')})", _fmt(report.get("noise_ceiling_normalized"))),
    ]
    cal = report.get("calibration") or {}
    rows += [("temperature", f"{report.get('temperature'):.4g}"),
             ("NLL (nats)", _fmt(cal.get("nll"))),
             (f"ECE ({cal.get('n_bins')} bins)", _fmt(cal.get("ece"))),
             ("mean entropy (nats)", _fmt(cal.get("entropy")))]
    if "levels" in report:
        rows.append(("category levels", str(report["levels"].get("name", "category levels"))))
    for key in ("levels", "levels_file"):
        if key in report:
            for lv, d in report[key]["accuracy"].items():
                rows.append((f"accuracy [{lv}] (n={d['n']})", _fmt(d["accuracy"], True)))
    unc = report.get("uncertainty") or {}
    if unc.get("n_sets"):
        rows += [
            (f"repeated sets (>= {unc['min_repeats']} responses)", _fmt(unc["n_sets"])),
            ("human agreement with majority", _fmt(unc["noise_ceiling"], True)),
            ("human agreement, leave-one-out", _fmt(unc.get("noise_ceiling_loo"), True)),
            (f"accuracy vs majority (n={unc['n_majority']})", _fmt(unc["model_accuracy_vs_majority"], True)),
            ("KL(human || model)", _fmt(unc["kl_human_model"])),
            ("KL(human || model) 95 % interval over sets", _interval(unc.get("kl_human_model_interval"))),
            ("entropy Spearman (model vs human)", _fmt(unc["entropy_spearman"])),
        ]
    if "rsa" in report:
        r = report["rsa"]
        rows.append(("RDM metrics (model / human)", f"{r['metric']} / {r['human_metric']}"))
        for m in COMPARISONS:
            if m in r:
                rows.append((f"RSA {m}", _fmt(r[m])))
        rows.append(("linear CKA", _fmt(r.get("cka"))))
    rows += _human_rows(report)
    for probe, res in (report.get("few_shot") or {}).items():
        for k, d in res.items():
            ci = d.get("ci95")
            val = "-" if d.get("mean") is None else f"{100 * d['mean']:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
            rows.append((f"few-shot {probe} {k}-shot ({d['n_classes']} classes)", val))
    return rows


def _human_rows(report: Mapping[str, Any]) -> List[Tuple[str, str]]:
    rows: List[Tuple[str, str]] = []
    for h in report.get("human_rdms") or []:
        tag = f"{Path(str(h['source'])).name} (N={h['n_stimuli']}, S={h['n_subjects']})"
        for m in COMPARISONS:
            if m not in h:
                continue
            nc = h[m].get("noise_ceiling")
            ceil = "" if not nc else f" [ceiling {_fmt(nc['lower'])}-{_fmt(nc['upper'])}]"
            rows.append((f"human RDM {m}: pooled / subject mean, {tag}",
                         f"{_fmt(h[m]['pooled'])} / {_fmt(h[m]['subject_mean'])}{ceil}"))
    lv = report.get("levels_dataset")
    if lv:
        for name, d in lv["majority"].items():
            acc, nc = d["accuracy"], d["noise_ceiling"]
            rows.append((f"Levels dataset [{name}] majority (n={d['n_triplets']}; ceiling {_fmt(nc['mean'], True)})",
                         f"{_fmt(acc['mean'], True)} ± {_fmt(acc['std'], True)}"))
            t = lv["per_trial"][name]
            rows.append((f"Levels dataset [{name}] per trial (n={t['n']})", _fmt(t["accuracy"], True)))
    return rows


def format_table(reports: Mapping[str, Any]) -> str:
    """A plain-text table of one report, or of ``{name: report}`` side by side (rows = metrics)."""
    if "accuracy" in reports and "n_triplets" in reports:
        reports = {"value": reports}
    names = list(reports)
    columns = [dict(_rows(reports[nm])) for nm in names]
    metrics: List[str] = []
    for nm in names:
        for m, _ in _rows(reports[nm]):
            if m not in metrics:
                metrics.append(m)
    header = ["metric"] + names
    body = [[m] + [col.get(m, "-") for col in columns] for m in metrics]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body])
