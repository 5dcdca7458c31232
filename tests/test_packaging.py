"""An sdist holds every tracked file its build and its documentation need.

Before MANIFEST.in the sdist had csrc/cpu/bindings.cpp but not the headers it includes, so
``pip install fastalign-*.tar.gz`` compiled nothing and fell back to the torch backend without a
word; and the example configs were missing.
"""

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked() -> list:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.splitlines() if (ROOT / p).is_file()]


def test_the_sdist_holds_the_sources_headers_and_examples(tmp_path):
    tracked = _tracked()
    src = tmp_path / "src"
    for p in tracked:  # the tracked tree only: no build outputs, no egg-info of this checkout
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / p, src / p)
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src,
                   check=True, capture_output=True)
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    wanted = [p for p in tracked if p.startswith(("csrc/", "examples/", "fastalign/"))]
    assert any(p.endswith(".h") for p in wanted) and any(p.startswith("examples/") for p in wanted)
    missing = sorted(set(wanted) - names)
    assert not missing, f"the sdist lacks {missing}"
