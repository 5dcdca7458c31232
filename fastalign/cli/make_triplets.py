"""``fastalign make-triplets``: teacher embeddings -> k-means -> sampled, teacher-labelled triplets in a store."""

from __future__ import annotations

from ..triplets.generate import GenerateOptions, format_summary, generate


def register(sub) -> None:
    p = sub.add_parser(
        "make-triplets",
        help="generate teacher-labelled odd-one-out triplets into a triplet store (AligNet stage 2)",
        description="Cluster the (transformed) teacher embeddings, sample triplets by strategy, label them with "
        "the teacher's similarities (item 2 = the teacher's odd one out) and write a crash-safe sharded store. "
        "Rerun the same command with --resume after an interruption. Under torchrun each rank writes its own "
        "shards; the result equals a single-process run with the same seed.",
    )
    p.add_argument("--embeddings", required=True,
                   help="(N, D) teacher features: things:KEY (e.g. things:clip) or a .npy/.npz/.pt/.h5/.txt file "
                        "(FILE.npz:KEY for one of several arrays)")
    p.add_argument("--transform", help="teacher transform (.npz/.safetensors); its calibrated T sets the probabilities")
    p.add_argument("--labels", help="per-item class labels: things (THINGS objects in one category) or "
                                    ".npy/.npz/.txt (negative = no label)")
    p.add_argument("--categories",
                   help="(N, K) 0/1 multi-label category matrix for the category strategies: things (the 27 THINGS "
                        "categories) or a .npy/.tsv/.csv/.txt table, one row per embedding row (as for evaluate)")
    p.add_argument("--file-names", help="file_names.txt naming the N items, or things (copied into the store)")
    p.add_argument("--strategy", default="cluster_border",
                   help="random|between_class|within_class|class_border|cluster_border|within_category|"
                        "between_category|category_border, or a mix such as cluster_border:0.8,random:0.2 "
                        "(weights are relative: normalised to shares, with a note when they do not sum to 1; "
                        "default: cluster_border). Category strategies (need --categories; an object may be in "
                        "several categories or none; objects in none are never used): within_category = all three "
                        "share a category; between_category = no two share a category; category_border = items 0 "
                        "and 1 share a category and item 2 (the odd one out) shares none with either")
    p.add_argument("--clusters", type=int, default=500, help="k of k-means for cluster_border (default 500)")
    p.add_argument("--num", type=int, required=True, help="number of training triplets")
    p.add_argument("--out", required=True, help="store directory to create (validation store goes to OUT/val)")
    p.add_argument("--val-num", type=int, default=0, help="number of validation triplets over held-out items (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of items held out for validation (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (refused, naming the difference, when an option, the "
                        "content of an input file, the resolved backend, the device or --label-batch changed)")
    p.add_argument("--shard-size", type=int, default=1_000_000, help="triplets per shard (default 1,000,000)")
    p.add_argument("--chunk-size", type=int, default=65536, help="triplets sampled+labelled at a time (default 65536)")
    p.add_argument("--label-batch", type=int, default=4096, help="triplets per similarity kernel call (default 4096)")
    p.add_argument("--sim-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--no-probs", action="store_true", help="do not store softmax(s/T) probabilities")
    p.add_argument("--temperature", type=float, help="T of the probabilities (default: the transform's, else 1)")
    p.add_argument("--similarity", choices=("dot", "cosine"), default="dot")
    p.add_argument("--weighting", choices=("size", "uniform"), default="size",
                   help="pick labels proportionally to their size (default) or uniformly")
    p.add_argument("--kmeans-iters", type=int, default=25)
    p.add_argument("--kmeans-normalize", action="store_true", help="L2-normalise teacher embeddings before k-means")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--emb-dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="dtype of the teacher embeddings on the device (default float32)")
    p.add_argument("--backend", help="similarity kernel backend (default: automatic)")
    p.add_argument("--no-histogram", action="store_true", help="skip the teacher-entropy histogram PNG (skipped anyway without matplotlib: "
                        "pip install 'fastalign[report]')")
    p.add_argument("--quiet", action="store_true", help="no progress and no summary: print only the store's path")
    p.set_defaults(func=_run)


def _run(args) -> int:
    opts = GenerateOptions(
        embeddings=args.embeddings, out=args.out, num=args.num, strategy=args.strategy, clusters=args.clusters,
        labels=args.labels, categories=args.categories, transform=args.transform, file_names=args.file_names, val_num=args.val_num,
        val_fraction=args.val_fraction, seed=args.seed, resume=args.resume, shard_size=args.shard_size,
        chunk_size=args.chunk_size, label_batch=args.label_batch, sim_dtype=args.sim_dtype, with_probs=not args.no_probs,
        temperature=args.temperature, similarity=args.similarity, weighting=args.weighting,
        kmeans_iters=args.kmeans_iters, kmeans_normalize=args.kmeans_normalize, device=args.device, emb_dtype=args.emb_dtype,
        backend=args.backend, histogram=not args.no_histogram, progress=not args.quiet,
    )
    summary = generate(opts)
    if summary.rank == 0:
        print(args.out if args.quiet else format_summary(summary))
    return 0
