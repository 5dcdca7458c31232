"""The affine group: is the teacher transform at the matmul roofline?

``fastalign.affine_transform`` folds the standardisation into W and b and runs
one ``torch.addmm``. A "transform" case times, on the same (N, D) input:

- ``gemm``: plain ``x @ W`` of the same shape (the roofline to compare with);
- ``affine_transform``: the library op (the fold of W, b included);
- ``addmm-prefolded``: ``torch.addmm`` with constants folded once outside;
- ``unfused-eager``: ``((x - mean) / std) @ W + b`` as written;
- ``unfused-compile``: ``torch.compile`` of the unfused math.

``frac_gemm`` = gemm time / implementation time (1.0 = as fast as the GEMM).

A "teacher-fit" case times forward + backward (in W and b) of
``triplet_loss(affine_transform(x, W, ...), triplets)`` with N small (THINGS:
N=1854), and its halves alone (``transform-only``, ``loss-only``), so
``share_of_composed`` shows how much a fused affine+loss kernel could save at
most; ``eager`` is transform-then-loss in plain PyTorch (the loss chunked like
the triplet baseline).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch

from .. import ops
from ..common.seeds import derive_seed
from . import baselines
from .config import AffineCase, dtype_of
from .measure import Context, Skip, measure, rel_err, skip_note
from .metrics import Work, affine_work, elt_bytes, rates, triplet_work

# Rows of the float64 check of the transform (a sample keeps it cheap at N=1.28M).
_CHECK_ROWS = 4096
# Seed stream of the affine group's inputs (the triplet group has its own).
_AFFINE_STREAM = 2


def _params(case: AffineCase, device: str, seed: int):
    gen = torch.Generator(device=device).manual_seed(derive_seed(seed, _AFFINE_STREAM))
    d, k = case.d, case.cols
    x = torch.randn(case.n, d, device=device, generator=gen).to(dtype_of(case.dtype))
    W = torch.randn(d, k, device=device, generator=gen) * d ** -0.5
    b = torch.randn(k, device=device, generator=gen) * 0.1
    mean = torch.randn(d, device=device, generator=gen) * 0.1
    std = torch.rand(d, device=device, generator=gen) + 0.5
    return gen, x, W, b, mean, std


def _unfused(x, W, b, mean, std):
    return ((x - mean) / std) @ W + b


def transform_rows(ctx: Context, case: AffineCase, matmul_tflops: Optional[float]) -> List[dict]:
    """Time the transform implementations of a "transform" case."""
    device, opts = ctx.device, ctx.options
    elt = elt_bytes(case.dtype)
    try:
        ctx.check_budget()
        ctx.check_memory(2 * case.n * (case.d + case.cols) * elt, "the inputs")
        _, x, W, b, mean, std = _params(case, device, opts.seed)
    except (Skip, torch.cuda.OutOfMemoryError) as exc:
        return [_row(case, "-", "fwd", {"status": "skipped", "note": skip_note(exc)}, None, ctx)]
    dt = x.dtype
    Wc, bc, mc, sc = W.to(dt), b.to(dt), mean.to(dt), std.to(dt)
    Wf, bf = ops.fold_affine(W, b, mean, std)  # checks std once
    Wf, bf = Wf.to(dt), bf.to(dt)
    rows_n = min(case.n, _CHECK_ROWS)
    ref = _unfused(x[:rows_n].double(), W.double(), b.double(), mean.double(), std.double())

    impls: Dict[str, Callable] = {
        "gemm": lambda: x @ Wc,
        # std checked once here, as AffineTransform does: the timed op has no device sync
        "affine_transform": lambda: ops.affine_transform(x, W, b, mean, std, check_std=False),
        "addmm-prefolded": lambda: torch.addmm(bf, x, Wf),
        "unfused-eager": lambda: _unfused(x, Wc, bc, mc, sc),
    }
    wants_compile = case.compile and (opts.baselines is None or "compile" in opts.baselines)
    if wants_compile:
        torch._dynamo.reset()
        compiled = torch.compile(_unfused, backend=opts.compile_backend, dynamic=False)
        name = "unfused-compile" if opts.compile_backend == "inductor" else f"unfused-compile[{opts.compile_backend}]"
        impls[name] = lambda: compiled(x, Wc, bc, mc, sc)

    out: List[dict] = []
    gemm_ms = None
    for name, call in impls.items():
        def build(call=call):
            ctx.check_memory(2 * case.n * case.cols * elt, name)

            def run():
                with torch.no_grad():
                    return call(), None
            return run
        result = measure(ctx, f"{case.label}/{name}", build)
        if result["status"] == "ok":
            value = result.get("value")
            if opts.check and value is not None and name != "gemm":  # gemm omits mean/std/b by design
                result["rel_err"] = rel_err(value[:rows_n], ref)
            if name == "gemm":
                gemm_ms = result["ms"]
        row = _row(case, name, "fwd", result, affine_work(case.n, case.d, case.cols, case.dtype), ctx)
        if row["status"] == "ok":
            row["frac_gemm"] = gemm_ms / row["ms"] if gemm_ms else None
            row["frac_matmul_peak"] = row["TFLOPs"] / matmul_tflops if matmul_tflops else None
        out.append(row)
    return out


def teacher_fit_rows(ctx: Context, case: AffineCase) -> List[dict]:
    """Time composed / halves / eager of a "teacher-fit" case (forward + backward in W, b)."""
    # Longer than most: the four implementations are closures over the same inputs and
    # parameters, defined side by side so that it is plain they compute the same step.
    device, opts = ctx.device, ctx.options
    try:
        ctx.check_budget()
        ctx.check_memory(case.b * 48 + 4 * case.n * case.cols * 4, "the inputs")
        gen, x, W, b, mean, std = _params(case, device, opts.seed)
        trip = torch.randint(0, case.n, (case.b, 3), device=device, generator=gen)
    except (Skip, torch.cuda.OutOfMemoryError) as exc:
        return [_row(case, "-", "fwd+bwd", {"status": "skipped", "note": skip_note(exc)}, None, ctx)]
    Wp, bp = W.detach().requires_grad_(True), b.detach().requires_grad_(True)
    gz = torch.randn(case.n, case.cols, device=device, generator=gen).to(x.dtype)
    k = case.cols
    gemm = Work(0, 4.0 * case.n * case.d * k)  # forward GEMM + dW = x^T dz
    t_bytes = (case.n * case.d + 2 * case.n * k) * elt_bytes(case.dtype) + 2 * (case.d * k + k) * 4
    loss_work = triplet_work("hard", "fwd+bwd", case.n, k, case.b, case.dtype)
    works = {
        "composed": Work(t_bytes + loss_work.bytes, gemm.flops + loss_work.flops),
        "transform-only": Work(t_bytes, gemm.flops),
        "loss-only": loss_work,
        "eager": Work(t_bytes + loss_work.bytes, gemm.flops + loss_work.flops),
    }

    def composed():
        loss = ops.triplet_loss(ops.affine_transform(x, Wp, bp, mean, std, check_std=False), trip)
        gW, gb = torch.autograd.grad(loss, [Wp, bp])
        return loss.detach(), gW

    def transform_only():
        z = ops.affine_transform(x, Wp, bp, mean, std, check_std=False)
        torch.autograd.grad(z, [Wp, bp], gz)
        return None, None

    with torch.no_grad():
        z_leaf = ops.affine_transform(x, W, b, mean, std)
    z_leaf.requires_grad_(True)

    def loss_only():
        loss = ops.triplet_loss(z_leaf, trip)
        torch.autograd.grad(loss, z_leaf)
        return None, None

    per = baselines.workspace_bytes(1, k, elt_bytes(case.dtype), True)
    chunk = baselines.plan_chunks(case.b, max(1, ctx.eager_budget() // per))
    loss_fn = baselines.objective("hard")

    def eager():
        z = _unfused(x, Wp.to(x.dtype), bp.to(x.dtype), mean.to(x.dtype), std.to(x.dtype))
        zl = z.detach().requires_grad_(True)
        loss, dz = baselines.ChunkedObjective(loss_fn, "hard", zl, trip, None, chunk).forward_backward()
        gW, gb = torch.autograd.grad(z, [Wp, bp], dz)
        return loss, gW

    impls = {"eager": eager, "composed": composed, "transform-only": transform_only, "loss-only": loss_only}
    fused = getattr(ops, "affine_triplet_loss", None)
    if fused is not None:  # a fused affine + loss op, when the library grows one
        def fused_call():
            loss = fused(x, Wp, trip, b=bp, mean=mean, std=std)
            gW, gb = torch.autograd.grad(loss, [Wp, bp])
            return loss.detach(), gW
        impls["fused"] = fused_call
        works["fused"] = works["composed"]

    out: List[dict] = []
    ref_loss = ref_grad = None
    composed_ms = None
    n_chunks = -(-case.b // chunk)
    for name, call in impls.items():
        result = measure(ctx, f"{case.label}/{name}", lambda call=call: call)
        if result["status"] == "ok":
            if name == "eager":
                ref_loss, ref_grad = result.get("value"), result.get("grad")
            elif opts.check and name in ("composed", "fused"):
                result["rel_err"] = rel_err(result.get("value"), ref_loss)
                result["grad_rel_err"] = rel_err(result.get("grad"), ref_grad)
            if name == "composed":
                composed_ms = result["ms"]
        row = _row(case, name, "fwd+bwd", result, works[name], ctx)
        if name == "eager":
            row["chunks"] = n_chunks
            if n_chunks > 1:
                row["note"] = (row.get("note") or "") + f"loss chunked: {n_chunks} chunks of {chunk} triplets"
        out.append(row)
    for row in out:
        if row["status"] == "ok" and composed_ms and row["impl"] in ("transform-only", "loss-only"):
            row["share_of_composed"] = row["ms"] / composed_ms
    return out


def _row(case: AffineCase, impl: str, phase: str, result: dict, work: Optional[Work], ctx: Context) -> dict:
    row = {"group": "affine", "case": case.name, "label": case.label, "op": case.kind, "n": case.n, "d": case.d,
           "d_out": case.cols, "b": case.b, "dtype": case.dtype, "impl": impl,
           "kind": "backend" if impl in ("affine_transform", "composed", "fused") else "baseline",
           "phase": phase, **{k: v for k, v in result.items() if k not in ("value", "grad")}}
    if work is not None:
        row["bytes"], row["flops"] = work.bytes, work.flops
        if row["status"] == "ok":
            row.update(rates(work, row["ms"], ctx.copy_gbps))
    ctx.log(f"  {impl:18s} {phase:7s} " + (f"{row['ms']:.3f} ms" if row["status"] == "ok"
                                               else f"{row['status']}: {row['note']}"))
    return row


def run_case(ctx: Context, case: AffineCase, matmul_tflops: Optional[float]) -> List[dict]:
    """Rows of one affine case."""
    if case.kind == "transform":
        return transform_rows(ctx, case, matmul_tflops)
    return teacher_fit_rows(ctx, case)
