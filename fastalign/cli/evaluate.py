"""``fastalign evaluate``: score a representation against human odd-one-out choices."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch

from ..datasets.levels import load_levels
from ..distill.export import read_sidecar
from ..eval import (
    EvalOptions,
    FewShotOptions,
    LevelsOptions,
    evaluate_representation,
    fit_temperature,
    format_table,
    load_level_labels,
    plot_human_rdms,
    plot_levels_dataset,
)
from ..io import atomic_write_json, check_triplets_fit, read_file_names
from ..io.heldout import check_held_out
from ..io.rdm import read_human_rdm, read_rdm_items
from ..io.resolve import (
    is_bundled,
    resolve_categories,
    resolve_features,
    resolve_labels,
    resolve_triplets,
    rows_mismatch,
)
from ..teacher import load_transform
from .main import CLIError
from .outdir import check_out_file

EPILOG = """\
bundled THINGS data (1,854 objects) by name instead of a path:
  --features things:clip | things:word2vec | things:spose49
  --triplets things:test_10 | things:train_90_ID_smallsample | things:test_10_ID_smallsample
  --categories things        the 27-category membership matrix
  --human-embedding things   SPoSE-49 (a human similarity embedding; --rdm is an alias); or things:KEY
  --few-shot things          objects in exactly one of the 27 categories

measured human data:
  --human-rdm FILE[:VAR]     measured RDMs (.npy/.npz/.mat; one or S subjects); repeatable.
                             Spearman, Pearson and Kendall tau-a against the pooled RDM and
                             averaged over subjects, noise ceiling, bootstrap 95 % interval
                             (JSON key "human_rdms"). --rdm-items maps RDM rows to feature rows.
  --levels-data levels.pkl   the Levels dataset (AligNet); images matched by stem to
                             --file-names (JSON key "levels_dataset")

examples:
  fastalign evaluate --features things:spose49 --triplets things:test_10 --categories things
  fastalign evaluate --features things:clip --similarity cosine --triplets things:test_10 \\
      --categories things --human-embedding things --few-shot things --out clip.json
  fastalign evaluate --features feats.npy --triplets test.txt --human-rdm meadows.mat \\
      --rdm-items stimuli.txt --file-names file_names.txt --figures figs/ --out report.json
  fastalign evaluate --features feats.npy --transform run/teacher/transform.npz \\
      --triplets test.txt --out report.json
  fastalign evaluate --features student.npy --triplets test.txt    (student.npy from fastalign embed)

temperature of the probabilities (NLL, ECE): --temperature if given, else fitted on
--calibration-triplets (as fastalign run scores every representation), else the transform's,
else the one fastalign embed recorded in FEATURES.json (the student's training temperature;
its similarity too, unless --similarity is given), else 1. The line under the table and the
JSON key "temperature_source" say which.
"""


def register(sub):
    p = sub.add_parser(
        "evaluate",
        help="score a representation: accuracy, levels, uncertainty, calibration, RSA, few-shot",
        description="Evaluate an (N, D) representation on human odd-one-out triplets; print a table, "
        "optionally write every number as JSON.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--features", required=True, help="(N, D) features: .npy/.npz/.pt/.h5/.txt (FILE.npz:KEY for one of several arrays), "
                   "or things:KEY")
    p.add_argument("--file-names", help="file_names.txt giving the feature rows' names (checked against N)")
    p.add_argument("--transform", help="teacher transform (.npz/.safetensors or its folder) applied to the features")
    p.add_argument("--triplets", required=True, help="human triplets (odd one out in column 2): .txt/.npy/.npz, or things:KEY")
    p.add_argument("--categories", help="(N, K) 0/1 object categories for accuracy by level, or 'things'")
    p.add_argument("--uncategorized", choices=("distinct", "exclude"), default="distinct",
                   help="objects with no category: share nothing (distinct), or drop their triplets (exclude)")
    p.add_argument("--levels", help="per-triplet level labels (Levels-style; .npy or one label per line)")
    p.add_argument("--human-embedding", "--rdm", dest="human_embedding", metavar="EMBEDDING",
                   help="human similarity embedding for RSA and CKA (features file, 'things' or things:KEY); "
                   "--rdm is the old name")
    p.add_argument("--rdm-metric", choices=("cosine", "correlation", "euclidean", "dot"),
                   help="RDM metric of the evaluated representation (default: dot for --similarity dot, else cosine)")
    p.add_argument("--human-embedding-metric", "--human-rdm-metric", dest="human_embedding_metric",
                   choices=("cosine", "correlation", "euclidean", "dot"), default="dot",
                   help="RDM metric of the --human-embedding (default dot: SPoSE is a dot-product model); "
                   "--human-rdm-metric is the old name")
    _add_measured(p)
    p.add_argument("--few-shot", metavar="LABELS", help="class per object for few-shot probes (.npy or text), or 'things'")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10], help="support examples per class (default 1 5 10)")
    p.add_argument("--episodes", type=int, default=100, help="seeded episodes per shot count (default 100)")
    p.add_argument("--probe", choices=("centroid", "logreg", "both"), default="both", help="few-shot probe(s)")
    p.add_argument("--seed", type=int, default=0, help="few-shot episode seed")
    p.add_argument("--similarity", choices=("dot", "cosine"),
                   help="triplet similarity (default: the one recorded by fastalign embed, else dot)")
    p.add_argument("--temperature", type=float,
                   help="softmax temperature for probabilities (default: fitted on --calibration-triplets if "
                   "given, else the transform's, else the one recorded by fastalign embed, else 1)")
    p.add_argument("--calibration-triplets", metavar="FILE",
                   help="fit the temperature on these triplets (never the --triplets ones), as fastalign run's "
                   "report does for every representation")
    p.add_argument("--ceiling", type=float, default=0.67, help="human noise ceiling for the normalised score (0.67)")
    p.add_argument("--min-repeats", type=int, default=2, help="responses an object set needs for human uncertainty")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--backend", help="kernel backend (fastalign info lists them); default auto")
    p.add_argument("--out", help="write the full report as JSON here")
    p.add_argument("--figures", metavar="DIR", help="write human_rdms.png / levels_dataset.png here")
    p.add_argument("--quiet", action="store_true",
                   help="no progress; with --out print only its path instead of the table")
    p.set_defaults(func=_run)


def _add_measured(p) -> None:
    p.add_argument("--human-rdm", action="append", metavar="FILE[:VAR]",
                   help="measured human RDMs: .npy (N,N)/(S,N,N)/vectors, .npz, .mat (FILE:VAR; Meadows "
                   "exports and struct arrays); repeat for several files")
    p.add_argument("--rdm-items", action="append", metavar="FILE",
                   help="feature row of each RDM row: one index or file name per line (names need --file-names); "
                   "once for all --human-rdm files, or once per file")
    p.add_argument("--rdm-mask-nan", action="store_true",
                   help="accept NaN pairs in --human-rdm and leave them out of every comparison (default: refuse)")
    p.add_argument("--rdm-bootstrap", type=int, default=1000,
                   help="stimulus resamples for the 95%% interval of the --human-rdm correlations (0: none; 1000)")
    p.add_argument("--levels-data", metavar="PKL", help="the Levels dataset pickle (dict participant -> trials)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score the Levels trials whose images all have features; the rest are counted (default: error)")
    p.add_argument("--levels-seeds", type=int, default=10,
                   help="random draws of the Levels response subsampling; the report gives their spread (10)")
    p.add_argument("--levels-ties", choices=("half", "exclude", "wrong"), default="half",
                   help="Levels majority ties (2-2): credit 1/k for one of k tied answers (half), drop, or 0")


def _log(args, msg: str) -> None:
    if not args.quiet:
        print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def _run(args) -> int:
    _check_args(args)
    device = _device(args.device)
    inputs = _load_inputs(args)  # every input loaded and checked before any long work starts
    similarity = args.similarity or inputs["recorded"].get("similarity", "dot")
    emb, temperature, source = _representation(inputs, args, device, similarity)
    _log(args, f"temperature {temperature:g}: {source}")
    n = emb.shape[0]
    _log(args, f"evaluating {n} objects x {emb.shape[1]} dims on {inputs['triplets'].shape[0]} triplets")
    report = evaluate_representation(
        emb, inputs["triplets"], categories=inputs["categories"], levels=inputs["levels"],
        human_rdm_emb=inputs["human"], few_shot_labels=inputs["labels"], human_rdms=inputs["human_rdms"],
        human_rdm_items=inputs["rdm_items"], levels_data=inputs["levels_data"], file_names=inputs["file_names"],
        similarity=similarity, temperature=temperature, options=_options(args), backend=args.backend,
    )
    report["temperature_source"] = source
    report["inputs"] = {
        "features": args.features, "transform": args.transform, "triplets": args.triplets,
        "categories": args.categories, "category_names": inputs["category_names"], "levels": args.levels,
        "human_embedding": args.human_embedding, "human_rdm": args.human_rdm, "rdm_items": args.rdm_items,
        "levels_data": args.levels_data, "few_shot": args.few_shot,
    }
    if not (args.quiet and args.out):
        print(format_table(report))
    if not args.quiet:
        print(f"temperature {temperature:g}: {source}")
    if args.out:
        atomic_write_json(args.out, report)
        if args.quiet:
            print(args.out)
        _log(args, f"wrote {args.out}")
    if args.figures:
        _write_figures(args, report, args.figures, args.features)
    return 0


def _check_args(args) -> None:
    if args.out:
        check_out_file("--out", args.out, ".json")
    if args.episodes < 2:
        raise CLIError("--episodes must be >= 2")
    if args.rdm_bootstrap < 0 or args.levels_seeds < 1:
        raise CLIError("--rdm-bootstrap must be >= 0 and --levels-seeds >= 1")
    if any(k < 1 for k in args.shots):
        raise CLIError("--shots must be positive")


def _device(spec: str) -> torch.device:
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise CLIError(f"--device {spec!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda, but no CUDA device is available")
    return device


def _load_inputs(args) -> Dict[str, Any]:
    """Features, triplets and every optional input, each checked against the features' objects."""
    _log(args, f"loading features {args.features}")
    feats = resolve_features(args.features, args.file_names)
    n = feats.shape[0]
    triplets = resolve_triplets(args.triplets)
    if len(triplets) == 0:
        raise CLIError(f"--triplets {args.triplets}: holds no triplets")
    check_triplets_fit(triplets, n, name=args.triplets)
    categories, cat_names = resolve_categories(args.categories, n=n) if args.categories else (None, None)
    levels = None
    if args.levels:
        levels = load_level_labels(args.levels)
        if levels.shape[0] != triplets.shape[0]:
            raise CLIError(f"--levels has {levels.shape[0]} labels but there are {triplets.shape[0]} triplets")
    human = None
    if args.human_embedding:
        human = resolve_features(args.human_embedding, default="spose49")
        if human.shape[0] != n:
            raise CLIError(rows_mismatch(("--human-embedding", args.human_embedding, human.shape[0]),
                                         ("--features", args.features, n)))
    file_names = read_file_names(args.file_names) if args.file_names else None
    human_rdms, rdm_items = _load_human_rdms(args, n, file_names)
    labels = resolve_labels(args.few_shot, n=n)[0] if args.few_shot else None
    if labels is not None:
        _check_shots(args.shots, labels, args.few_shot)
    calibration = None
    if args.calibration_triplets:
        calibration = resolve_triplets(args.calibration_triplets)
        if len(calibration) == 0:
            raise CLIError(f"--calibration-triplets {args.calibration_triplets}: holds no triplets")
        check_triplets_fit(calibration, n, name=args.calibration_triplets)
        # The temperature must not be fitted on the triplets it is then scored on.
        check_held_out("--triplets", args.triplets, triplets, "calibration triplets", args.calibration_triplets,
                       calibration)
    return {"features": feats, "triplets": triplets, "calibration": calibration,
            "categories": categories, "category_names": cat_names,
            "levels": levels, "human": human, "file_names": file_names, "human_rdms": human_rdms,
            "rdm_items": rdm_items, "levels_data": _load_levels_data(args, file_names), "labels": labels,
            "recorded": _recorded(args)}


def _check_shots(shots, labels: np.ndarray, spec: str) -> None:
    """CLIError for a shot count no two classes can serve: an episode needs two classes with
    ``shots + 1`` objects each (one left to query), else its row of the table is empty."""
    sizes = np.sort(np.unique(labels[labels >= 0], return_counts=True)[1])[::-1]
    usable = int(sizes[1]) - 1 if len(sizes) >= 2 else 0
    too_many = [k for k in shots if k > usable]
    if not too_many:
        return
    if usable < 1:
        raise CLIError(f"--few-shot {spec}: no two classes have 2 or more objects; few-shot needs two classes "
                       "with shots + 1 objects each")
    k = max(too_many)
    raise CLIError(f"--shots {k}: fewer than two classes of --few-shot {spec} have {k + 1} objects (shots + 1, "
                   f"one left to query); the largest usable --shots is {usable}")


def _recorded(args) -> Dict[str, Any]:
    """What fastalign embed recorded beside the features file (FEATURES.json), or {}. It describes
    the file's own space, not the space of a --transform applied to it."""
    if is_bundled(args.features) or args.transform:
        return {}
    info, note = read_sidecar(args.features)
    if note:
        print(f"fastalign evaluate: warning: {note}", file=sys.stderr)
    return info or {}


def _representation(inputs: Dict[str, Any], args, device: torch.device,
                    similarity: str) -> Tuple[torch.Tensor, float, str]:
    """The evaluated embeddings (the features, or the teacher transform applied to them), their
    temperature (``--temperature``, else fitted on ``--calibration-triplets``, else the transform's,
    else the recorded one, else 1) and where that temperature came from, in words."""
    feats = inputs["features"]
    emb = torch.from_numpy(np.ascontiguousarray(feats)).to(device)
    temperature, source = args.temperature, "--temperature"
    if args.transform:
        d = feats.shape[1]
        transform = load_transform(args.transform, dim_in=d).to(device)
        with torch.no_grad():
            emb = transform(emb)
        if temperature is None:
            temperature, source = float(transform.temperature), f"the transform's ({args.transform})"
        _log(args, f"applied transform {args.transform}: D={d} -> {emb.shape[1]}")
    if args.temperature is None and inputs["calibration"] is not None:
        fit = fit_temperature(emb, inputs["calibration"], similarity, backend=args.backend)
        temperature = fit.temperature
        source = (f"fitted on {len(inputs['calibration']):,} calibration triplets ({args.calibration_triplets}; "
                  f"NLL {fit.nll_before:.3f} at T = 1 -> {fit.nll_after:.3f})")
    recorded = inputs["recorded"]
    if temperature is None and recorded:
        temperature = float(recorded["temperature"])
        source = f"the student's training temperature, recorded in {args.features}.json by fastalign embed"
    if temperature is None:
        temperature, source = 1.0, "the default (no --temperature, transform or recorded temperature)"
    return emb, temperature, source


def _options(args) -> EvalOptions:
    probes = ("centroid", "logreg") if args.probe == "both" else (args.probe,)
    category_name = "THINGS category levels" if args.categories in ("things", "things:categories") else "category levels"
    return EvalOptions(
        ceiling=args.ceiling,
        min_repeats=args.min_repeats,
        uncategorized=args.uncategorized,
        rdm_metric=args.rdm_metric,
        human_rdm_metric=args.human_embedding_metric,
        few_shot_probes=probes,
        few_shot=FewShotOptions(shots=tuple(args.shots), episodes=args.episodes, seed=args.seed),
        show_progress=not args.quiet,
        category_levels_name=category_name,
        rdm_bootstrap=args.rdm_bootstrap,
        rdm_seed=args.seed,
        levels_data=LevelsOptions(n_seeds=args.levels_seeds, seed=args.seed, ties=args.levels_ties,
                                  allow_missing=args.allow_missing),
    )


def _load_human_rdms(args, n: int, file_names):
    """Read every --human-rdm and its --rdm-items before any long work starts."""
    specs = args.human_rdm or []
    items = args.rdm_items or []
    if items and not specs:
        raise CLIError("--rdm-items needs --human-rdm")
    if len(items) not in (0, 1, len(specs)):
        raise CLIError(f"give --rdm-items once, or once per --human-rdm ({len(specs)}), not {len(items)} times")
    rdms, maps = [], []
    for i, spec in enumerate(specs):
        _log(args, f"loading human RDM {spec}")
        try:
            h = read_human_rdm(spec, allow_nan=args.rdm_mask_nan)
        except ImportError as exc:  # scipy (for .mat) is optional: say so in one line
            raise CLIError(str(exc)) from None
        item = items[0] if len(items) == 1 else (items[i] if items else None)
        maps.append(None if item is None else read_rdm_items(item, h.n_stimuli, n, file_names))
        if item is None and h.n_stimuli != n:
            raise CLIError(f"--human-rdm {spec} is over {h.n_stimuli} stimuli but the features have {n} rows; "
                           "map them with --rdm-items")
        rdms.append(h)
    return rdms, maps


def _load_levels_data(args, file_names):
    if not args.levels_data:
        return None
    if file_names is None:
        raise CLIError("--levels-data matches images to feature rows by file stem: give --file-names")
    _log(args, f"loading the Levels dataset {args.levels_data}")
    return load_levels(args.levels_data)


def _write_figures(args, report, folder: str, model_name: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if report.get("human_rdms"):
        p = plot_human_rdms(report["human_rdms"], out / "human_rdms.png", model_name=Path(model_name).name)
        if p:
            _log(args, f"wrote {p}")
    if report.get("levels_dataset"):
        p = plot_levels_dataset({Path(model_name).name: report["levels_dataset"]}, out / "levels_dataset.png")
        if p:
            _log(args, f"wrote {p}")
