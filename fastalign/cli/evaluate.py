"""``fastalign evaluate``: score a representation against human odd-one-out choices."""

from __future__ import annotations

import sys

EPILOG = """\
bundled THINGS data (1,854 objects) by name instead of a path:
  --features things:clip | things:word2vec | things:spose49
  --triplets things:test_10 | things:train_90_ID_smallsample | things:test_10_ID_smallsample
  --categories things        the 27-category membership matrix
  --rdm things               SPoSE-49 (human similarity embedding); or things:KEY
  --few-shot things          objects in exactly one of the 27 categories

examples:
  fastalign evaluate --features things:spose49 --triplets things:test_10 --categories things
  fastalign evaluate --features things:clip --similarity cosine --triplets things:test_10 \\
      --categories things --rdm things --few-shot things --out clip.json
  fastalign evaluate --features feats.npy --transform run/teacher/transform.npz \\
      --triplets test.txt --out report.json
"""


def register(sub):
    import argparse

    p = sub.add_parser(
        "evaluate",
        help="score a representation: accuracy, levels, uncertainty, calibration, RSA, few-shot",
        description="Evaluate an (N, D) representation on human odd-one-out triplets; print a table, "
        "optionally write every number as JSON.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--features", required=True, help="(N, D) features: .npy/.npz/.pt/.h5/.txt, or things:KEY")
    p.add_argument("--file-names", help="file_names.txt giving the feature rows' names (checked against N)")
    p.add_argument("--transform", help="teacher transform (.npz/.safetensors or its folder) applied to the features")
    p.add_argument("--triplets", required=True, help="human triplets (odd one out in column 2): .txt/.npy/.npz, or things:KEY")
    p.add_argument("--categories", help="(N, K) 0/1 object categories for accuracy by level, or 'things'")
    p.add_argument("--uncategorized", choices=("distinct", "exclude"), default="distinct",
                   help="objects with no category: share nothing (distinct), or drop their triplets (exclude)")
    p.add_argument("--levels", help="per-triplet level labels (Levels-style; .npy or one label per line)")
    p.add_argument("--rdm", help="human reference embedding for RSA and CKA (features file, 'things' or things:KEY)")
    p.add_argument("--rdm-metric", choices=("cosine", "correlation", "euclidean", "dot"),
                   help="RDM metric of the evaluated representation (default: dot for --similarity dot, else cosine)")
    p.add_argument("--human-rdm-metric", choices=("cosine", "correlation", "euclidean", "dot"), default="dot",
                   help="RDM metric of the --rdm embedding (default dot: SPoSE is a dot-product model)")
    p.add_argument("--few-shot", metavar="LABELS", help="class per object for few-shot probes (.npy or text), or 'things'")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10], help="support examples per class (default 1 5 10)")
    p.add_argument("--episodes", type=int, default=100, help="seeded episodes per shot count (default 100)")
    p.add_argument("--probe", choices=("centroid", "logreg", "both"), default="both", help="few-shot probe(s)")
    p.add_argument("--seed", type=int, default=0, help="few-shot episode seed")
    p.add_argument("--similarity", choices=("dot", "cosine"), default="dot", help="triplet similarity (default dot)")
    p.add_argument("--temperature", type=float,
                   help="softmax temperature for probabilities (default: the transform's, else 1)")
    p.add_argument("--ceiling", type=float, default=0.67, help="human noise ceiling for the normalised score (0.67)")
    p.add_argument("--min-repeats", type=int, default=2, help="responses an object set needs for human uncertainty")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--backend", help="kernel backend (see `fastalign info`); default auto")
    p.add_argument("--out", help="write the full report as JSON here")
    p.set_defaults(func=_run)


def _log(msg: str) -> None:
    print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def _run(args):
    # The command's stack is imported when it runs, so that `fastalign --help` never waits for torch.
    import numpy as np
    import torch

    from ..eval import EvalOptions, FewShotOptions, evaluate_representation, format_table, load_level_labels
    from ..io import atomic_write_json, check_triplets_fit
    from ..teacher import load_transform
    from ..io.resolve import resolve_categories, resolve_features, resolve_labels, resolve_triplets
    from .main import CLIError

    if args.episodes < 2:
        raise CLIError("--episodes must be >= 2")
    if any(k < 1 for k in args.shots):
        raise CLIError("--shots must be positive")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise CLIError(f"--device {args.device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda, but no CUDA device is available")

    # Load and check every input before any long work starts.
    _log(f"loading features {args.features}")
    feats = resolve_features(args.features, args.file_names)
    n, d = feats.shape
    triplets = resolve_triplets(args.triplets)
    check_triplets_fit(triplets, n, name=args.triplets)
    categories = cat_names = None
    if args.categories:
        categories, cat_names = resolve_categories(args.categories, n=n)
    levels = None
    if args.levels:
        levels = load_level_labels(args.levels)
        if levels.shape[0] != triplets.shape[0]:
            raise CLIError(f"--levels has {levels.shape[0]} labels but there are {triplets.shape[0]} triplets")
    human = None
    if args.rdm:
        human = resolve_features(args.rdm, default="spose49")
        if human.shape[0] != n:
            raise CLIError(f"--rdm has {human.shape[0]} rows but the features have {n}")
    labels = None
    if args.few_shot:
        labels, _ = resolve_labels(args.few_shot, n=n)

    emb = torch.from_numpy(np.ascontiguousarray(feats)).to(device)
    temperature = args.temperature
    if args.transform:
        transform = load_transform(args.transform, dim_in=d).to(device)
        with torch.no_grad():
            emb = transform(emb)
        if temperature is None:
            temperature = float(transform.temperature)
        _log(f"applied transform {args.transform}: D={d} -> {emb.shape[1]}")
    if temperature is None:
        temperature = 1.0

    probes = ("centroid", "logreg") if args.probe == "both" else (args.probe,)
    opts = EvalOptions(
        ceiling=args.ceiling,
        min_repeats=args.min_repeats,
        uncategorized=args.uncategorized,
        rdm_metric=args.rdm_metric,
        human_rdm_metric=args.human_rdm_metric,
        few_shot_probes=probes,
        few_shot=FewShotOptions(shots=tuple(args.shots), episodes=args.episodes, seed=args.seed),
        show_progress=True,
    )
    _log(f"evaluating {n} objects x {emb.shape[1]} dims on {triplets.shape[0]} triplets")
    report = evaluate_representation(
        emb,
        triplets,
        categories=categories,
        levels=levels,
        human_rdm_emb=human,
        few_shot_labels=labels,
        similarity=args.similarity,
        temperature=temperature,
        options=opts,
        backend=args.backend,
    )
    report["inputs"] = {
        "features": args.features, "transform": args.transform, "triplets": args.triplets,
        "categories": args.categories, "category_names": cat_names, "levels": args.levels,
        "rdm": args.rdm, "few_shot": args.few_shot,
    }
    print(format_table(report))
    if args.out:
        atomic_write_json(args.out, report)
        _log(f"wrote {args.out}")
    return 0
