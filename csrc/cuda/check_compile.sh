#!/usr/bin/env bash
# Compile every CUDA source for the architectures the package ships (the same
# FASTALIGN_CUDA_ARCHS and nvcc flags that setup.py uses), and syntax-check the
# pybind11 binding (*.cpp) with the host compiler, without linking or running
# anything: a build break fails CI on a machine with no GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v nvcc >/dev/null; then echo "nvcc not found: skipping the CUDA compile check"; exit 0; fi
archs=()
last=""
for a in $(echo "${FASTALIGN_CUDA_ARCHS:-80;90}" | tr ';,' '  '); do
  archs+=(-gencode "arch=compute_$a,code=sm_$a"); last=$a
done
archs+=(-gencode "arch=compute_$last,code=compute_$last")
pyinc=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
pbinc=$(python3 -c 'import pybind11; print(pybind11.get_include())' 2>/dev/null || true)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for f in csrc/cuda/*.cu; do
  echo "nvcc $f"
  nvcc -c "$f" -o "$tmp/$(basename "$f").o" -O3 -std=c++17 -lineinfo -Icsrc "${archs[@]}" \
    -Xcompiler -fPIC -Werror all-warnings
done
if [ -n "$pbinc" ] && ls csrc/cuda/*.cpp >/dev/null 2>&1; then
  cxx=${CXX:-c++}
  for f in csrc/cuda/*.cpp; do
    echo "$cxx -fsyntax-only $f"
    "$cxx" -fsyntax-only -std=c++17 -Wall -Wextra -Werror -Icsrc -I"$pyinc" -I"$pbinc" "$f"
  done
else
  echo "pybind11 not importable: skipping the binding syntax check"
fi
echo "CUDA compile check passed"
