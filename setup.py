"""Build the optional compiled backends.

- ``fastalign._cpu``: the C++/OpenMP CPU kernels in ``csrc/cpu`` (pybind11, no
  torch headers, so one build serves every torch version and takes seconds).
  Built whenever a C++ compiler is present; if the build fails, the package
  still installs and falls back to the torch backend (``fastalign.backends()``
  says why).
- ``fastalign._cuda``: the CUDA kernels in ``csrc/cuda``, built only when
  ``FASTALIGN_BUILD_CUDA=1`` and ``nvcc`` is found. Architectures are explicit:
  ``FASTALIGN_CUDA_ARCHS`` (default ``80;90``) becomes ``-gencode`` flags.

Environment:
  FASTALIGN_BUILD_CPU=0      skip the CPU extension
  FASTALIGN_BUILD_CUDA=1     build the CUDA extension
  FASTALIGN_CUDA_ARCHS=80;90 compute capabilities to build SASS (+ PTX of the last) for
  FASTALIGN_CPU_MARCH=native value of -march for the CPU kernels ("" to omit)
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

try:
    from pybind11.setup_helpers import Pybind11Extension
except ImportError:  # pybind11 is a build requirement; without it skip the extensions
    Pybind11Extension = None

HERE = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def cuda_gencode_flags(archs: str):
    """``-gencode`` flags: SASS for every arch, plus PTX of the newest for forward compatibility."""
    codes = [a.strip() for a in archs.replace(",", ";").split(";") if a.strip()]
    flags = []
    for code in codes:
        flags += ["-gencode", f"arch=compute_{code},code=sm_{code}"]
    if codes:
        flags += ["-gencode", f"arch=compute_{codes[-1]},code=compute_{codes[-1]}"]
    return flags


def find_nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def find_cuda_home(nvcc):
    """(toolkit root, directory holding libcudart_static.a); nvcc on PATH may be a wrapper script."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda",
                  os.path.dirname(os.path.dirname(nvcc))]
    subs = ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"), os.path.join("targets", "sbsa-linux", "lib"))
    for home in filter(None, candidates):
        for sub in subs:
            if os.path.exists(os.path.join(home, sub, "libcudart_static.a")):
                return home, os.path.join(home, sub)
    home = os.path.dirname(os.path.dirname(nvcc))
    return home, os.path.join(home, "lib64")


class OptionalBuildExt(build_ext):
    """Build each extension if possible; never fail the install because of one.

    ``.cu`` sources are compiled with nvcc into objects that the C++ linker then
    links with the rest of the extension.
    """

    def build_extension(self, ext):
        try:
            if any(s.endswith(".cu") for s in ext.sources):
                self._build_cuda(ext)
            else:
                super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - report and fall back
            if os.environ.get("FASTALIGN_STRICT_BUILD") == "1":
                raise
            sys.stderr.write(f"\nfastalign: skipping {ext.name} ({exc}); the torch backend stays available\n\n")

    def _build_cuda(self, ext):
        nvcc = find_nvcc()
        cu_sources = [s for s in ext.sources if s.endswith(".cu")]
        objects = []
        build_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(build_dir, exist_ok=True)
        archs = cuda_gencode_flags(os.environ.get("FASTALIGN_CUDA_ARCHS", "80;90"))
        for src in cu_sources:
            obj = os.path.join(build_dir, os.path.basename(src) + ".o")
            cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-lineinfo",
                   "-Xcompiler", "-fPIC", *archs, "-Icsrc"]
            subprocess.check_call(cmd, cwd=HERE)
            objects.append(obj)
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        ext.extra_objects = list(ext.extra_objects or []) + objects
        cuda_home, lib_dir = find_cuda_home(nvcc)
        ext.library_dirs = list(ext.library_dirs or []) + [lib_dir]
        ext.include_dirs = list(ext.include_dirs or []) + [os.path.join(cuda_home, "include")]
        # Static runtime: the extension does not depend on libcudart.so.N being on the loader path.
        ext.libraries = list(ext.libraries or []) + ["cudart_static", "dl", "rt", "pthread"]
        super().build_extension(ext)


def extensions():
    if Pybind11Extension is None:
        return []
    exts = []
    if os.environ.get("FASTALIGN_BUILD_CPU", "1") != "0":
        march = os.environ.get("FASTALIGN_CPU_MARCH", "native")
        flags = ["-O3", "-fopenmp", "-ffp-contract=fast"] + ([f"-march={march}"] if march else [])
        sources = _rel(glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp")))
        if sources:
            exts.append(Pybind11Extension(
                "fastalign._cpu", sources, include_dirs=["csrc"], cxx_std=17,
                extra_compile_args=flags, extra_link_args=["-fopenmp"],
            ))
    if os.environ.get("FASTALIGN_BUILD_CUDA") == "1" and find_nvcc():
        sources = _rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu"))
                       + glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cpp")))
        if sources:
            exts.append(Pybind11Extension("fastalign._cuda", sources, include_dirs=["csrc"], cxx_std=17,
                                          extra_compile_args=["-O3"]))
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
