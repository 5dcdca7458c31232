"""The triplet group: every implementation and phase of one ``TripletCase``.

Implementations, in the order they run:

1. ``eager``: the baseline in ``baselines.py`` (chunked when its (B, 3, D)
   gather would not fit the eager budget). It runs first because its outputs
   are the reference every other implementation is checked against.
2. each library backend (``fastalign.backends()`` that is available for the
   device), through the public ops: ``triplet_distill_loss`` (kl, jsd),
   ``triplet_loss`` (hard) and ``triplet_similarities`` (sims);
3. ``compile``: ``torch.compile`` of the eager function (same chunking).

Phases: "fwd" runs without a graph; "bwd" times ``torch.autograd.grad`` on a
graph built once (for the library's reduced losses the gradient is computed
inside the fused forward, so this is only the scaling by the upstream
gradient); "fwd+bwd" is a full step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from .. import ops
from ..common.seeds import derive_seed
from . import baselines
from .config import TripletCase, dtype_of
from .measure import Context, Skip, measure, rel_err, skip_note
from .metrics import elt_bytes, rates, triplet_work

# Rows of torch_ref's chunk and the fp32 copies it holds (workspace estimate).
_TORCH_REF_CHUNK = 16384
# Seed stream of the triplet group's inputs (the affine group has its own).
_TRIPLET_STREAM = 1


@dataclass
class Inputs:
    """Random inputs of one case (the same for every implementation)."""

    emb: torch.Tensor
    trip: torch.Tensor
    target: Optional[torch.Tensor]
    grad_out: Optional[torch.Tensor]


def make_inputs(case: TripletCase, device: str, seed: int) -> Inputs:
    """Embeddings scaled so dot similarities are O(1), uniform random triplets,
    random softmax targets for the distillation losses and a random (B, 3)
    upstream gradient for the similarities."""
    gen = torch.Generator(device=device).manual_seed(derive_seed(seed, _TRIPLET_STREAM))
    dtype = dtype_of(case.dtype)
    emb = (torch.randn(case.n, case.d, device=device, generator=gen) * case.d ** -0.25).to(dtype)
    trip = torch.randint(0, case.n, (case.b, 3), device=device, generator=gen)
    target = None
    if case.op in ("kl", "jsd"):
        target = torch.softmax(torch.randn(case.b, 3, device=device, generator=gen), dim=1)
    grad_out = torch.randn(case.b, 3, device=device, generator=gen) if case.op == "sims" else None
    return Inputs(emb, trip, target, grad_out)


def available_backends(device: str, wanted: Optional[tuple]) -> Dict[str, Optional[str]]:
    """Library backends for ``device``: name -> None if usable, else why not."""
    report = ops.backends()["backends"]
    out: Dict[str, Optional[str]] = {}
    for name, info in report.items():
        if wanted is not None and name not in wanted:
            continue
        if device not in info["devices"]:
            if wanted is not None:
                out[name] = f"runs on {info['devices']}, not {device}"
            continue
        out[name] = None if info["available"] else f"unavailable: {info['reason']}"
    if wanted is not None:
        for name in wanted:
            if name not in report:
                raise ValueError(f"unknown backend {name!r}; expected some of {list(report)}")
    return out


def library_call(case: TripletCase, backend: str) -> Callable:
    """``f(emb, trip, target)`` through the public op for ``case.op``."""
    sim = case.similarity
    if case.op in ("kl", "jsd"):
        return lambda e, t, p: ops.triplet_distill_loss(e, t, target_probs=p, divergence=case.op,
                                                        similarity=sim, backend=backend)
    if case.op == "hard":
        return lambda e, t, p: ops.triplet_loss(e, t, similarity=sim, backend=backend)
    return lambda e, t, p: ops.triplet_similarities(e, t, similarity=sim, backend=backend)


def _grad(out: torch.Tensor, emb: torch.Tensor, grad_out: Optional[torch.Tensor], retain: bool = False):
    go = grad_out if out.dim() > 0 else None
    (g,) = torch.autograd.grad(out, emb, go, retain_graph=retain)
    return g


def _library_build(case: TripletCase, inp: Inputs, backend: str, phase: str):
    fn = library_call(case, backend)

    def build():
        if phase == "fwd":
            emb = inp.emb.detach()

            def run():
                with torch.no_grad():
                    return fn(emb, inp.trip, inp.target), None
            return run
        emb = inp.emb.detach().requires_grad_(True)
        if phase == "fwd+bwd":
            def run():
                out = fn(emb, inp.trip, inp.target)
                return out.detach(), _grad(out, emb, inp.grad_out)
            return run
        out = fn(emb, inp.trip, inp.target)  # bwd: graph built once, outside the timed call
        return lambda: (None, _grad(out, emb, inp.grad_out, retain=True))
    return build


def _baseline_build(case: TripletCase, inp: Inputs, fn: Callable, chunk: int, phase: str):
    def build():
        if phase == "fwd":
            runner = baselines.ChunkedObjective(fn, case.op, inp.emb.detach(), inp.trip, inp.target, chunk)
            return lambda: (runner.forward(), None)
        emb = inp.emb.detach().requires_grad_(True)
        runner = baselines.ChunkedObjective(fn, case.op, emb, inp.trip, inp.target, chunk, inp.grad_out)
        if phase == "fwd+bwd":
            return runner.forward_backward
        if runner.n_chunks != 1:
            raise Skip(f"backward alone is not measurable in {runner.n_chunks} chunks; see fwd+bwd")
        out = runner.graph()
        return lambda: (None, _grad(out, emb, inp.grad_out, retain=True))
    return build


def _eager_chunk(ctx: Context, case: TripletCase, with_grad: bool) -> int:
    """Triplets per chunk so the baseline's workspace stays in the eager budget."""
    per = baselines.workspace_bytes(1, case.d, elt_bytes(case.dtype), with_grad)
    return baselines.plan_chunks(case.b, max(1, ctx.eager_budget() // per))


def _memory_need(case: TripletCase, impl: str, phase: str, chunk: int) -> int:
    """Estimated bytes an implementation allocates beyond the inputs."""
    elt = elt_bytes(case.dtype)
    nd = case.n * case.d
    grad = 0 if phase == "fwd" else nd * (4 + elt)  # fp32 accumulation buffer + emb-dtype copy
    small = case.b * 64  # per-triplet loss, dsim, checks
    if impl == "eager" or impl.startswith("compile"):
        return baselines.workspace_bytes(chunk, case.d, elt, phase != "fwd") + 2 * nd * elt * (phase != "fwd") + small
    if impl == "torch":
        return grad + small + baselines.workspace_bytes(min(case.b, _TORCH_REF_CHUNK), case.d, elt, True)
    return grad + small


def run_case(ctx: Context, case: TripletCase, backends: Dict[str, Optional[str]]) -> List[dict]:
    """Measure every implementation and phase of ``case``; one row each."""
    # Longer than most: the nested helpers share this case's inputs, its rows and the eager
    # reference the later implementations are checked against; split out, each would take
    # all of them as arguments and the order (eager first, compile last) would be less visible.
    opts, device = ctx.options, ctx.device
    wanted_baselines = case.baselines if opts.baselines is None else tuple(
        b for b in case.baselines if b in opts.baselines)
    base = {"group": "triplet", "case": case.name, "label": case.label, "op": case.op, "n": case.n,
            "d": case.d, "b": case.b, "dtype": case.dtype, "similarity": case.similarity}
    rows: List[dict] = []

    def add(impl: str, kind: str, phase: str, result: dict, extra_note: str = "", chunks: Optional[int] = None):
        work = triplet_work(case.op, phase, case.n, case.d, case.b, case.dtype, case.similarity)
        row = {**base, "impl": impl, "kind": kind, "phase": phase, "bytes": work.bytes, "flops": work.flops,
               "chunks": chunks, **{k: v for k, v in result.items() if k not in ("value", "grad")}}
        if extra_note:
            row["note"] = (row.get("note") or "") + ("; " if row.get("note") else "") + extra_note
        if row["status"] == "ok":
            row.update(rates(work, row["ms"], ctx.copy_gbps))
            if impl.startswith("compile"):
                first = f"first call {row['first_call_ms'] / 1e3:.1f} s (compilation)"
                row["note"] = (row.get("note") or "") + ("; " if row.get("note") else "") + first
        rows.append(row)
        ctx.log(f"  {impl:8s} {phase:7s} " + (f"{row['ms']:.3f} ms" if row["status"] == "ok"
                                                 else f"{row['status']}: {row['note']}"))

    try:
        ctx.check_budget()  # before spending seconds on random inputs
        ctx.check_memory(case.n * case.d * elt_bytes(case.dtype) + case.b * 48, "the inputs")
        inp = make_inputs(case, device, opts.seed)
    except (Skip, torch.cuda.OutOfMemoryError) as exc:
        note = skip_note(exc)
        for phase in case.phases:
            add("-", "inputs", phase, {"status": "skipped", "note": note})
        return rows

    refs: Dict[str, Optional[torch.Tensor]] = {"fwd": None, "grad": None}

    def check(result: dict, phase: str):
        if result["status"] != "ok" or not opts.check:
            return
        value, grad = result.get("value"), result.get("grad")
        result["rel_err"] = rel_err(value, refs["fwd"]) if phase != "bwd" else None
        result["grad_rel_err"] = rel_err(grad, refs["grad"]) if phase != "fwd" else None

    def run_baseline(impl: str, fn: Callable, phases):
        for phase in phases:
            chunk = _eager_chunk(ctx, case, phase != "fwd")
            n_chunks = -(-case.b // chunk)
            note = ""
            if n_chunks > 1:
                full = baselines.workspace_bytes(case.b, case.d, elt_bytes(case.dtype), phase != "fwd")
                note = f"chunked: {n_chunks} chunks of {chunk} triplets (unchunked needs ~{full / 1e9:.3g} GB)"
            tag = f"{case.label}/{impl}/{phase}"

            def build(phase=phase, chunk=chunk):
                ctx.check_memory(_memory_need(case, impl, phase, chunk), impl)
                return _baseline_build(case, inp, fn, chunk, phase)()
            result = measure(ctx, tag, build)
            if impl == "eager" and result["status"] == "ok":
                # The eager outputs are the reference: the first loss / similarities and gradient seen.
                if refs["fwd"] is None and result["value"] is not None:
                    refs["fwd"] = result["value"]
                if refs["grad"] is None and result["grad"] is not None:
                    refs["grad"] = result["grad"]
            check(result, phase)
            add(impl, "baseline", phase, result, note, n_chunks)

    if "eager" in wanted_baselines:
        run_baseline("eager", baselines.objective(case.op, case.similarity == "cosine"), case.phases)

    for name, why_not in backends.items():
        if why_not is not None and opts.backends is None:
            continue  # not asked for by name: listed once in the run's notes instead
        for phase in case.phases:
            if why_not is not None:
                add(name, "backend", phase, {"status": "skipped", "note": why_not})
                continue

            def build(name=name, phase=phase):
                ctx.check_memory(_memory_need(case, name, phase, 0), name)
                return _library_build(case, inp, name, phase)()
            result = measure(ctx, f"{case.label}/{name}/{phase}", build)
            check(result, phase)
            add(name, "backend", phase, result)

    if "compile" in wanted_baselines:
        phases = tuple(p for p in case.phases if p in case.compile_phases)
        if phases:
            torch._dynamo.reset()  # a fresh cache per case: no silent fallback at the recompile limit
            fn = torch.compile(baselines.objective(case.op, case.similarity == "cosine"),
                               backend=opts.compile_backend, dynamic=False)
            impl = "compile" if opts.compile_backend == "inductor" else f"compile[{opts.compile_backend}]"
            run_baseline(impl, fn, phases)
    return rows
