"""Benchmark: forward + backward of ``triplet_distill_loss`` (KL, fp32, mean).

Compares, in one run, at D=512, B=200,000 and N in {2,000 (rows stay in
cache), 200,000 (rows come from memory)}:

- ``cpu``: ``fastalign.triplet_distill_loss(..., backend="cpu")`` (the fused C++ kernel);
- ``eager``: PyTorch on the gather-based math written below
  (``e[t]`` -> sims -> log_softmax -> KL -> backward);
- ``compile``: ``torch.compile`` of that same eager function;
- ``gathered``: the gathered-bytes floor, torch's own gather of the 3B rows
  (``emb[trip.reshape(-1)]``) plus its scatter-add of 3B rows into a zeroed
  (N, D) gradient (``index_add_``): the memory traffic any kernel that reads
  each triplet's rows and adds its row gradients must move, as torch moves it
  (with its allocations: 3B gathered rows);
- ``floor``: the same bytes moved by a tight C++ loop (``fastalign._cpu.
  _gather_scatter_floor``: rows prefetched like the kernel, huge pages asked
  for, first-touch zeroing, no arithmetic, no allocation but the gradient):
  the gathered-bytes floor the ``x floor`` column divides by. Beside it the
  table keeps the row-once floor (each row and gradient row touched once).

Optional implementations (``--impl``): ``cpu:rows``, ``cpu:owned``, ``cpu:gram``
force one path of the cpu backend (``FASTALIGN_CPU_STRATEGY``) to show the
cost model's choice side by side. ``--threads K`` sets ``torch.set_num_threads``
in every case (default: torch's default).

Two entry points:

- ``python benchmarks/bench_triplet_distill_loss.py --markdown [--quick] [--out FILE]``
  runs every (implementation, N) case in its own subprocess, so each case's
  peak memory is its own, and prints a markdown table plus the machine's
  measured peak FLOP/s, copy bandwidth and the resulting floor.
- ``python -m pytest benchmarks/bench_triplet_distill_loss.py`` runs the same
  cases under pytest-benchmark (timing only, no assertions on speed).

Size knobs: ``--quick`` (or ``FASTALIGN_BENCH_QUICK=1``) shrinks to B=20,000
and N in {2,000, 20,000} so it smoke-runs in seconds; ``FASTALIGN_BENCH_B``,
``FASTALIGN_BENCH_D`` and ``FASTALIGN_BENCH_N`` (comma separated) override.

Peak extra memory: after building the inputs and warming up, the worker
returns freed heap memory to the OS (glibc ``malloc_trim(0)``, so buffers freed
by the warm-up do not hide the timed steps' allocations), records its resident
set (VmRSS), resets the kernel's high-water mark by writing "5" to
``/proc/self/clear_refs``, runs the timed iterations and reads ``VmHWM``.
Peak extra = VmHWM - that RSS: the memory the timed forward+backward itself
needs on top of the inputs, the gradient output included (N*D*4 bytes for
every implementation). Without clear_refs (non-Linux) it falls back to
``ru_maxrss`` minus the RSS before warm-up and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

# Run from a checkout without installing: make the repository importable.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from fastalign.bench.memory import peak_rss_bytes, proc_status_bytes, reset_peak_rss, rss_bytes, trim_heap  # noqa: E402

IMPLS = ("cpu", "eager", "compile", "gathered", "floor")
EXTRA_IMPLS = ("cpu:rows", "cpu:owned", "cpu:gram")
TEMPERATURE = 1.0


@dataclass
class BenchConfig:
    """Sizes and repetitions.

    Attributes:
        b: triplets per step.
        d: embedding width.
        ns: table sizes N to run.
        repeats: timed forward+backward steps per case (median reported).
        warmup: untimed steps before timing (the compile case adds its compilation).
        seed: input seed.
    """

    b: int = 200_000
    d: int = 512
    ns: Tuple[int, ...] = (2_000, 200_000)
    repeats: int = 5
    warmup: int = 2
    seed: int = 0


def config_from_env(quick: bool) -> BenchConfig:
    quick = quick or os.environ.get("FASTALIGN_BENCH_QUICK") == "1"
    cfg = BenchConfig(b=20_000, ns=(2_000, 20_000), repeats=3) if quick else BenchConfig()
    if os.environ.get("FASTALIGN_BENCH_B"):
        cfg.b = int(os.environ["FASTALIGN_BENCH_B"])
    if os.environ.get("FASTALIGN_BENCH_D"):
        cfg.d = int(os.environ["FASTALIGN_BENCH_D"])
    if os.environ.get("FASTALIGN_BENCH_N"):
        cfg.ns = tuple(int(x) for x in os.environ["FASTALIGN_BENCH_N"].split(","))
    return cfg


# ------------------------------------------------------------ the three contenders


def make_inputs(n: int, cfg: BenchConfig):
    g = torch.Generator().manual_seed(cfg.seed)
    emb = torch.randn(n, cfg.d, generator=g) / cfg.d ** 0.25
    trip = torch.randint(0, n, (cfg.b, 3), generator=g)
    p = torch.softmax(torch.randn(cfg.b, 3, generator=g), dim=1)
    return emb, trip, p


def eager_loss(emb: torch.Tensor, trip: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The gather-based math: KL(p || softmax(s / T)), mean over triplets."""
    x = emb[trip]  # (B, 3, D): the gather the fused kernel avoids
    a, b, c = x[:, 0], x[:, 1], x[:, 2]
    s = torch.stack([(a * b).sum(-1), (a * c).sum(-1), (b * c).sum(-1)], dim=1)
    logq = torch.log_softmax(s / TEMPERATURE, dim=1)
    return (torch.xlogy(p, p) - p * logq).sum(1).mean()


def cpu_loss(emb: torch.Tensor, trip: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    import fastalign

    return fastalign.triplet_distill_loss(emb, trip, target_probs=p, temperature=TEMPERATURE, backend="cpu")


def gathered_floor(emb: torch.Tensor, trip: torch.Tensor) -> torch.Tensor:
    """torch's gather of the 3B rows and scatter-add of 3B rows: the gathered-bytes floor."""
    idx = trip.reshape(-1)
    rows = emb[idx]
    grad = torch.zeros_like(emb)
    grad.index_add_(0, idx, rows)
    return grad


def cxx_floor(emb: torch.Tensor, trip: torch.Tensor) -> torch.Tensor:
    """The gathered bytes moved by a tight C++ loop (no arithmetic; its sums are not a result)."""
    from fastalign import _cpu

    n, d = emb.shape
    trip = trip.contiguous().to(torch.int64)
    grad = torch.empty(n, d)
    touched = torch.zeros(n, dtype=torch.uint8)
    _cpu._gather_scatter_floor(emb.data_ptr(), n, d, trip.data_ptr(), trip.shape[0], grad.data_ptr(),
                               touched.data_ptr(), torch.get_num_threads())
    return grad


def make_step(impl: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """One training step's op: loss and gradient w.r.t. emb (returned, not accumulated)."""
    if impl == "gathered":
        return lambda emb, trip, p: gathered_floor(emb, trip)
    if impl == "floor":
        return lambda emb, trip, p: cxx_floor(emb, trip)
    if impl.startswith("cpu"):
        if ":" in impl:
            os.environ["FASTALIGN_CPU_STRATEGY"] = impl.split(":", 1)[1]
        fn = cpu_loss
    elif impl == "eager":
        fn = eager_loss
    elif impl == "compile":
        fn = torch.compile(eager_loss, dynamic=False)
    else:
        raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLS}")

    def step(emb, trip, p):
        e = emb.requires_grad_(True)
        loss = fn(e, trip, p)
        (grad,) = torch.autograd.grad(loss, e)
        return grad

    return step


# --------------------------------------------------------------- measurement


def run_case(impl: str, n: int, cfg: BenchConfig) -> Dict[str, object]:
    """Time one (implementation, N) case in this process; return ms and peak extra MB."""
    emb, trip, p = make_inputs(n, cfg)
    step = make_step(impl)
    rss_inputs = rss_bytes()
    t0 = time.perf_counter()
    for _ in range(cfg.warmup + (1 if impl == "compile" else 0)):
        step(emb, trip, p)
    warm_s = time.perf_counter() - t0
    trim_heap()
    rss_before = proc_status_bytes("VmRSS")
    reset = reset_peak_rss()
    times = []
    for _ in range(cfg.repeats):
        t = time.perf_counter()
        step(emb, trip, p)
        times.append(time.perf_counter() - t)
    if reset and rss_before is not None:
        peak_bytes, how = peak_rss_bytes() - rss_before, "VmHWM-after-clear_refs"
    else:  # no resettable peak counter: the process peak minus what the inputs took
        peak_bytes, how = peak_rss_bytes() - rss_inputs, "ru_maxrss-minus-inputs"
    times.sort()
    return {
        "impl": impl, "n": n, "ms": 1e3 * times[len(times) // 2], "ms_min": 1e3 * times[0],
        "ms_max": 1e3 * times[-1],
        "peak_extra_mb": peak_bytes / 2**20, "memory_method": how, "warmup_s": warm_s,
        "threads": torch.get_num_threads(),
    }


def machine_peaks(quick: bool) -> Dict[str, float]:
    """Measured fp32 matmul FLOP/s and large-copy bandwidth of this machine (best of a few)."""
    m = 1024 if quick else 2048
    a, b = torch.randn(m, m), torch.randn(m, m)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    flops = 2.0 * m ** 3 / best
    nbytes = (64 if quick else 512) * 2 ** 20
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return {"flops": flops, "bandwidth": 2.0 * nbytes / best}  # copy reads and writes every byte


def floor_ms(n: int, cfg: BenchConfig, peaks: Dict[str, float]) -> Dict[str, float]:
    """Lower bounds: flops over peak, and compulsory bytes over copy bandwidth.

    Flops: 3 dots (6D) forward, 6 row axpys (12D) backward per triplet.
    Bytes: each table row read once and its gradient row written once
    (2 N D 4), plus the triplets (3 int64), targets (3 fp32) and per-triplet
    outputs (loss + dsim, 4 fp32), all read or written once.
    """
    flops = 18.0 * cfg.d * cfg.b
    nbytes = 2.0 * n * cfg.d * 4 + cfg.b * (3 * 8 + 3 * 4 + 4 * 4)
    return {"flop_ms": 1e3 * flops / peaks["flops"], "byte_ms": 1e3 * nbytes / peaks["bandwidth"]}


def _worker(impl: str, n: int, cfg: BenchConfig, threads: Optional[int] = None) -> Dict[str, object]:
    """Run one case in a fresh interpreter so its peak memory is its own."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--n", str(n), "--config", json.dumps(asdict(cfg))]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"impl": impl, "n": n, "error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _progress(items):
    """(iterable, write) with a tqdm bar when tqdm is installed, else plain lines."""
    try:
        from tqdm import tqdm

        bar = tqdm(items, desc="cases", leave=False, file=sys.stderr)
        return bar, lambda msg: bar.write(msg, file=sys.stderr)
    except ImportError:
        return items, lambda msg: print(msg, file=sys.stderr, flush=True)


def markdown(cfg: BenchConfig, results: List[Dict[str, object]], peaks: Dict[str, float],
             impls: Tuple[str, ...] = IMPLS) -> str:
    threads = next((r["threads"] for r in results if "threads" in r), torch.get_num_threads())
    lines = [
        f"forward+backward of `triplet_distill_loss` (KL, fp32, mean), D={cfg.d}, B={cfg.b:,}, "
        f"median of {cfg.repeats}, torch {torch.__version__}, {threads} threads, "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)",
        "",
        f"Machine: fp32 matmul {peaks['flops'] / 1e9:.1f} GFLOP/s, copy {peaks['bandwidth'] / 1e9:.1f} GB/s (measured).",
        "",
        "| N | implementation | ms (min-max) | cpu speedup | x floor | peak extra MB | "
        "row-once floor ms (flops / bytes) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n in cfg.ns:
        rows = {r["impl"]: r for r in results if r["n"] == n}
        cpu_ms = rows.get("cpu", {}).get("ms")
        gathered_ms = rows.get("floor", rows.get("gathered", {})).get("ms")
        fl = floor_ms(n, cfg, peaks)
        for impl in impls:
            r = rows.get(impl)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {n:,} | {impl} | failed: {r['error']} | | | | |")
                continue
            speed = "1.0x" if impl == "cpu" else (f"{r['ms'] / cpu_ms:.2f}x" if cpu_ms else "n/a")
            vs_floor = f"{r['ms'] / gathered_ms:.2f}x" if gathered_ms else "n/a"
            spread = f" ({r['ms_min']:.0f}-{r['ms_max']:.0f})" if "ms_max" in r else ""
            lines.append(
                f"| {n:,} | {impl} | {r['ms']:.1f}{spread} | {speed} | {vs_floor} | {r['peak_extra_mb']:.0f} | "
                f"{fl['flop_ms']:.2f} / {fl['byte_ms']:.2f} |"
            )
    method = next((r.get("memory_method") for r in results if "memory_method" in r), "n/a")
    lines += [
        "",
        "cpu speedup = that implementation's ms / cpu ms; x floor = ms / the `floor` case's ms (the gathered "
        "bytes, 3B row reads and 3B gradient-row adds, moved by a tight C++ loop in the same run; the "
        "`gathered` case if `floor` did not run). `gathered` = torch's gather of the 3B rows + index_add_. Peak extra MB: resident-set high-water mark of the "
        f"timed steps over the resident set with inputs loaded ({method}); it includes the (N, D) fp32 gradient.",
        "Floor: 18*D*B flops over the matmul peak / compulsory bytes (each row read once, each gradient row "
        "written once, per-triplet data once) over the copy bandwidth.",
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", action="store_true", help="run every case and print the markdown table")
    ap.add_argument("--quick", action="store_true", help="small sizes, smoke-runs in seconds")
    ap.add_argument("--impl", default=",".join(IMPLS), help=f"comma-separated subset of {IMPLS}")
    ap.add_argument("--out", help="also write the table to this file (atomically)")
    ap.add_argument("--json", help="also write the raw results to this JSON file")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads in every case")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        cfg = BenchConfig(**{k: tuple(v) if k == "ns" else v for k, v in json.loads(args.config).items()})
        print(json.dumps(run_case(args.worker, args.n, cfg)))
        return 0
    cfg = config_from_env(args.quick)
    impls = [x for x in args.impl.split(",") if x]
    for impl in impls:
        if impl not in IMPLS + EXTRA_IMPLS:
            ap.error(f"unknown implementation {impl!r}; expected some of {IMPLS + EXTRA_IMPLS}")
    cases = [(impl, n) for n in cfg.ns for impl in impls]
    results = []
    items, write = _progress(cases)
    for impl, n in items:
        r = _worker(impl, n, cfg, args.threads)
        results.append(r)
        write(f"  {impl:8s} N={n:>9,}: " + (r["error"] if "error" in r else f"{r['ms']:.1f} ms"))
    peaks = machine_peaks(args.quick or cfg.b < 100_000)
    table = markdown(cfg, results, peaks, tuple(impls))
    print(table)
    from fastalign.io import atomic_write_text  # here: the measured subprocesses import nothing extra

    if args.out:
        atomic_write_text(args.out, table + "\n")
    if args.json:
        atomic_write_text(args.json, json.dumps({"config": asdict(cfg), "peaks": peaks, "results": results}, indent=1))
    return 0


# ------------------------------------------------------------ pytest-benchmark

try:
    import pytest
except ImportError:  # pragma: no cover - the script entry point needs no pytest
    pytest = None

if pytest is not None:
    _CFG = config_from_env(quick=False)

    @pytest.mark.parametrize("n", _CFG.ns, ids=lambda n: f"N{n}")
    @pytest.mark.parametrize("impl", IMPLS)
    def test_triplet_distill_loss_fwd_bwd(benchmark, impl, n):
        """Forward+backward time per implementation (pytest-benchmark; no speed assertion)."""
        emb, trip, p = make_inputs(n, _CFG)
        step = make_step(impl)
        for _ in range(_CFG.warmup + (1 if impl == "compile" else 0)):
            step(emb, trip, p)
        benchmark.extra_info.update({"impl": impl, "n": n, "b": _CFG.b, "d": _CFG.d})
        grad = benchmark.pedantic(step, args=(emb, trip, p), rounds=_CFG.repeats, iterations=1)
        assert grad.shape == emb.shape and torch.isfinite(grad).all()


if __name__ == "__main__":
    sys.exit(main())
