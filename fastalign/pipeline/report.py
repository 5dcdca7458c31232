"""The run's report: four representations scored on held-out human triplets,
``report.md`` (tables and a short reading), ``report.json`` (every number) and
the figures."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..common.category_levels import single_category_labels
from ..distill.metrics import plot_curves
from ..eval.calibration import fit_temperature
from ..eval.few_shot import FewShotOptions
from ..eval.human_plots import plot_human_rdms, plot_levels_dataset
from ..eval.levels_data import LevelsOptions
from ..eval.plots import plot_accuracy_by_level, plot_rdm_panel
from ..eval.report import EvalOptions, evaluate_representations
from ..io import atomic_write_json, atomic_write_text
from ..io.atomic import TMP_PREFIX

LEVELS = ("fine", "class_boundary", "coarse")
# The student stage's eval.human_triplets are the calibration split (pipeline.run.student_config).
CURVE_TITLES = {"human_acc": "odd-one-out accuracy on the training-side\ncalibration human triplets (%)"}


# How every representation's temperature is obtained (report.json ``temperature_fit.method``).
TEMPERATURE_METHOD = ("one softmax temperature fitted by the NLL of the training-side calibration triplets "
                      "(fastalign.teacher.calibrate_temperature, as the teacher stage calibrates the teacher)")


def _temperature_fit(emb: np.ndarray, similarity: str, calibration: np.ndarray) -> Dict[str, Any]:
    """The temperature a representation is scored at, and how it was fitted."""
    if len(calibration) == 0:
        return {"temperature": 1.0, "method": "T = 1: the run has no calibration triplets", "split": None, "n": 0}
    fit = fit_temperature(emb, calibration, similarity)
    return {"temperature": fit.temperature, "method": TEMPERATURE_METHOD, "split": "calibration",
            **{k: v for k, v in fit.to_dict().items() if k != "temperature"}}


def _representations(cfg, inputs, out: Path, calibration: np.ndarray) -> Dict[str, Dict[str, Any]]:
    """name -> embedding, similarity, and the temperature its calibration measures use.

    Every temperature is fitted the same way on the same training-side calibration triplets, so
    NLL, ECE and the KL to human choices compare the representations, not their temperatures.
    """
    teacher_report = json.loads((out / "teacher" / "report.json").read_text())
    reps: Dict[str, Dict[str, Any]] = {
        "raw teacher features": {"emb": inputs.teacher, "similarity": "cosine"},
        "teacher": {"emb": np.load(out / "embeddings" / "teacher.npy"), "similarity": "dot"},
        # An image student's raw representation is its backbone before distillation.
        "raw student features": {"emb": inputs.student if inputs.student is not None
                                 else np.load(out / "embeddings" / "student_raw.npy"),
                                 "similarity": "cosine"},
        "student": {"emb": np.load(out / "embeddings" / "student.npy"), "similarity": "dot"},
    }
    for rep in reps.values():
        rep["temperature_fit"] = _temperature_fit(rep["emb"], rep["similarity"], calibration)
        rep["temperature"] = rep["temperature_fit"]["temperature"]
    # For the record: the temperatures the stages themselves used.
    teacher_cal = teacher_report.get("calibration")
    reps["teacher"]["temperature_fit"]["teacher_stage_temperature"] = (
        float(teacher_cal["temperature"]) if teacher_cal else None)
    reps["student"]["temperature_fit"]["training_temperature"] = float(cfg.student.loss.temperature)
    return reps


def _measured_human_figures(results: Dict[str, Dict[str, Any]], fig_dir: Path) -> List[Path]:
    """RSA against measured human RDMs (one figure per representation) and the Levels dataset."""
    figures = []
    for name, r in results.items():
        if r.get("human_rdms"):
            slug = name.replace(" ", "_")
            figures.append(plot_human_rdms(r["human_rdms"], fig_dir / f"human_rdms_{slug}.png", model_name=name))
    levels = {name: r["levels_dataset"] for name, r in results.items() if r.get("levels_dataset")}
    if levels:
        figures.append(plot_levels_dataset(levels, fig_dir / "levels_dataset.png"))
    return [f for f in figures if f is not None]


def _metric_rows(path: Path) -> List[Dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line from a kill
    return rows


def _distillation_curves(out: Path, path: Path) -> Optional[Path]:
    """The student's training curves, their human accuracy named as the calibration triplets it is on
    (the stage monitors the training-side calibration split, never the held-out one)."""
    logs = sorted((out / "student").rglob("metrics.jsonl"))
    if logs:
        return plot_curves(_metric_rows(logs[0]), path, labels=CURVE_TITLES)
    curves = sorted((out / "student").rglob("*.png"))
    if not curves:
        return None
    shutil.copyfile(curves[0], path)
    return path


def _remove_report_temps(out: Path) -> None:
    """The named temp files (``.tmp-report.*.PID``) a killed earlier write of the report left behind."""
    for path in list(out.glob(f"{TMP_PREFIX}report.json.*")) + list(out.glob(f"{TMP_PREFIX}report.md.*")):
        path.unlink(missing_ok=True)


def write_report(cfg, inputs, out: Path, stage_dir: Path, runner, say, progress: bool = True):
    start = time.perf_counter()
    out = Path(out)
    with np.load(out / "data" / "human_triplets.npz") as z:
        held, calibration = z["heldout"], z["calibration"]
    labels = single_category_labels(inputs.categories) if inputs.categories is not None else None
    opts = EvalOptions(ceiling=cfg.eval.ceiling,
                       few_shot=FewShotOptions(shots=tuple(cfg.eval.few_shot_shots),
                                               episodes=cfg.eval.few_shot_episodes, seed=cfg.data.seed),
                       category_levels_name=("THINGS category levels" if cfg.data.categories in ("things", "things:categories")
                                             else "category levels"),
                       rdm_seed=cfg.data.seed, rdm_bootstrap=cfg.eval.rdm_bootstrap,
                       uncertainty_seed=cfg.data.seed,
                       levels_data=LevelsOptions(seed=cfg.data.seed, allow_missing=cfg.data.allow_missing))
    reps = _representations(cfg, inputs, out, calibration)
    say("  temperatures fitted on " + f"{len(calibration)} calibration triplets: "
        + ", ".join(f"{name} {rep['temperature']:.3g}" for name, rep in reps.items()))
    measure_seconds: Dict[str, Dict[str, float]] = {}

    def measured(name: str, measure: str, seconds: float) -> None:
        measure_seconds.setdefault(name, {})[measure] = seconds

    say(f"  evaluating {len(reps)} representations: {', '.join(reps)}")
    # One call for all four: the human RDM, the triplets' levels and such are computed once.
    results: Dict[str, Dict[str, Any]] = evaluate_representations(
        {name: {"emb": rep["emb"], "similarity": rep["similarity"], "temperature": rep["temperature"],
                "rdm_metric": rep["similarity"]} for name, rep in reps.items()}, held,
        categories=inputs.categories, human_rdm_emb=inputs.human, few_shot_labels=labels,
        human_rdms=inputs.human_rdms, human_rdm_items=inputs.human_rdm_items,
        levels_data=inputs.levels_data, file_names=inputs.file_names or None,
        options=opts, progress=progress, on_measure=measured)
    for name, rep in reps.items():
        results[name]["temperature_fit"] = rep["temperature_fit"]
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures: List[Path] = []
    if inputs.categories is not None:
        level_results = {name: r["levels"]["accuracy"] for name, r in results.items()}
        figures.append(plot_accuracy_by_level(level_results, fig_dir / "accuracy_by_level.png",
                                              ceiling=cfg.eval.ceiling,
                                              title=f"Held-out odd-one-out accuracy by {opts.category_levels_name}"))
        if inputs.human is not None:
            # Before and after each stage: the teacher transforms its features, the student learns from it.
            shown = ("teacher", "raw student features", "student")
            figures.append(plot_rdm_panel(inputs.human, [reps[k]["emb"] for k in shown], inputs.categories,
                                          fig_dir / "rdm_panel.png", human_metric="dot",
                                          model_metric=[reps[k]["similarity"] for k in shown],
                                          # SPoSE is a model of human judgements, not a measured RDM: say so.
                                          titles=(f"human similarity model ({cfg.data.human_embedding})", *shown),
                                          category_names=inputs.category_names))
    figures += _measured_human_figures(results, fig_dir)
    for src, dst in [(out / "teacher" / "reliability.png", "teacher_reliability.png"),
                     (out / "teacher" / "lambda_search.png", "teacher_lambda_search.png")]:
        if src.exists():
            shutil.copyfile(src, fig_dir / dst)
            figures.append(fig_dir / dst)
    figures.append(_distillation_curves(out, fig_dir / "distillation_curves.png"))
    stages = {name: {"seconds": r.seconds, "cached": r.cached, "metrics": r.metrics}
              for name, r in runner.results.items()}
    # The report is written inside the evaluation stage, so its row holds the time up to this point.
    stages.setdefault("evaluate", {"seconds": time.perf_counter() - start, "cached": False, "metrics": {},
                                   "measure_seconds": measure_seconds})
    fit = (runner.results["teacher"].metrics.get("fit") or {}) if "teacher" in runner.results else {}
    figures = [f for f in figures if f]  # a figure is None where it was skipped (no matplotlib)
    report = {"config": cfg.to_dict(), "heldout_triplets": int(len(held)), "results": results, "stages": stages,
              "figures": [f.relative_to(out).as_posix() for f in figures],
              "teacher_fit": {"recipe": fit.get("recipe", "human"), "selection": fit.get("selection"),
                              "extensions": fit.get("extensions", []), "bracketed": fit.get("bracketed"),
                              "chosen": fit.get("chosen"), "similarity_model": cfg.data.human_embedding}}
    _remove_report_temps(out)
    atomic_write_json(out / "report.json", report, named_tmp=True)
    atomic_write_text(out / "report.md", render_markdown(report), named_tmp=True)
    summary = {name: {"accuracy": r["accuracy"], "noise_ceiling_normalized": r["noise_ceiling_normalized"]}
               for name, r in results.items()}
    return [out / "report.json", out / "report.md", *figures], summary


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _num(v, fmt=".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _measured_human_markdown(res: Dict[str, Dict[str, Any]]) -> List[str]:
    """Tables for the measured human RDMs and the Levels dataset, when the run had them."""
    lines: List[str] = []
    rdm_rows = [(n, e) for n, r in res.items() for e in (r.get("human_rdms") or [])]
    if rdm_rows:
        lines += ["", "## Measured human RDMs", "",
                  "Spearman between the model RDM and the measured human RDMs: against the pooled RDM, and the "
                  "mean over subjects with its noise ceiling (lower-upper; Nili et al. 2014).", "",
                  "| representation | RDM | subjects | stimuli | pooled | subject mean | noise ceiling |",
                  "|---|---|---|---|---|---|---|"]
        for n, e in rdm_rows:
            sp = (e.get("measures") or e).get("spearman", {})
            nc = sp.get("noise_ceiling") or {}
            ceiling = f"{_num(nc.get('lower'))}-{_num(nc.get('upper'))}" if nc else "n/a"
            lines.append(f"| {n} | {e.get('source', '')} | {e.get('n_subjects')} | {e.get('n_stimuli')} | "
                         f"{_num(sp.get('pooled'))} | {_num(sp.get('subject_mean'))} | {ceiling} |")
    lv_rows = [(n, r["levels_dataset"]) for n, r in res.items() if r.get("levels_dataset")]
    if lv_rows:
        lines += ["", "## The Levels dataset", "",
                  "Majority-vote accuracy (%) per level, mean over seeded response draws, with the level's noise "
                  "ceiling from repeated responses.", "",
                  "| representation | level | accuracy | SD | noise ceiling |", "|---|---|---|---|---|"]
        for n, lv in lv_rows:
            for level, entry in (lv.get("majority") or {}).items():
                acc, ceil = entry.get("accuracy") or {}, entry.get("noise_ceiling") or {}
                lines.append(f"| {n} | {level} | {_pct(acc.get('mean'))} | {_pct(acc.get('std'))} | "
                             f"{_pct(ceil.get('mean'))} |")
    return lines


def _five_shot(r: Dict[str, Any]) -> Dict[str, Any]:
    few = (r.get("few_shot") or {}).get("centroid") or {}
    return few.get("5") or few.get(5) or {}


def _kl_cell(unc: Dict[str, Any]) -> str:
    """Two decimals and the bootstrap interval: a few repeated sets do not carry a third decimal."""
    if not unc.get("n_sets"):
        return "n/a (no repeats)"
    ci = (unc.get("kl_human_model_interval") or {}).get("ci95")
    return _num(unc.get("kl_human_model"), ".2f") + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


# Below this many repeated object sets the KL only indicates, it does not rank.
FEW_SETS = 30


def _calibration_notes(res: Dict[str, Dict[str, Any]], fives: Dict[str, Dict[str, Any]]) -> List[str]:
    """What the calibration table's temperature, KL and few-shot columns are."""
    fits = [r.get("temperature_fit") or {} for r in res.values()]
    notes = []
    n_cal = max((f.get("n") or 0 for f in fits), default=0)
    if n_cal:
        student = (res.get("student") or {}).get("temperature_fit") or {}
        trained = student.get("training_temperature")
        notes.append(f"T: one softmax temperature per representation, fitted by the NLL of the {n_cal} "
                     "training-side calibration triplets (as the teacher stage calibrates the teacher), never on "
                     "the held-out ones. NLL, ECE and the KL use it; accuracy, RSA, CKA and few-shot do not depend "
                     "on it." + (f" The student was trained at T = {trained:g}." if trained is not None else ""))
    else:
        notes.append("T = 1 for every representation: the run has no calibration triplets to fit it on.")
    unc = next((r["uncertainty"] for r in res.values() if (r.get("uncertainty") or {}).get("n_sets")), None)
    if unc:
        iv = unc.get("kl_human_model_interval") or {}
        line = (f"KL: mean KL(human || model) in nats over the {unc['n_sets']} held-out object sets with at least "
                f"{unc.get('min_repeats', 2)} responses")
        line += (f", with a 95 % percentile-bootstrap interval over the sets ({iv['bootstrap']} resamples)."
                 if iv.get("ci95") else ".")
        if unc["n_sets"] < FEW_SETS:
            line += f" With {unc['n_sets']} sets it is indicative only: rows whose intervals overlap are not ranked by it."
        notes.append(line)
    few = next((f for f in fives.values() if f.get("n_classes")), None)
    if few:
        notes.append(f"5-shot centroid: nearest-centroid classification (balanced accuracy, mean of "
                     f"{few.get('episodes')} episodes) of the {few['n_classes']} categories with at least 6 objects "
                     f"in that category alone; chance is 1/{few['n_classes']} = {_pct(1 / few['n_classes'])} %.")
    return notes


def render_markdown(report: Dict[str, Any]) -> str:
    res = report["results"]
    names = list(res)
    lines = ["# fastalign run report", "",
             f"Scored on {report['heldout_triplets']} held-out human triplets that no stage trained, "
             "calibrated or selected on.", ""]
    lines += ["## Odd-one-out accuracy", "",
              "| representation | accuracy (%) | noise-ceiling normalised | fine | class boundary | coarse |",
              "|---|---|---|---|---|---|"]
    for n in names:
        r = res[n]
        lv = (r.get("levels") or {}).get("accuracy", {})
        cells = [_pct((lv.get(k) or {}).get("accuracy")) for k in LEVELS]
        lines.append(f"| {n} | {_pct(r['accuracy'])} | {_num(r['noise_ceiling_normalized'])} | " + " | ".join(cells)
                     + " |")
    lines += ["", "Chance is 33.3 %; the THINGS noise ceiling is about 67 %. THINGS category levels (derived from "
              "the 27 THINGS categories, not the Levels dataset): *fine* = all three objects share a category, *class boundary* = exactly one pair does, "
              "*coarse* = no pair does.", ""]
    tf = report.get("teacher_fit") or {}
    dense = tf.get("recipe") == "dense"
    model = tf.get("similarity_model") or "SPoSE"
    rsa_head = (f"agreement with {model}, the similarity model the teacher was fitted to (RSA Spearman)" if dense
                else f"RSA Spearman (vs {model})")
    fives = {n: _five_shot(res[n]) for n in names}
    few_head = "5-shot centroid (%)"
    classes = {f.get("n_classes") for f in fives.values() if f}
    if len(classes) == 1 and None not in classes:
        few_head = f"5-shot centroid (%, chance {_pct(1 / next(iter(classes)))})"
    lines += ["## Calibration, human uncertainty, RSA and few-shot", "",
              f"| representation | T (fitted) | NLL | ECE | KL to repeated human choices [95 % CI] | {rsa_head} | CKA | "
              f"{few_head} |",
              "|---|---|---|---|---|---|---|---|"]
    for n in names:
        r = res[n]
        cal = r.get("calibration", {})
        rsa = r.get("rsa", {})
        spear = (rsa.get("scores") or rsa).get("spearman") if isinstance(rsa, dict) else None
        lines.append(f"| {n} | {_num(r.get('temperature'), '.3g')} | {_num(cal.get('nll'))} | {_num(cal.get('ece'))} | "
                     f"{_kl_cell(r.get('uncertainty') or {})} | {_num(spear)} | {_num(rsa.get('cka'))} | "
                     f"{_pct(fives[n].get('mean'))} |")
    for note in _calibration_notes(res, fives):
        lines += ["", note]
    lines += ["", "Held-out human accuracy is the main measure."]
    if dense:
        lines += [f"The teacher was fitted to {model}'s choice distributions, so agreement with {model} (RSA) is "
                  "not independent evidence of human alignment. SPoSE and VICE were fitted on the 2020 THINGS "
                  "triplets, some of which may recur in the 2023 files the held-out triplets come from: the "
                  "held-out accuracy may overstate what the teacher shows on unseen human data.",
                  f"Teacher lambda: {tf.get('selection')}."
                  + ("".join(f" {e}." for e in tf.get("extensions") or []))
                  + ("" if tf.get("bracketed") else " The chosen lambda is at an edge of the searched grid.")]
    else:
        lines += ["The teacher was fitted to the human triplets alone (teacher.recipe human)."]
    lines += _measured_human_markdown(res)
    t, s = res.get("teacher"), res.get("student")
    rt, rs = res.get("raw teacher features"), res.get("raw student features")
    lines += ["", "## Reading", ""]
    if t and rt and t["accuracy"] is not None and rt["accuracy"] is not None:
        lines.append(f"- The teacher transform moves the teacher features from {_pct(rt['accuracy'])} % to "
                     f"{_pct(t['accuracy'])} % held-out accuracy ({100 * (t['accuracy'] - rt['accuracy']):+.1f} points).")
    if s and rs and s["accuracy"] is not None and rs["accuracy"] is not None:
        lines.append(f"- Distilling the teacher's triplets moves the student from {_pct(rs['accuracy'])} % to "
                     f"{_pct(s['accuracy'])} % ({100 * (s['accuracy'] - rs['accuracy']):+.1f} points), "
                     "without the student ever seeing a human triplet.")
    lines += ["", "## Stages", "", "| stage | seconds | cached |", "|---|---|---|"]
    for name, st in report["stages"].items():
        lines.append(f"| {name} | {st['seconds']:.1f} | {'yes' if st['cached'] else 'no'} |")
    lines += ["", "## Figures", ""]
    # Only the figures this run wrote: a core install (no matplotlib) links none.
    shown = report.get("figures") or []
    lines += [f"![{Path(f).stem.replace('_', ' ')}]({f})" for f in shown] or [
        "No figures were drawn: matplotlib is not installed (`pip install 'fastalign[report]'`)."]
    lines.append("")
    return "\n".join(lines)
