"""Benchmark outputs: ``results.json``, ``table.md`` and ``plot.png`` (drawn by ``plot.py``).

All three are written atomically (temp file, fsync, rename), so a run killed
mid-way leaves the last complete version. ``report.main([DIR])`` (or
``python -c 'from fastalign.bench.report import main; main(["DIR"])'``)
rebuilds the table and the plot from ``DIR/results.json``; the device check
does this when the benchmark ran out of time.

Speed-ups: every ok row gets ``vs_eager`` / ``vs_compile`` = baseline time /
this time for the same case and phase (> 1 is faster than the baseline).
A measurement whose (p80 - p20) / median exceeds ``timing.HIGH_VARIANCE`` is
marked "noisy" in the table: the machine's load moved it, so rerun it before
quoting it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..common.jsonsafe import json_safe
from ..io.atomic import atomic_write_json, atomic_write_text
from .plot import plot_results
from .timing import HIGH_VARIANCE, is_noisy

RESULTS, TABLE, PLOT = "results.json", "table.md", "plot.png"

# The issue's targets for the headline case (fused fwd+bwd of the distillation
# loss at N=1.28M, D=1152, B=10M, bf16, on an H200).
TARGET_FRAC_COPY_BW = 0.60
TARGET_VS_EAGER = 5.0
TARGET_VS_COMPILE = 1.5
TARGET_BACKEND_SPREAD = 0.20


def _key(row: dict) -> Tuple:
    return (row.get("group"), row.get("label"), row.get("phase"))


def add_speedups(rows: List[dict]) -> None:
    """Fill ``vs_eager`` and ``vs_compile`` for every ok row (in place)."""
    base: Dict[Tuple, Dict[str, float]] = {}
    for r in rows:
        if r.get("status") == "ok":
            impl = r["impl"]
            name = "eager" if impl in ("eager", "unfused-eager") else (
                "compile" if impl.startswith("compile") or impl.startswith("unfused-compile") else None)
            if name:
                base.setdefault(_key(r), {})[name] = r["ms"]
    for r in rows:
        if r.get("status") != "ok":
            continue
        b = base.get(_key(r), {})
        r["vs_eager"] = b["eager"] / r["ms"] if "eager" in b and r["ms"] > 0 else None
        r["vs_compile"] = b["compile"] / r["ms"] if "compile" in b and r["ms"] > 0 else None


def headline(results: dict) -> List[str]:
    """Lines judging the issue's targets on the headline case, when it was measured."""
    rows = [r for r in results.get("results", []) if r.get("group") == "triplet" and r.get("case") == "alignet"
            and r.get("op") == "kl" and r.get("dtype") == "bf16" and r.get("phase") == "fwd+bwd"]
    if not rows:
        return []
    r0 = rows[0]
    lines = [f"## Headline: distillation loss (KL) fwd+bwd, N={r0.get('n')}, D={r0.get('d')}, B={r0.get('b')}, bf16",
             "", "Targets from issue 3 (H200): >= 60% of the copy bandwidth, >= 5x eager, >= 1.5x torch.compile; "
             "triton and cuda within 20%.", ""]
    fused = {}
    for r in rows:
        if r.get("kind") != "backend" or r.get("status") != "ok" or r["impl"] == "torch":
            continue
        fused[r["impl"]] = r["ms"]
        checks = []
        frac = r.get("frac_copy_bw")
        if frac is not None:
            checks.append(f"{frac * 100:.0f}% of copy bandwidth (target >= {TARGET_FRAC_COPY_BW * 100:.0f}%: "
                          f"{'met' if frac >= TARGET_FRAC_COPY_BW else 'NOT met'})")
        for key, target, name in (("vs_eager", TARGET_VS_EAGER, "eager"),
                                  ("vs_compile", TARGET_VS_COMPILE, "torch.compile")):
            v = r.get(key)
            if v is not None:
                checks.append(f"{v:.1f}x {name} (target >= {target}x: {'met' if v >= target else 'NOT met'})")
            else:
                checks.append(f"no {name} time to compare")
        lines.append(f"- `{r['impl']}`: {r['ms']:.2f} ms; " + "; ".join(checks))
    if "triton" in fused and "cuda" in fused:
        spread = abs(fused["triton"] - fused["cuda"]) / min(fused["triton"], fused["cuda"])
        lines.append(f"- triton vs cuda: {spread * 100:.0f}% apart (target <= {TARGET_BACKEND_SPREAD * 100:.0f}%: "
                     f"{'met' if spread <= TARGET_BACKEND_SPREAD else 'NOT met'})")
    if not any(line.startswith("- ") for line in lines):
        lines.append("- no fused backend produced a time for this case")
    return lines + [""]


def affine_verdict(results: dict) -> List[str]:
    """Lines answering "is the folded addmm at the matmul roofline?" and "does fusing pay?"."""
    rows = [r for r in results.get("results", []) if r.get("group") == "affine" and r.get("status") == "ok"]
    lines: List[str] = []
    for label in dict.fromkeys(r["label"] for r in rows):
        by = {r["impl"]: r for r in rows if r["label"] == label}
        if "affine_transform" in by and "gemm" in by:
            r = by["affine_transform"]
            peak = r.get("frac_matmul_peak")
            others = ", ".join(f"{k} {by[k]['frac_gemm'] * 100:.0f}%" for k in by
                               if k not in ("gemm", "affine_transform") and by[k].get("frac_gemm"))
            lines.append(f"- {label}: `affine_transform` runs at {r['frac_gemm'] * 100:.0f}% of the same-shape "
                         f"GEMM ({r['TFLOPs']:.3g} TFLOP/s" + (f", {peak * 100:.0f}% of the measured matmul peak"
                                                                if peak else "") + f"); {others}")
        if "composed" in by and "transform-only" in by:
            share = by["transform-only"].get("share_of_composed")
            if share is not None:
                lines.append(f"- {label}: the transform is {share * 100:.0f}% of the composed fwd+bwd step "
                             f"({by['composed']['ms']:.3g} ms), the most a fused affine + loss kernel could save")
    return (["## Affine verdict", ""] + lines + [""]) if lines else []


def _fmt(v, spec: str = ".3g", none: str = "-") -> str:
    if v is None:
        return none
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _gb(v: Optional[float]) -> str:
    return "-" if v is None else f"{v / 1e9:.2f}"


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def _speed(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _err(r: dict) -> str:
    parts = []
    if r.get("rel_err") is not None:
        parts.append(f"{r['rel_err']:.1e}")
    if r.get("grad_rel_err") is not None:
        parts.append(f"g {r['grad_rel_err']:.1e}")
    return " / ".join(parts) if parts else "-"


def _ms(r: dict) -> str:
    if r.get("status") != "ok":
        return r.get("status", "?")
    return f"{r['ms']:.4g} ({r['ms_p20']:.4g}-{r['ms_p80']:.4g})" + (" noisy" if is_noisy(r) else "")


def _variance_note(rows: List[dict]) -> List[str]:
    ok = [r for r in rows if r.get("status") == "ok"]
    noisy = [r for r in ok if is_noisy(r)]
    if not noisy:
        return []
    return [f"- note: {len(noisy)} of {len(ok)} measurements are marked noisy: (p80 - p20) / median > "
            f"{HIGH_VARIANCE * 100:.0f}%, so the machine's load moved them; rerun those before quoting them"]


def _note(r: dict) -> str:
    return (r.get("note") or "").replace("|", "/").replace("\n", " ")


def markdown(results: dict) -> str:
    """The report as markdown: run facts, headline targets, one table per group."""
    meta = results.get("meta", {})
    rows = results.get("results", [])
    out = [f"# fastalign benchmark ({meta.get('preset', '?')})", ""]
    facts = [
        ("date", meta.get("date")), ("device", meta.get("device_name")), ("torch", meta.get("torch")),
        ("triton", meta.get("triton")), ("fastalign", meta.get("fastalign")),
        ("copy bandwidth", _fmt((meta.get("copy_bandwidth") or {}).get("GBps"), ".0f") + " GB/s (read + write)"),
    ]
    for mm in meta.get("matmul_peak") or []:
        facts.append((f"{mm['dtype']} GEMM {mm['size']}^3", f"{mm['TFLOPs']:.0f} TFLOP/s"))
    facts.append(("elapsed", _fmt(meta.get("elapsed_s"), ".0f") + " s"))
    out += [f"- {k}: {v}" for k, v in facts if v is not None]
    for note in meta.get("notes", []):
        out.append(f"- note: {note}")
    out += _variance_note(rows)
    out.append("")
    out += headline(results)
    out += affine_verdict(results)
    trip = [r for r in rows if r.get("group") == "triplet"]
    if trip:
        out += ["## Triplet ops", "",
                "ms = median (p20-p80); GB/s over minimal bytes (unique rows once + indices + targets + outputs "
                "[+ gradient]); check = rel. error of loss / gradient vs the eager baseline; noisy = p20-p80 wider "
                "than half the median.", "",
                "| case | op | dtype | impl | phase | ms | GB/s | % copy BW | TFLOP/s | peak mem GB | vs eager "
                "| vs compile | check | note |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in trip:
            out.append(
                f"| {r['case']} N={r['n']} D={r['d']} B={r['b']} | {r['op']}"
                f"{'' if r.get('similarity', 'dot') == 'dot' else ' ' + r['similarity']} | {r['dtype']} | {r['impl']} "
                f"| {r['phase']} | {_ms(r)} | {_fmt(r.get('GBps'), '.1f')} | {_pct(r.get('frac_copy_bw'))} "
                f"| {_fmt(r.get('TFLOPs'), '.3g')} | {_gb(r.get('peak_mem_bytes'))} | {_speed(r.get('vs_eager'))} "
                f"| {_speed(r.get('vs_compile'))} | {_err(r)} | {_note(r)} |")
        out.append("")
    aff = [r for r in rows if r.get("group") == "affine"]
    if aff:
        out += ["## Affine teacher transform", "",
                "frac GEMM = time of plain `x @ W` of the same shape / this time; share = this time / the "
                "composed teacher-fit step.", "",
                "| case | impl | phase | ms | TFLOP/s | frac GEMM | frac matmul peak | share | GB/s | peak mem GB "
                "| check | note |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in aff:
            out.append(
                f"| {r['label']} | {r['impl']} | {r['phase']} | {_ms(r)} | {_fmt(r.get('TFLOPs'), '.3g')} "
                f"| {_pct(r.get('frac_gemm'))} | {_pct(r.get('frac_matmul_peak'))} "
                f"| {_pct(r.get('share_of_composed'))} "
                f"| {_fmt(r.get('GBps'), '.1f')} | {_gb(r.get('peak_mem_bytes'))} | {_err(r)} | {_note(r)} |")
        out.append("")
    return "\n".join(out)


def write_all(out_dir, results: dict, plot: bool = True) -> Dict[str, Path]:
    """Write results.json, table.md and (when ``plot`` and matplotlib is installed) plot.png
    to ``out_dir``; return the paths written (without the plot when it was skipped)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    add_speedups(results.get("results", []))
    paths = {"json": out / RESULTS, "table": out / TABLE}
    atomic_write_json(paths["json"], json_safe(results))
    atomic_write_text(paths["table"], markdown(results) + "\n")
    if plot and plot_results(results, out / PLOT):
        paths["plot"] = out / PLOT
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    """Rebuild table.md and plot.png from DIR/results.json (``argv = [DIR]``); exit status 0 or 2."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: report DIR (a directory holding results.json)", file=sys.stderr)
        return 2
    path = Path(argv[0]) / RESULTS
    if not path.is_file():
        print(f"error: {path} not found", file=sys.stderr)
        return 2
    with open(path, encoding="utf-8") as fh:
        results = json.load(fh)
    paths = write_all(argv[0], results)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
