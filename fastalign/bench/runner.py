"""Run a preset: measure the ceilings, then every case, writing results as it goes.

``run_bench(options, out_dir)`` is what ``fastalign bench`` and
``benchmarks/bench_gpu.py`` call. After every case it rewrites
``results.json`` and ``table.md`` (atomically), so a run stopped by a timeout
still leaves every finished case on disk; the plot is drawn at the end.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

from .. import __version__, ops
from ..common.progress import Progress
from . import affine_bench, report, triplet_bench
from .ceilings import copy_bandwidth, matmul_tflops
from .config import AffineCase, BenchOptions, TripletCase
from .measure import Context, release
from .memory import free_memory
from .presets import Preset, get_preset
from .timing import nvtx_range

# Ceiling measurements: a 1 GiB copy on a GPU (far beyond L2), 32 MiB on CPU;
# an 8192^3 GEMM on a GPU.
_COPY_BYTES = {"cuda": 1 << 30, "cpu": 32 << 20}
_GEMM_SIZE = 8192
# Timer budget (ms) of the untimed warm-up calls.
_WARM_MS = 1.0


def resolve_options(options: BenchOptions, preset: Preset) -> BenchOptions:
    """Fill the options left as ``None`` from the preset."""
    return dataclasses.replace(
        options,
        baselines=preset.baselines if options.baselines is None else options.baselines,
        time_budget_s=preset.time_budget_s if options.time_budget_s is None else options.time_budget_s,
        warmup_ms=preset.warmup_ms if options.warmup_ms is None else options.warmup_ms,
        rep_ms=preset.rep_ms if options.rep_ms is None else options.rep_ms,
    )


def _device_meta(device: str) -> dict:
    meta = {"device": device, "device_name": platform.processor() or platform.machine() or "cpu"}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        meta.update(device_name=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    total_memory_bytes=p.total_memory, cuda=torch.version.cuda,
                    # fp32 GEMMs run in full fp32 unless TF32 is allowed: say which.
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    meta["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    meta["cpu_count"] = os.cpu_count()
    meta["load_average"] = _load_average()
    return meta


def _load_average() -> Optional[float]:
    """The 1-minute load average at the start (``None`` where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _versions() -> dict:
    try:
        import triton  # optional heavy dependency: only its version is recorded

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - triton is optional
        triton_version = None
    return {"fastalign": __version__, "torch": torch.__version__, "triton": triton_version,
            "python": platform.python_version()}


def _plain_log(enabled: bool) -> Callable[[str], None]:
    # Logs (the device check tees them to a file) get whole lines, flushed at once.
    return (lambda msg: print(msg, flush=True)) if enabled else (lambda msg: None)


def _warm_cases(cases: Sequence[Union[TripletCase, AffineCase]]) -> List[Union[TripletCase, AffineCase]]:
    """One tiny case per distinct (op or kind, dtype, similarity) of the run."""
    out: Dict[tuple, Union[TripletCase, AffineCase]] = {}
    for c in cases:
        if isinstance(c, TripletCase):
            key = ("triplet", c.op, c.dtype, c.similarity)
            out.setdefault(key, TripletCase("warm-up", c.op, n=min(c.n, 64), d=min(c.d, 32), b=min(c.b, 256),
                                            dtype=c.dtype, similarity=c.similarity, phases=c.phases))
        else:
            key = ("affine", c.kind, c.dtype)
            out.setdefault(key, AffineCase("warm-up", c.kind, n=min(c.n, 256), d=min(c.d, 32),
                                           b=min(c.b, 256), dtype=c.dtype, compile=False))
    return list(out.values())


def warm_up(ctx: Context, cases: Sequence[Union[TripletCase, AffineCase]], backends: Dict[str, Optional[str]]) -> float:
    """Run every implementation of the run's ops once at tiny sizes, untimed; return the seconds spent.

    The first calls of a process pay one-off costs (lazy initialisation, thread
    pools, allocator growth, backend probes, kernel autotuning) that would
    otherwise land in the first case's timings: a cold first case on CPU showed
    thousand-fold "speed-ups". ``torch.compile`` is not warmed (each case
    compiles its own graph and reports the first call separately).
    """
    t0 = time.perf_counter()
    quiet = Context(options=dataclasses.replace(ctx.options, warmup_ms=_WARM_MS, rep_ms=_WARM_MS, check=False,
                                                baselines=("eager",), time_budget_s=None),
                    device=ctx.device, log=lambda msg: None, free_at_start=ctx.free_at_start)
    for case in _warm_cases(cases):
        if isinstance(case, TripletCase):
            triplet_bench.run_case(quiet, case, backends)
        else:
            affine_bench.run_case(quiet, case, None)
        release(ctx.device)
    return time.perf_counter() - t0


def _run_notes(opts: BenchOptions, device: str, backends: Dict[str, Optional[str]]) -> List[str]:
    notes = []
    if device == "cpu":
        notes.append("peak memory is not recorded on CPU (no allocator statistics)")
    if "compile" not in (opts.baselines or ()):
        notes.append("torch.compile baseline not run (enable with --baselines eager,compile)")
    elif opts.compile_backend != "inductor":
        notes.append(f"torch.compile used backend={opts.compile_backend!r}: a path check, not a speed baseline")
    for name, why in backends.items():
        if why is not None:
            notes.append(f"backend {name}: {why}")
    notes.append("library backends are timed through the public ops, input checks (index range, "
                 "probabilities) included; 'bwd' of a reduced fused loss only scales the gradient computed "
                 "in the forward")
    load, cores = _load_average(), os.cpu_count() or 1
    if load is not None and load > cores:
        notes.append(f"load average {load:.1f} on {cores} cores when the run started: other work shared the "
                     "machine, so times are upper bounds (a busy CPU can stall thread pools for many "
                     "consecutive calls, which the noisy flag does not catch)")
    notes.append("every implementation ran untimed at tiny sizes before the first case, so no case pays "
                 "the process's cold start")
    return notes


def _meta(preset: Preset, opts: BenchOptions, device: str, backends: Dict[str, Optional[str]]) -> dict:
    return {
        "preset": preset.name, "preset_description": preset.description,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **_device_meta(device), **_versions(),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(opts).items()},
        "backends": ops.backends(), "notes": _run_notes(opts, device, backends),
    }


def _ceilings(ctx: Context, meta: dict) -> Dict[str, float]:
    """Measure copy bandwidth (and on a GPU the GEMM peaks) into ``meta``; return TFLOP/s by dtype."""
    opts, device = ctx.options, ctx.device
    meta["copy_bandwidth"] = copy_bandwidth(device, _COPY_BYTES[device], opts.warmup_ms, opts.rep_ms)
    ctx.copy_gbps = meta["copy_bandwidth"]["GBps"]
    ctx.log(f"copy bandwidth: {ctx.copy_gbps:.0f} GB/s")
    matmul = {}
    if device == "cuda" and "affine" in opts.groups:
        meta["matmul_peak"] = [matmul_tflops(device, dt, _GEMM_SIZE, opts.warmup_ms, opts.rep_ms)
                               for dt in (torch.bfloat16, torch.float32)]
        matmul = {m["dtype"]: m["TFLOPs"] for m in meta["matmul_peak"]}
    release(device)
    return matmul


def _chosen_cases(preset: Preset, opts: BenchOptions, device: str, cases) -> List[Union[TripletCase, AffineCase]]:
    if preset.device == "cuda" and device != "cuda" and cases is None:
        raise ValueError(f"preset {preset.name!r} is sized for a GPU (no CUDA device here); use --preset cpu-tiny")
    chosen = preset.cases if cases is None else tuple(cases)
    for c in chosen:
        if not isinstance(c, (TripletCase, AffineCase)):
            raise TypeError(f"cases must be TripletCase or AffineCase objects, got {type(c).__name__}")
    return sorted((c for c in chosen if c.group in opts.groups), key=lambda c: c.priority)


def _run_case(ctx: Context, case, backends: Dict[str, Optional[str]], matmul: Dict[str, float]) -> List[dict]:
    ctx.log(f"{case.group}: {case.label}")
    with nvtx_range(f"case {case.label}", ctx.device):
        if isinstance(case, TripletCase):
            return triplet_bench.run_case(ctx, case, backends)
        peak = matmul.get({"bf16": "bfloat16", "fp32": "float32"}.get(case.dtype, ""), None)
        return affine_bench.run_case(ctx, case, peak)


def run_bench(options: BenchOptions, out_dir=None, log: Optional[Callable[[str], None]] = None,
              cases: Optional[Sequence[Union[TripletCase, AffineCase]]] = None) -> dict:
    """Run ``options.preset`` and return the results dict (also written to ``out_dir``).

    Args:
        options: what to run (see ``BenchOptions``).
        out_dir: directory for results.json, table.md, plot.png; ``None`` writes nothing.
        log: where progress lines go (default: above the progress bar, or stdout).
        cases: measure these instead of the preset's cases (the preset still
            supplies the default baselines, budgets and its name; a GPU
            preset may then run on CPU, since the cases set the sizes).

    Raises ``ValueError`` for a GPU preset's own cases without a GPU, an
    unknown backend or an unknown preset; ``TypeError`` for a bad case.
    """
    preset = get_preset(options.preset)
    opts = resolve_options(options, preset)
    device = opts.resolved_device()
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    cases = _chosen_cases(preset, opts, device, cases)
    backends = triplet_bench.available_backends(device, opts.backends)
    meta = _meta(preset, opts, device, backends)
    results = {"meta": meta, "results": []}
    with Progress(len(cases), "bench", enabled=opts.progress and sys.stderr.isatty(), unit="case") as bar:
        log = log or (bar.write if bar.enabled else _plain_log(opts.progress))
        ctx = Context(options=opts, device=device, log=log, free_at_start=free_memory(device))
        t0 = time.perf_counter()
        log(f"fastalign bench: preset {preset.name} on {meta['device_name']} ({device}); "
            f"backends {[n for n, w in backends.items() if w is None]}; baselines {list(opts.baselines or ())}")
        matmul = _ceilings(ctx, meta)
        meta["warm_up_s"] = warm_up(ctx, cases, backends)
        for case in cases:
            results["results"].extend(_run_case(ctx, case, backends, matmul))
            meta["elapsed_s"] = time.perf_counter() - t0
            release(device)
            if out_dir is not None:
                report.write_all(out_dir, results, plot=False)
            bar.update()
    meta["elapsed_s"] = time.perf_counter() - t0
    left = ctx.budget_left()
    if left is not None and math.isfinite(left) and left <= 0:
        meta["notes"].append(f"time budget of {opts.time_budget_s:.0f} s ran out; later measurements were skipped")
    if out_dir is not None:
        paths = report.write_all(out_dir, results, plot=True)
        log("wrote " + ", ".join(str(Path(p)) for p in paths.values()))
    else:
        report.add_speedups(results["results"])
    return results
