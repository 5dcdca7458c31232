"""``fastalign info``: version, torch, and what each backend can do here."""

from __future__ import annotations

import json

import torch

import fastalign


def register(sub):
    p = sub.add_parser("info", help="show the version and the available backends")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run)


def _run(args):
    report = {"fastalign": fastalign.__version__, "torch": torch.__version__,
              "cuda_available": torch.cuda.is_available(), **fastalign.backends()}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"fastalign {report['fastalign']}  torch {report['torch']}  cuda available: {report['cuda_available']}")
    for name, info in report["backends"].items():
        state = "ok" if info["available"] else f"unavailable ({info['reason']})"
        print(f"  {name:7s} {','.join(info['devices']):9s} {state}")
    print("  auto:   " + ", ".join(f"{dev} -> {name}" for dev, name in report["auto"].items()))
    return 0
