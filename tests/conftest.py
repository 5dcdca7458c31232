import os
import sys

import pytest

# With no GPU, run Triton kernels through the interpreter on CPU tensors. This
# must happen before anything imports triton.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """``run(*argv) -> (rc, stdout, stderr)`` of ``fastalign evaluate``, with only that subcommand
    registered: the CLI must not depend on other subcommands' modules."""
    from fastalign.cli import main as cli_main

    monkeypatch.setattr(cli_main, "COMMANDS", [("evaluate", "evaluate")])

    def run(*argv):
        rc = cli_main.main(["evaluate", *map(str, argv)])
        out, err = capsys.readouterr()
        return rc, out, err

    return run
