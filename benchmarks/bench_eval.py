#!/usr/bin/env python
"""Evaluation benchmark: RDMs, Spearman / Kendall tau-a against scipy, few-shot probes and
``evaluate_representation`` on the bundled THINGS features; prints a markdown table.

    python benchmarks/bench_eval.py                                   # 1,854 and 10,000 items + THINGS
    python benchmarks/bench_eval.py --items 500 --episodes 10         # quick
    python benchmarks/bench_eval.py --items 40 --dim 4 --no-things    # smoke

A thin driver over ``fastalign.bench.eval_bench`` (formerly ``python -m fastalign.eval.bench``).

With ``--stage``, the evaluate stage of ``fastalign run`` instead, per measure, before and
after: "before" is the evaluation code of a git revision (``--before``, extracted with
``git archive`` and imported as the package ``fastalign_before``), "after" this checkout's.
The two run alternately in one process (``--rounds`` times; the table gives medians), so a
machine loaded by other work slows both alike; the load average is printed with them.

    python benchmarks/bench_eval.py --stage                           # bundled stand-ins
    python benchmarks/bench_eval.py --stage --run fastalign-run       # a finished run's four
    python benchmarks/bench_eval.py --stage --human-rdm tests/data/meadows-118/Meadows_myExp_v_v1_arrangement_1D.mat
"""

import argparse
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fastalign

import fastalign.eval as new  # noqa: E402
from fastalign.bench.eval_bench import main as eval_bench_main  # noqa: E402
from fastalign.datasets.things import load_things  # noqa: E402
from fastalign.io import atomic_write_text  # noqa: E402
from fastalign.io.rdm import read_human_rdm  # noqa: E402

# The last commit before the evaluation was made fast (issue 14).
BEFORE = "6815f51"


def _before_package(rev: str, into: Path):
    """Import the ``fastalign`` of git revision ``rev`` as ``fastalign_before``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "fastalign"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "fastalign").rename(into / "fastalign_before")
    sys.path.insert(0, str(into))
    return importlib.import_module("fastalign_before.eval")


def _representations(run_dir):
    """name -> (embedding, similarity, temperature): a finished run's four, or bundled stand-ins."""
    d = load_things()
    clip, w2v = np.array(d.features["clip"]), np.array(d.features["word2vec"])
    if run_dir is None:
        return {"raw teacher features": (clip, "cosine", 1.0), "teacher (stand-in: CLIP, dot)": (clip, "dot", 1.0),
                "raw student features": (w2v, "cosine", 1.0), "student (stand-in: word2vec, dot)": (w2v, "dot", 1.0)}
    run_dir = Path(run_dir)
    t = float(((json.loads((run_dir / "teacher" / "report.json").read_text()).get("calibration") or {})
               .get("temperature", 1.0)))
    cfg = json.loads((run_dir / "config.json").read_text())
    return {"raw teacher features": (clip, "cosine", 1.0),
            "teacher": (np.load(run_dir / "embeddings" / "teacher.npy"), "dot", t),
            "raw student features": (w2v, "cosine", 1.0),
            "student": (np.load(run_dir / "embeddings" / "student.npy"), "dot",
                        float(cfg["student"]["loss"]["temperature"]))}


def _held_out(run_dir):
    if run_dir is not None:
        with np.load(Path(run_dir) / "data" / "human_triplets.npz") as z:
            return z["heldout"]
    return np.array(load_things().triplets["test_10"])[:10000]


def _time(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _before_stage(old, reps, held, cats, human, labels, opts, rdms, timings):
    """The evaluation before, measure by measure as its ``evaluate_representation`` ran them."""
    # The 'before' package exists only once _before_package has extracted it.
    from fastalign_before.common.tensors import as_emb, as_triplets
    from fastalign_before.eval import few_shot as fs
    from fastalign_before.eval import report as rep_mod

    def add(name, fn):
        seconds, out = _time(fn)
        timings[name] = timings.get(name, 0.0) + seconds
        return out

    for emb, sim, temp in reps.values():
        o = replace(opts, rdm_metric=sim)
        e = as_emb(emb)
        t = as_triplets(held, e.shape[0], e.device)
        add("accuracy and calibration", lambda: rep_mod._accuracy_and_calibration(e, t, None, sim, temp, o, None))
        add("accuracy by level", lambda: old.accuracy_by_level(
            e, t, old.triplet_levels(t, torch.from_numpy(cats)), None, sim, old.LEVELS))
        add("human uncertainty", lambda: old.human_uncertainty(e, t, None, sim, temp, o.min_repeats))
        add("RSA and CKA", lambda: rep_mod._rsa(e, human, sim, o))
        if rdms:
            add("measured human RDMs", lambda: [old.human_rdm_report(e, h, it, sim, o.rsa_methods, o.rdm_bootstrap,
                                                                     o.rdm_seed) for h, it in rdms])
        add("few-shot", lambda: [fs.few_shot_accuracy(e, labels, options=replace(o.few_shot, probe=p))
                                 for p in o.few_shot_probes])


def _after_stage(mod, reps, held, cats, human, labels, opts, rdms, timings):
    def measured(rep, measure, seconds):
        timings[measure] = timings.get(measure, 0.0) + seconds

    mod.evaluate_representations(
        {n: {"emb": e, "similarity": s, "temperature": t, "rdm_metric": s} for n, (e, s, t) in reps.items()}, held,
        categories=cats, human_rdm_emb=human, few_shot_labels=labels, human_rdms=[h for h, _ in rdms],
        human_rdm_items=[it for _, it in rdms] or None, options=opts, on_measure=measured)


def stage(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-before-"))
    try:
        old = _before_package(args.before, tmp)
        d = load_things()
        cats, human = np.array(d.categories), np.array(d.features["spose49"])
        labels = new.single_category_labels(cats)
        reps, held = _representations(args.run), _held_out(args.run)
        rdms = []
        if args.human_rdm:
            h = read_human_rdm(args.human_rdm)
            rdms = [(h, np.arange(h.n_stimuli))]
        kinds = {"before": (old, _before_stage), "after": (new, _after_stage)}
        # One untimed call of each first: the kernel backends load on their first use.
        first = dict(list(reps.items())[:1])
        for mod, run in kinds.values():
            opts = mod.EvalOptions(few_shot=mod.FewShotOptions(shots=(1,), episodes=2), rdm_bootstrap=2)
            run(mod, first, held, cats, human, labels, opts, rdms, {})
        wall = {k: [] for k in kinds}
        per = {k: [] for k in kinds}
        load = [os.getloadavg()[0]]
        for _ in range(args.rounds):
            for kind, (mod, run) in kinds.items():
                opts = mod.EvalOptions(few_shot=mod.FewShotOptions(shots=(1, 5, 10), episodes=args.episodes),
                                       rdm_bootstrap=args.rdm_bootstrap)
                timings = {}
                seconds, _ = _time(lambda: run(mod, reps, held, cats, human, labels, opts, rdms, timings))
                wall[kind].append(seconds)
                per[kind].append(timings)
                load.append(os.getloadavg()[0])
                print(f"{kind}: {seconds:.2f} s (load {load[-1]:.2f})", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in wall.items()}
    measures = list(per["after"][0])
    lines = [f"evaluate stage, {len(reps)} representations ({'run ' + str(args.run) if args.run else 'bundled stand-ins'}), "
             f"{args.episodes} few-shot episodes, before = {args.before}: {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.rounds} alternating rounds, "
             f"load average {min(load):.2f}-{max(load):.2f}; median seconds", "",
             "| measure | before (s) | after (s) | speed-up |", "|---|---:|---:|---:|"]
    for m in measures:
        b = statistics.median(t.get(m, 0.0) for t in per["before"])
        a = statistics.median(t.get(m, 0.0) for t in per["after"])
        lines.append(f"| {m} | {b:.3f} | {a:.3f} | {b / a:.1f}x |" if a > 0 else f"| {m} | {b:.3f} | {a:.3f} | - |")
    lines.append(f"| **all measures** | **{med['before']:.2f}** | **{med['after']:.2f}** | "
                 f"**{med['before'] / med['after']:.1f}x** |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
    return 0


def main() -> int:
    if "--stage" not in sys.argv[1:]:
        return eval_bench_main(prog="bench_eval.py")
    p = argparse.ArgumentParser(prog="bench_eval.py --stage", description="the evaluate stage, before and after")
    p.add_argument("--stage", action="store_true", help="benchmark the evaluate stage, per measure")
    p.add_argument("--before", default=BEFORE, help=f"git revision of the 'before' code (default {BEFORE})")
    p.add_argument("--run", help="a finished fastalign run folder: its four representations and held-out triplets")
    p.add_argument("--episodes", type=int, default=200, help="few-shot episodes (fastalign run's default 200)")
    p.add_argument("--rounds", type=int, default=3, help="alternating before/after rounds")
    p.add_argument("--human-rdm", help="also time RSA against this measured RDM file (its rows: the first objects)")
    p.add_argument("--rdm-bootstrap", type=int, default=1000, help="stimulus resamples of the measured-RDM intervals")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", help="also write the markdown table here")
    return stage(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
