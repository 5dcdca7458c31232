"""The benchmark harness (``fastalign.bench``) and ``fastalign bench``.

The numeric pieces are checked against independent references: the eager
baseline against the float64 autograd reference (``tests/reference.py``), the
chunked runner against the unchunked one, the timing statistics against
``numpy.quantile``, the affine rows against a float64 transform. The harness
itself runs the ``cpu-tiny`` preset on CPU and its outputs are inspected.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import distill_loss64, hard_loss64, loss_and_grad64, sims64

import fastalign
from fastalign.bench import (
    AffineCase,
    BenchOptions,
    TripletCase,
    baselines,
    measure,
    memory,
    metrics,
    presets,
    report,
    run_bench,
    timing,
)
from fastalign.bench.measure import Context, Skip

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW_FIELDS = {"group", "case", "label", "op", "n", "d", "b", "dtype", "impl", "kind", "phase", "status", "note"}
OK_FIELDS = {"ms", "ms_p20", "ms_p80", "reps", "timer", "bytes", "flops", "GBps", "TFLOPs", "frac_copy_bw",
             "peak_mem_bytes", "first_call_ms"}


def _png_width(png: bytes) -> int:
    return int.from_bytes(png[16:20], "big")  # IHDR: width, then height


def _problem(n=11, d=7, b=40, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    trip = torch.randint(0, n, (b, 3), generator=g)
    trip[0] = torch.tensor([1, 1, 2])  # a repeated index inside a triplet
    target = torch.softmax(torch.randn(b, 3, generator=g, dtype=torch.float64), 1)
    target[1] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # exact zeros (0 log 0)
    return emb, trip, target


# ------------------------------------------------------------- eager baseline


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("op", ["kl", "jsd", "hard", "sims"])
def test_eager_baseline_matches_float64_reference(op, similarity):
    emb, trip, target = _problem(seed=len(op))
    cosine = similarity == "cosine"
    temperature = 0.7
    fn = baselines.objective(op, cosine, temperature)
    e = emb.clone().requires_grad_(True)
    out = fn(e, trip, target)
    if op == "sims":
        grad_out = torch.randn(trip.shape[0], 3, dtype=torch.float64)
        ref = sims64(emb, trip, similarity)
        ref_out, ref_grad = loss_and_grad64(sims64, emb, trip, similarity, grad_out=grad_out)
        (grad,) = torch.autograd.grad(out, e, grad_out)
    else:
        b = trip.shape[0]
        out = out / b  # the objective returns the sum; the reference the mean
        if op == "hard":
            ref_out, ref_grad = loss_and_grad64(hard_loss64, emb, trip, temperature=temperature,
                                                similarity=similarity)
        else:
            ref_out, ref_grad = loss_and_grad64(distill_loss64, emb, trip, target_probs=target,
                                                temperature=temperature, divergence=op, similarity=similarity)
        ref = ref_out
        (grad,) = torch.autograd.grad(out, e)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("op", ["kl", "hard", "sims"])
@pytest.mark.parametrize("chunk", [1, 7, 40, 1000])
def test_chunked_runner_matches_one_chunk(op, chunk):
    emb, trip, target = _problem(b=40)
    grad_out = torch.randn(40, 3, dtype=torch.float64)
    fn = baselines.objective(op)
    e = emb.clone().requires_grad_(True)
    whole = baselines.ChunkedObjective(fn, op, e, trip, target, 40, grad_out)
    parts = baselines.ChunkedObjective(fn, op, e, trip, target, chunk, grad_out)
    assert parts.n_chunks == math.ceil(40 / min(chunk, 40))
    out_w, grad_w = whole.forward_backward()
    out_p, grad_p = parts.forward_backward()
    torch.testing.assert_close(out_p, out_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_p, grad_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(parts.forward(), out_w, rtol=1e-12, atol=1e-12)
    graph = whole.graph()
    torch.testing.assert_close(graph.detach(), out_w, rtol=1e-12, atol=1e-12)
    if parts.n_chunks > 1:
        with pytest.raises(RuntimeError, match="chunk"):
            parts.graph()


@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 5000), max_chunk=st.integers(1, 6000))
def test_plan_chunks_covers_b_within_the_limit(b, max_chunk):
    chunk = baselines.plan_chunks(b, max_chunk)
    assert 1 <= chunk <= min(b, max_chunk)
    n = math.ceil(b / chunk)
    assert n * chunk >= b and (n - 1) * chunk < b
    # Equal chunks whenever a divisor of b lies within 4x of the fewest chunks.
    n_min = math.ceil(b / min(b, max_chunk))
    if any(b % k == 0 for k in range(n_min, min(b, 4 * n_min) + 1)):
        assert b % chunk == 0


def test_workspace_estimate_grows_with_the_gather():
    small = baselines.workspace_bytes(10, 8, 2, True)
    assert baselines.workspace_bytes(20, 8, 2, True) == 2 * small
    assert baselines.workspace_bytes(10, 8, 2, False) < small
    # The issue's number: the bf16 (B, 3, D) gather at B=10M, D=1152 alone is 69 GB.
    assert baselines.workspace_bytes(10_000_000, 1152, 2, False) > 69e9


# ------------------------------------------------------------ stats, metrics


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.001, 1e4, allow_nan=False), min_size=1, max_size=50))
def test_stats_match_numpy_percentiles(samples):
    s = timing.stats_from_samples(samples, "t")
    assert s.median_ms == pytest.approx(np.percentile(samples, 50))
    assert s.p20_ms == pytest.approx(np.percentile(samples, 20))
    assert s.p80_ms == pytest.approx(np.percentile(samples, 80))
    assert s.p20_ms <= s.median_ms <= s.p80_ms and s.reps == len(samples)


def test_stats_need_samples():
    with pytest.raises(ValueError, match="sample"):
        timing.stats_from_samples([], "t")


def test_cpu_timer_reports_a_positive_median():
    calls = []
    s = timing.time_call(lambda: calls.append(1), "cpu", estimate_ms=0.01, warmup_ms=0.1, rep_ms=1.0,
                         slow_ms=100.0, slow_reps=1)
    assert s.timer == "perf_counter" and s.reps >= 3 and len(calls) >= s.reps and s.median_ms >= 0


def test_benchmark_warms_up_and_counts_a_slow_call_once():
    calls = []
    s = timing.benchmark(lambda: calls.append(1), "cpu", warmup_ms=0.1, rep_ms=1.0)
    assert s.timer == "perf_counter" and s.min_ms <= s.median_ms and len(calls) >= s.reps + 2
    slow_calls = []

    def slow():
        slow_calls.append(1)
        time.sleep(0.005)
        return "out"

    stats, value = timing.timed(slow, "cpu", slow_ms=1.0, slow_reps=2)
    # warm-up + sizing call (its time is the first sample) + one more sample
    assert value == "out" and stats.timer == "wall" and stats.reps == 2 and len(slow_calls) == 3
    assert stats.min_ms >= 4.0


def test_time_interleaved_gives_one_stats_per_function():
    counts = [0, 0]

    def bump(i):
        counts[i] += 1

    a, b = timing.time_interleaved([lambda: bump(0), lambda: bump(1)], repeats=4)
    assert counts == [5, 5] and a.reps == b.reps == 4 and a.min_ms <= a.median_ms
    with pytest.raises(ValueError, match="repeats"):
        timing.time_interleaved([lambda: None], repeats=0)


def test_high_variance_is_flagged():
    tight = timing.Stats(1.0, 0.9, 1.2, 10, "t")
    wide = timing.Stats(1.0, 0.9, 1.6, 10, "t")
    assert not tight.noisy and wide.noisy and wide.spread == pytest.approx(0.7)
    assert wide.as_dict()["high_variance"] is True
    # rows from before the flag existed are judged from their percentiles
    assert timing.is_noisy({"status": "ok", "ms": 1.0, "ms_p20": 0.5, "ms_p80": 2.0})
    assert not timing.is_noisy({"status": "skipped"})
    row = {"group": "triplet", "case": "c", "label": "c", "op": "kl", "n": 1, "d": 1, "b": 1, "dtype": "fp32",
           "impl": "eager", "kind": "baseline", "phase": "fwd", "status": "ok", **wide.as_dict()}
    text = report.markdown({"meta": {}, "results": [row]})
    assert "1 (0.9-1.6) noisy" in text and "1 of 1 measurements are marked noisy" in text


@pytest.mark.skipif(not memory.reset_peak_rss(), reason="needs Linux /proc/self/clear_refs")
def test_peak_rss_sees_an_allocation():
    with memory.PeakRSS() as meter:
        block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
        del block
    assert meter.reset and meter.bytes > 32 << 20
    assert memory.rss_bytes() > 0 and memory.peak_rss_bytes() >= memory.rss_bytes()
    memory.trim_heap()


@pytest.mark.parametrize("dtype,elt", [("fp32", 4), ("bf16", 2)])
def test_triplet_work_counts_rows_once(dtype, elt):
    n, d, b = 1000, 16, 50  # 3B < N: 150 unique rows at most
    fwd = metrics.triplet_work("kl", "fwd", n, d, b, dtype)
    assert fwd.bytes == 150 * d * elt + 3 * b * 8 + 3 * b * 4 + 4
    assert fwd.flops == 6 * d * b
    step = metrics.triplet_work("kl", "fwd+bwd", n, d, b, dtype)
    assert step.bytes == fwd.bytes + n * d * elt  # plus the dense gradient written once
    assert step.flops == 18 * d * b
    big = metrics.triplet_work("hard", "fwd", 100, d, 10_000, dtype)  # 3B > N: every row once
    assert big.bytes == 100 * d * elt + 3 * 10_000 * 8 + 4
    cos = metrics.triplet_work("sims", "bwd", n, d, b, dtype, similarity="cosine")
    assert cos.flops == 2 * 12 * d * b


def test_rates_and_affine_work():
    w = metrics.affine_work(1000, 64, 32, "bf16")
    assert w.flops == 2 * 1000 * 64 * 32
    assert w.bytes == (1000 * 64 + 64 * 32 + 32 + 1000 * 32) * 2
    r = metrics.rates(metrics.Work(2_000_000_000, 4e12), 1000.0, copy_gbps=4.0)
    assert r["GBps"] == pytest.approx(2.0) and r["TFLOPs"] == pytest.approx(4.0)
    assert r["frac_copy_bw"] == pytest.approx(0.5)
    assert metrics.rates(w, 0.0, None)["GBps"] is None
    with pytest.raises(ValueError, match="phase"):
        metrics.triplet_work("kl", "sideways", 1, 1, 1, "fp32")


def test_rel_err_is_blockwise_float64(monkeypatch):
    monkeypatch.setattr(measure, "_ERR_BLOCK", 5)
    a = torch.randn(7, 3)
    b = a + 1e-3 * torch.randn(7, 3)
    want = float((a.double() - b.double()).norm() / b.double().norm())
    assert measure.rel_err(a, b) == pytest.approx(want, rel=1e-12)
    assert measure.rel_err(a, None) is None
    assert measure.rel_err(a, a[:2]) == math.inf


# ------------------------------------------------------------------ measure


def _ctx(**kw):
    return Context(options=BenchOptions(device="cpu", warmup_ms=0.1, rep_ms=1.0, **kw), device="cpu",
                   log=lambda msg: None)


def test_measure_turns_failures_into_rows():
    ctx = _ctx()

    def broken():
        raise RuntimeError("kernel exploded")

    def skipped():
        raise Skip("not today")

    assert measure.measure(ctx, "t", lambda: broken) == {"status": "error", "note": "RuntimeError: kernel exploded"}
    row = measure.measure(ctx, "t", skipped)
    assert row == {"status": "skipped", "note": "not today"}
    ok = measure.measure(ctx, "t", lambda: (lambda: (torch.ones(2), None)))
    assert ok["status"] == "ok" and ok["ms"] >= 0 and ok["peak_mem_bytes"] is None
    assert torch.equal(ok["value"], torch.ones(2))


def test_memory_guard_and_time_budget(monkeypatch):
    ctx = _ctx()
    monkeypatch.setattr(measure, "free_memory", lambda device: 10_000_000_000)
    ctx.check_memory(1_000_000_000, "small")
    with pytest.raises(Skip, match="needs ~69.0 GB, 10.0 GB free"):
        ctx.check_memory(69_000_000_000, "eager")
    ctx = _ctx(time_budget_s=1e-9)
    with pytest.raises(Skip, match="time budget"):
        ctx.check_budget()


# -------------------------------------------------------------- the harness


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    opts = BenchOptions(preset="cpu-tiny", device="cpu", backends=("torch", "cpu"), progress=False)
    results = run_bench(opts, out_dir=out, log=lambda msg: None)
    return out, results


def test_cpu_tiny_writes_json_table_and_png(tiny_run):
    out, results = tiny_run
    on_disk = json.loads((out / "results.json").read_text())
    meta = on_disk["meta"]
    for key in ("preset", "date", "device", "torch", "fastalign", "copy_bandwidth", "backends", "notes", "options"):
        assert key in meta, key
    assert meta["preset"] == "cpu-tiny" and meta["copy_bandwidth"]["GBps"] > 0
    rows = on_disk["results"]
    assert len(rows) == len(results["results"]) > 0
    for r in rows:
        assert ROW_FIELDS <= set(r), r
        if r["status"] == "ok":
            assert OK_FIELDS <= set(r), r
            assert r["ms_p20"] <= r["ms"] <= r["ms_p80"] and r["GBps"] > 0
    # Every op, phase and both groups were measured, by the torch backend and the eager baseline.
    ok = {(r["group"], r["op"], r["impl"], r["phase"]) for r in rows if r["status"] == "ok"}
    for op in ("kl", "jsd", "hard", "sims"):
        for phase in ("fwd", "bwd", "fwd+bwd"):
            assert ("triplet", op, "torch", phase) in ok
            assert ("triplet", op, "eager", phase) in ok
    assert ("affine", "transform", "affine_transform", "fwd") in ok
    assert ("affine", "teacher-fit", "composed", "fwd+bwd") in ok
    # The unavailable cpu backend (when not built) is reported, not silently dropped.
    cpu_rows = [r for r in rows if r["impl"] == "cpu"]
    assert cpu_rows and all(r["status"] == "ok" or "unavailable" in r["note"] for r in cpu_rows)
    table = (out / "table.md").read_text()
    assert "## Triplet ops" in table and "## Affine teacher transform" in table and "| torch |" in table
    png = (out / "plot.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert _png_width(png) < 1000  # the time panel alone: peak memory is GPU-only
    # Every implementation ran once before the first case, so no case pays the cold start.
    assert meta["warm_up_s"] > 0 and any("cold start" in n for n in meta["notes"])
    assert all("high_variance" in r and "spread" in r for r in rows if r["status"] == "ok")


def test_cpu_tiny_results_are_correct(tiny_run):
    _, results = tiny_run
    for r in results["results"]:
        if r["status"] != "ok":
            continue
        tol = 1e-5 if r["dtype"] == "fp32" else 3e-2
        for key in ("rel_err", "grad_rel_err"):
            if r.get(key) is not None:
                assert r[key] < tol, (r["label"], r["impl"], r["phase"], key, r[key])
    fp32_step = [r for r in results["results"] if r["impl"] == "torch" and r["phase"] == "fwd+bwd"
                 and r["dtype"] == "fp32" and r["group"] == "triplet"]
    assert fp32_step and all(r.get("grad_rel_err") is not None for r in fp32_step)
    gemm = [r for r in results["results"] if r["impl"] == "gemm"]
    assert gemm and gemm[0]["frac_gemm"] == pytest.approx(1.0)
    shares = [r for r in results["results"] if r["impl"] in ("transform-only", "loss-only")]
    assert shares and all(r["share_of_composed"] > 0 for r in shares if r["status"] == "ok")


def test_report_rebuilds_from_json(tiny_run, tmp_path):
    out, _ = tiny_run
    (tmp_path / "results.json").write_bytes((out / "results.json").read_bytes())
    assert report.main([str(tmp_path)]) == 0
    assert (tmp_path / "table.md").read_text().startswith("# fastalign benchmark (cpu-tiny)")
    assert (tmp_path / "plot.png").read_bytes().startswith(PNG_MAGIC)
    assert report.main([str(tmp_path / "missing")]) == 2


def _triton_on_cpu() -> bool:
    info = fastalign.backends()["backends"].get("triton", {})
    return bool(info.get("available")) and "cpu" in info.get("devices", [])


@pytest.mark.skipif(not _triton_on_cpu(), reason="triton backend not available on CPU (needs TRITON_INTERPRET=1)")
def test_harness_runs_triton_under_the_interpreter(tmp_path):
    case = TripletCase("interp", "kl", n=16, d=8, b=24, phases=("fwd+bwd",), baselines=("eager",))
    opts = BenchOptions(preset="cpu-tiny", device="cpu", backends=("triton",), progress=False)
    results = run_bench(opts, out_dir=tmp_path, log=lambda msg: None, cases=[case])
    rows = {r["impl"]: r for r in results["results"]}
    assert rows["triton"]["status"] == "ok", rows["triton"]
    assert rows["triton"]["rel_err"] < 1e-5 and rows["triton"]["grad_rel_err"] < 1e-5


def test_compile_baseline_path(tmp_path):
    # backend="eager" checks the dynamo path in seconds; inductor is the real baseline on a GPU.
    case = TripletCase("compile", "jsd", n=16, d=8, b=24, phases=("fwd+bwd",))
    opts = BenchOptions(preset="cpu-tiny", device="cpu", backends=(), baselines=("eager", "compile"),
                        compile_backend="eager", progress=False)
    results = run_bench(opts, out_dir=tmp_path, log=lambda msg: None, cases=[case])
    row = next(r for r in results["results"] if r["impl"] == "compile[eager]")
    assert row["status"] == "ok", row
    assert row["rel_err"] < 1e-6 and row["grad_rel_err"] < 1e-6 and "compilation" in row["note"]
    assert row["vs_eager"] is not None


def test_eager_baseline_chunks_above_its_budget(tmp_path):
    case = TripletCase("chunks", "kl", n=32, d=16, b=300, phases=("fwd", "bwd", "fwd+bwd"))
    opts = BenchOptions(preset="cpu-tiny", device="cpu", backends=("torch",), eager_budget_bytes=40_000,
                        progress=False)
    rows = run_bench(opts, out_dir=None, log=lambda msg: None, cases=[case])["results"]
    eager = {r["phase"]: r for r in rows if r["impl"] == "eager"}
    assert eager["fwd+bwd"]["status"] == "ok" and eager["fwd+bwd"]["chunks"] > 1
    assert "chunked" in eager["fwd+bwd"]["note"]
    assert eager["bwd"]["status"] == "skipped" and "fwd+bwd" in eager["bwd"]["note"]
    torch_step = next(r for r in rows if r["impl"] == "torch" and r["phase"] == "fwd+bwd")
    assert torch_step["grad_rel_err"] < 1e-5


def test_time_budget_skips_and_still_writes(tmp_path):
    opts = BenchOptions(preset="cpu-tiny", device="cpu", backends=("torch",), time_budget_s=1e-9, progress=False)
    results = run_bench(opts, out_dir=tmp_path, log=lambda msg: None)
    assert results["results"] and all(r["status"] == "skipped" for r in results["results"])
    assert "time budget" in results["results"][0]["note"]
    assert (tmp_path / "plot.png").read_bytes().startswith(PNG_MAGIC)


# ------------------------------------------------------------- bad input


def test_bad_options_and_cases_raise_clear_errors():
    with pytest.raises(ValueError, match="preset must be one of"):
        run_bench(BenchOptions(preset="warp-speed", device="cpu", progress=False))
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        run_bench(BenchOptions(preset="cpu-tiny", device="cpu", backends=("nope",), progress=False))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sized for a GPU"):
            run_bench(BenchOptions(preset="gpu-quick", device="cpu", progress=False))
    with pytest.raises(ValueError, match="op must be one of"):
        TripletCase("x", "mse", n=1, d=1, b=1)
    with pytest.raises(ValueError, match="b must be a positive int"):
        TripletCase("x", "kl", n=1, d=1, b=0)
    with pytest.raises(ValueError, match="phases"):
        TripletCase("x", "kl", n=1, d=1, b=1, phases=("sideways",))
    with pytest.raises(ValueError, match="teacher-fit case needs b"):
        AffineCase("x", "teacher-fit", n=4, d=4)
    with pytest.raises(ValueError, match="baselines"):
        BenchOptions(baselines=("numpy",))
    with pytest.raises(ValueError, match="memory_fraction"):
        BenchOptions(memory_fraction=0)
    with pytest.raises(TypeError, match="TripletCase or AffineCase"):
        run_bench(BenchOptions(preset="cpu-tiny", device="cpu", progress=False), cases=["kl"])


def test_presets_hold_the_issue_cases():
    quick = presets.get_preset("gpu-quick")
    labels = {(c.name, getattr(c, "op", getattr(c, "kind", None)), c.n, c.d, c.b, c.dtype) for c in quick.cases}
    assert ("alignet", "kl", 1_280_000, 1152, 10_000_000, "bf16") in labels
    assert ("things-teacher", "hard", 1854, 1152, 4_700_000, "fp32") in labels
    assert ("distill-step", "kl", 1536, 1024, 512, "bf16") in labels
    assert {c.d for c in quick.cases if c.name == "d-sweep"} == {512, 768, 1024, 1152}
    assert {c.group for c in quick.cases} == {"triplet", "affine"}
    assert quick.time_budget_s is not None
    full = presets.get_preset("gpu-full")
    assert {c.dtype for c in full.cases} == {"fp32", "bf16"}
    assert {c.op for c in full.cases if c.group == "triplet"} == {"kl", "jsd", "hard", "sims"}


# ---------------------------------------------------------------------- CLI


def test_cli_bench_cpu_tiny(tmp_path, capsys):
    from fastalign.cli.main import main

    out = tmp_path / "tmp"
    rc = main(["bench", "--preset", "cpu-tiny", "--out", str(out), "--backends", "torch,cpu", "--quiet"])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["preset"] == "cpu-tiny" and data["results"]
    assert (out / "table.md").read_text().startswith("# fastalign benchmark")
    assert (out / "plot.png").read_bytes().startswith(PNG_MAGIC)


def test_cli_bench_rejects_bad_values(tmp_path, capsys):
    from fastalign.cli.main import main

    assert main(["bench", "--preset", "cpu-tiny", "--out", str(tmp_path), "--time-budget", "-1", "--quiet"]) == 2
    assert "--time-budget must be >= 0" in capsys.readouterr().err
    assert main(["bench", "--preset", "cpu-tiny", "--out", str(tmp_path), "--backends", "warp", "--quiet"]) == 2
    assert "unknown backend 'warp'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "nope"])


# ---------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_harness_on_cuda_tiny(tmp_path):
    """The CUDA paths of the harness (do_bench, events, peak memory, NVTX) on a tiny case."""
    cases = [TripletCase("cuda-tiny", "kl", n=512, d=64, b=4096, dtype="bf16", baselines=("eager",)),
             AffineCase("cuda-tiny", "transform", n=4096, d=64, dtype="bf16", compile=False)]
    opts = BenchOptions(preset="cpu-tiny", device="cuda", baselines=("eager",), progress=False)
    results = run_bench(opts, out_dir=tmp_path, log=lambda msg: None, cases=cases)
    rows = results["results"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok, rows
    bad = [r for r in rows if r["status"] == "error"]
    assert not bad, bad
    for r in ok:
        assert r["timer"] in ("do_bench", "events") and r["peak_mem_bytes"] is not None
        for key in ("rel_err", "grad_rel_err"):  # bf16 inputs, fp32 accumulation
            assert r.get(key) is None or r[key] < 3e-2, (r["impl"], r["phase"], key, r[key])
    assert {r["impl"] for r in ok} >= {"eager", "torch", "affine_transform", "gemm"}
    assert results["meta"]["copy_bandwidth"]["GBps"] > 100
    png = (tmp_path / "plot.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and _png_width(png) > 1000  # time and peak-memory panels


def test_headline_judges_the_issue_targets():
    base = {"group": "triplet", "case": "alignet", "label": "alignet kl", "op": "kl", "dtype": "bf16",
            "phase": "fwd+bwd", "status": "ok"}
    rows = [
        {**base, "impl": "eager", "kind": "baseline", "ms": 100.0},
        {**base, "impl": "compile", "kind": "baseline", "ms": 12.0},
        {**base, "impl": "triton", "kind": "backend", "ms": 5.0, "frac_copy_bw": 0.7},
        {**base, "impl": "cuda", "kind": "backend", "ms": 10.0, "frac_copy_bw": 0.35},
        {**base, "impl": "torch", "kind": "backend", "ms": 50.0, "frac_copy_bw": 0.07},
    ]
    results = {"meta": {}, "results": rows}
    report.add_speedups(rows)
    assert rows[2]["vs_eager"] == pytest.approx(20.0) and rows[2]["vs_compile"] == pytest.approx(2.4)
    text = "\n".join(report.headline(results))
    triton_line = next(line for line in text.splitlines() if "`triton`" in line)
    cuda_line = next(line for line in text.splitlines() if "`cuda`" in line)
    assert "NOT met" not in triton_line and triton_line.count("met") == 3
    assert "35% of copy bandwidth (target >= 60%: NOT met)" in cuda_line
    assert "1.2x torch.compile (target >= 1.5x: NOT met)" in cuda_line
    assert "triton vs cuda: 100% apart (target <= 20%: NOT met)" in text
    assert "`torch`" not in text  # the reference backend is not held to the fused targets
    assert report.headline({"results": []}) == []


def test_report_without_matplotlib_skips_only_the_plot(tiny_run, tmp_path, monkeypatch, capsys):
    import sys

    from fastalign.io import figures

    _, results = tiny_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(figures, "_warned", False)  # the notice is printed once per process
    paths = report.write_all(tmp_path, results)
    assert set(paths) == {"json", "table"} and not (tmp_path / "plot.png").exists()
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["results"]


def test_vit_student_benchmark_runs_at_smoke_sizes():
    """``bench_distill_step.py --vit`` (the GPU ViT-B/16 student table) runs end to end on a CPU."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_distill_step.py"
    spec = importlib.util.spec_from_file_location("bench_distill_step", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.vit_table(quick=True)
    body = [r for r in rows if r.startswith("| ") and "---" not in r][1:]
    assert [r.split(" | ")[0] for r in body] == ["| fastalign two-pass, micro-batch 256",
                                                 "| fastalign two-pass, triplet-dense",
                                                 "| plain PyTorch (gather, one pass)"]
    for r in body:
        triplets_per_s = float(r.split(" | ")[3].replace(",", ""))
        assert triplets_per_s > 0


def test_eval_bench_smoke(tmp_path, capsys):
    """The evaluation benchmark (moved from ``fastalign.eval.bench``) writes its table and JSON."""
    from fastalign.bench import eval_bench

    out, js = tmp_path / "bench.md", tmp_path / "bench.json"
    assert eval_bench.main(["--items", "40", "--dim", "4", "--no-things", "--out", str(out), "--json", str(js)]) == 0
    table = out.read_text()
    assert table.count("\n| ") == 4  # header + 3 rows
    assert "Kendall tau-a" in table and "Kendall tau-a" in capsys.readouterr().out
    rows = json.loads(js.read_text())["rows"]
    assert len(rows) == 3 and all(r["ours_s"] > 0 for r in rows)
    assert all("diff" in r["agree"] for r in rows if r["ref_s"] is not None)
