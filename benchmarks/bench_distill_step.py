"""Benchmark the distillation step: memory, throughput, the loss's share.

    python benchmarks/bench_distill_step.py            # full sizes
    python benchmarks/bench_distill_step.py --quick    # smoke sizes
    python benchmarks/bench_distill_step.py --out bench_distill.md

1. **Memory**: peak extra memory of one step (forward, loss, backward) at
   4096 vs 512 triplets with a fixed micro-batch, for the two-pass step, the
   naive single-pass step (one autograd graph) and a plain PyTorch step
   (embed every triplet slot, gather-based loss). Each case runs in a fresh
   subprocess (with ``MALLOC_MMAP_THRESHOLD_`` fixed so freed blocks leave
   the resident set); the number is ``VmHWM - VmRSS`` around the step (the
   peak resident set is reset through ``/proc/self/clear_refs`` after a
   warm-up step, once the inputs and the model exist), so it measures the
   step's working memory, not the inputs. On CUDA the same is
   ``torch.cuda.max_memory_allocated``.
2. **Throughput**: triplets/s of ``two_pass_step`` + optimiser against the
   plain loop at equal batch, for a small CNN on images and for a
   ``FeatureStudent``.
3. **Loss cost**: the loss phase's share of the two-pass step time.
4. **ViT-B/16 student** (``--vit``, for a GPU): AligNet's setting, 512
   random triplets a step over a large image pool (about 1,500 distinct
   images), bf16 autocast. Triplets/s, images/s, peak memory and the loss's
   share for the two-pass step (micro-batch 256), the triplet-dense two-pass
   step (512 images, 2,048 triplets among them) and the plain PyTorch step
   (all 3B slots in one autograd pass, gather loss). The ViT-B/16 is defined
   here (patch 16, width 768, depth 12, 12 heads, MLP 3072, cls pooling), so
   the run needs neither timm nor weights.

Prints a markdown table (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from fastalign.bench.memory import PeakMemory, PeakRSS  # noqa: E402
from fastalign.bench.timing import time_interleaved  # noqa: E402
from fastalign.distill import (  # noqa: E402
    DecayToInitAdam,
    FeatureStudent,
    StepBatch,
    StepOptions,
    single_pass_step,
    two_pass_step,
)
from fastalign.io import atomic_write_text  # noqa: E402


def make_cnn(channels: int, out_dim: int = 64) -> nn.Module:
    """A small CNN on (n, 3, 16, 16) whose activations dominate its inputs."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.Dropout(0.1),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, out_dim),
    )


def make_batch(n_triplets: int, pool: int, seed: int = 0) -> StepBatch:
    """Random triplets over ``pool`` items; one image per unique item."""
    gen = torch.Generator().manual_seed(seed)
    trip = torch.randint(0, pool, (n_triplets, 3), generator=gen)
    items, inverse = torch.unique(trip.reshape(-1), return_inverse=True)
    images = torch.randn(items.shape[0], 3, 16, 16, generator=gen)
    return StepBatch(inputs=images, triplets=inverse.view(-1, 3), target_sims=torch.randn(n_triplets, 3, generator=gen),
                     items=items)


def plain_step(model: nn.Module, batch: StepBatch, opts: StepOptions):
    """The plain PyTorch step: embed all 3B triplet slots in one autograd pass,
    gather-based similarities, log-softmax KL/JSD, backward."""
    x = batch.inputs[batch.triplets.reshape(-1)]
    e = model(x).float().view(-1, 3, model_out_dim(model))
    a, b, c = e[:, 0], e[:, 1], e[:, 2]
    s = torch.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], 1)
    logq = torch.log_softmax(s / opts.temperature, 1)
    p = torch.softmax(batch.target_sims / opts.teacher_temperature, 1)
    if opts.divergence == "kl":
        loss = (p * (p.clamp_min(1e-30).log() - logq)).sum(1).mean()
    else:
        q = logq.exp()
        m = (p + q) / 2
        loss = 0.5 * ((p * (p.clamp_min(1e-30) / m).log()).sum(1) + (q * (q / m).log()).sum(1)).mean()
    loss.backward()
    return float(loss.detach())


def model_out_dim(model: nn.Module) -> int:
    for m in reversed(list(model.modules())):
        if isinstance(m, nn.Linear):
            return m.out_features
    raise ValueError("no Linear output layer")


STEP_FNS = {"two_pass": two_pass_step, "single_pass": single_pass_step, "plain": None}


def measure_memory(mode: str, n_triplets: int, micro: int, channels: int, pool: int) -> Dict[str, float]:
    """Run one step of ``mode`` and return its peak extra memory (bytes)."""
    torch.manual_seed(0)
    model = make_cnn(channels)
    batch = make_batch(n_triplets, pool)
    opts = StepOptions(micro_batch=micro, temperature=1.0)
    # Warm-up on a tiny batch: loads kernels and libraries, so the measured
    # step sees only its own working memory.
    small = make_batch(8, pool, seed=1)
    if mode == "plain":
        plain_step(model, small, opts)
    else:
        STEP_FNS[mode](model, small, opts)
    model.zero_grad(set_to_none=True)
    cuda = torch.cuda.is_available()
    if cuda:
        model.cuda()
    with (PeakMemory("cuda") if cuda else PeakRSS()) as meter:
        if mode == "plain":
            plain_step(model, batch, opts)
        else:
            STEP_FNS[mode](model, batch, opts)
    peak = meter.bytes
    return {"peak_bytes": float(peak), "items": int(batch.inputs.shape[0])}


def memory_table(quick: bool) -> List[str]:
    # Quick sizes are a smoke run: their activations are so small that the
    # (items x D) embedding and gradient buffers show in the ratio.
    channels = 8 if quick else 32
    micro = 128 if quick else 256
    sizes = (512, 4096)
    rows = ["| step | triplets | unique items | micro-batch | peak extra memory (MiB) |", "|---|---|---|---|---|"]
    results = {}
    for mode in ("two_pass", "single_pass", "plain"):
        for n in sizes:
            cmd = [sys.executable, os.path.abspath(__file__), "--_measure", mode, str(n), str(micro), str(channels)]
            # A fixed mmap threshold makes glibc return every large freed block to
            # the OS, so the resident set tracks live memory; with the default
            # (dynamic) threshold, freed activations stay in the heap and the
            # peak RSS measures fragmentation that grows with the number of
            # micro-batches, not what the step holds.
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                       MALLOC_MMAP_THRESHOLD_="131072")
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            results[(mode, n)] = res["peak_bytes"]
            rows.append(f"| {mode} | {n} | {res['items']} | {micro} | {res['peak_bytes'] / 2**20:.1f} |")
    rows.append("")
    for mode in ("two_pass", "single_pass", "plain"):
        lo, hi = results[(mode, sizes[0])], results[(mode, sizes[1])]
        rows.append(f"- {mode}: {sizes[1]} vs {sizes[0]} triplets: x{hi / max(lo, 1):.2f} "
                    f"({100 * (hi - lo) / max(lo, 1):+.1f}%)")
    return rows


def _best_seconds(fns: List, repeats: int) -> List[float]:
    """Best-of-``repeats`` seconds per call, the calls interleaved so that a change in
    machine load hits every contender alike (the harness's ``time_interleaved``)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return [st.min_ms / 1e3 for st in time_interleaved(fns, repeats, device)]


def throughput_table(quick: bool) -> List[str]:
    repeats = 3 if quick else 10
    n = 512
    rows = ["| student | step | triplets/step | triplets/s | loss share of step |", "|---|---|---|---|---|"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = []
    torch.manual_seed(0)
    cnn = make_cnn(8 if quick else 32).to(device)
    cases.append(("CNN 16x16", cnn, make_batch(n, 20000)))
    feats = torch.randn(1854, 300)
    fs = FeatureStudent(feats, head="linear", out_dim=1024).to(device)
    gen = torch.Generator().manual_seed(1)
    trip = torch.randint(0, 1854, (n, 3), generator=gen)
    items, inv = torch.unique(trip.reshape(-1), return_inverse=True)
    cases.append(("FeatureStudent 300->1024", fs,
                  StepBatch(inputs=items, triplets=inv.view(-1, 3), target_sims=torch.randn(n, 3, generator=gen))))
    opts = StepOptions(micro_batch=256, temperature=1.0)
    for name, model, batch in cases:
        opt = DecayToInitAdam(model.parameters(), lr=1e-4)
        shares = []

        def ours():
            opt.zero_grad(set_to_none=True)
            res = two_pass_step(model, batch, opts)
            opt.step()
            total = sum(res.times.values())
            shares.append(res.times["loss"] / total if total else 0.0)

        def plain():
            opt.zero_grad(set_to_none=True)
            if isinstance(model, nn.Sequential):
                plain_step(model, batch, opts)
            else:  # FeatureStudent: index features per slot
                e = model(batch.inputs[batch.triplets.reshape(-1)]).view(-1, 3, 1024)
                a, b, c = e[:, 0], e[:, 1], e[:, 2]
                s = torch.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], 1)
                logq = torch.log_softmax(s, 1)
                p = torch.softmax(batch.target_sims, 1)
                q = logq.exp()
                m = (p + q) / 2
                (0.5 * ((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1)).mean()).backward()
            opt.step()

        def single():
            opt.zero_grad(set_to_none=True)
            single_pass_step(model, batch, opts)
            opt.step()

        t_ours, t_single, t_plain = _best_seconds([ours, single, plain], repeats)
        share = sum(shares[1:]) / max(1, len(shares) - 1)
        rows.append(f"| {name} | fastalign two-pass | {n} | {n / t_ours:,.0f} | {100 * share:.1f}% |")
        rows.append(f"| {name} | fastalign single-pass (fused loss) | {n} | {n / t_single:,.0f} | - |")
        rows.append(f"| {name} | plain PyTorch (gather, one pass) | {n} | {n / t_plain:,.0f} | - |")
    return rows


class ViT(nn.Module):
    """A pre-norm ViT (ViT-B/16 by default) with cls pooling and a linear head."""

    def __init__(self, image_size: int = 224, patch: int = 16, width: int = 768, depth: int = 12, heads: int = 12,
                 out_dim: int = 1024):
        super().__init__()
        self.patch = nn.Conv2d(3, width, patch, stride=patch)
        tokens = (image_size // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_dim)  # AligNet's new Linear(D, 1024)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.blocks(t)[:, 0]))


def vit_table(quick: bool) -> List[str]:
    """ViT student throughput: two-pass, triplet-dense two-pass and plain PyTorch at 512 triplets a step."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, depth, n, repeats = (32, 2, 64, 2) if quick else (224, 12, 512, 3)
    micro = 256
    torch.manual_seed(0)
    model = ViT(size, depth=depth).to(device)
    opts = StepOptions(micro_batch=micro, temperature=100.0, amp=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)

    def batch_of(n_trip: int, pool: int) -> StepBatch:
        trip = torch.randint(0, pool, (n_trip, 3), generator=gen)
        items, inverse = torch.unique(trip.reshape(-1), return_inverse=True)
        return StepBatch(inputs=torch.randn(items.shape[0], 3, size, size, generator=gen).to(device),
                         triplets=inverse.view(-1, 3).to(device),
                         target_sims=torch.randn(n_trip, 3, generator=gen).to(device), items=items)

    random_batch = batch_of(n, 1_000_000)
    dense_batch = batch_of(4 * n, n)  # about n distinct images, 4n triplets among them
    opt = DecayToInitAdam(model.parameters(), lr=1e-5)
    shares: Dict[str, List[float]] = {"random": [], "dense": []}

    def two_pass(batch: StepBatch, key: str):
        def run():
            opt.zero_grad(set_to_none=True)
            res = two_pass_step(model, batch, opts)
            opt.step()
            total = sum(res.times.values())
            shares[key].append(res.times["loss"] / total if total else 0.0)
        return run

    def plain():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=opts.amp):
            plain_step(model, random_batch, StepOptions(temperature=100.0))
        opt.step()

    rows = ["| step | images/step | triplets/step | triplets/s | images/s | peak memory (GiB) | loss share |",
            "|---|---|---|---|---|---|---|"]
    cases = [("fastalign two-pass, micro-batch 256", two_pass(random_batch, "random"), random_batch, "random"),
             ("fastalign two-pass, triplet-dense", two_pass(dense_batch, "dense"), dense_batch, "dense"),
             ("plain PyTorch (gather, one pass)", plain, random_batch, None)]
    for name, fn, batch, key in cases:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            (t,) = _best_seconds([fn], repeats)
        except torch.OutOfMemoryError:
            rows.append(f"| {name} | - | - | out of memory | - | - | - |")
            continue
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device.type == "cuda" else "-"
        n_items = batch.inputs.shape[0] if key else 3 * batch.triplets.shape[0]
        n_trip = batch.triplets.shape[0]
        share = f"{100 * sum(shares[key][1:]) / max(1, len(shares[key]) - 1):.2f}%" if key else "-"
        rows.append(f"| {name} | {n_items:,} | {n_trip:,} | {n_trip / t:,.0f} | {n_items / t:,.0f} | {peak} | "
                    f"{share} |")
    rows.append("")
    rows.append(f"ViT width 768, depth {depth}, image {size}, {'bf16 autocast' if opts.amp else 'fp32'}; "
                f"best of {repeats} steps after a warm-up.")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--out", help="also write the markdown here")
    parser.add_argument("--vit", action="store_true", help="only the ViT-B/16 student table (meant for a GPU)")
    parser.add_argument("--_measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._measure:
        mode, n, micro, channels = args._measure
        print(json.dumps(measure_memory(mode, int(n), int(micro), int(channels), pool=200000)))
        return 0
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    lines = [f"# Distillation step benchmark ({device}, torch {torch.__version__}, threads "
             f"{torch.get_num_threads()}{', quick' if args.quick else ''})", ""]
    if args.vit:
        lines += ["## ViT-B/16 student", ""] + vit_table(args.quick)
    else:
        lines += ["## Peak memory of one step", ""] + memory_table(args.quick)
        lines += ["", "## Throughput and loss share", ""] + throughput_table(args.quick)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
