#!/usr/bin/env bash
# Run the gpu tests of tests/test_backend_cuda.py on CPU against a host
# emulation of the CUDA kernels (no GPU, no nvcc needed): every lane is a
# std::thread and every warp shuffle a barrier, so index math, bounds, the
# vector/scalar load paths, shuffle participation (all 32 lanes, same count)
# and the numerics are checked against the float64 reference. Slow (minutes):
# sizes are small and the >2^31-element test is left out.
#
#   bash csrc/cuda/emu/run.sh [extra pytest args, e.g. -k fused]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
build=${FASTALIGN_EMU_BUILD:-/tmp/fastalign_emu}
rm -rf "$build" && mkdir -p "$build/src" "$build/pkg" "$build/run"
cp "$repo"/csrc/cuda/*.h "$repo"/csrc/cuda/*.cuh "$repo"/csrc/cuda/*.cpp "$build/src/"
for f in "$repo"/csrc/cuda/*.cu; do
  # `kernel<...><<<grid, kThreads, 0, stream>>>(args);` -> `emu_launch(grid, kThreads, kernel<...>, args);`
  python3 - "$f" "$build/src/$(basename "$f" .cu)_emu.cpp" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
s = re.sub(r'(\w+<[^<>;]*>)<<<(.*?),\s*kThreads,\s*0,\s*stream>>>\((.*?)\);',
           lambda m: f'emu_launch({m.group(2)}, kThreads, {m.group(1)}, {m.group(3)});', s, flags=re.S)
assert '<<<' not in s, "a kernel launch the emulator does not understand"
open(sys.argv[2], 'w').write(s)
PY
done
pyinc=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
pbinc=$(python3 -c 'import pybind11; print(pybind11.get_include())')
suffix=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
echo "building the emulated extension (g++, about a minute)"
# __CUDA_ARCH__=900 selects the sm_90 code paths (float4 atomics), as on an H100/H200.
"${CXX:-g++}" -O1 -std=c++20 -shared -fPIC -pthread -w -D__CUDA_ARCH__=900 -D__CUDACC_VER_MAJOR__=13 \
  -D__CUDACC_VER_MINOR__=0 -I"$here/include" -I"$build/src" -I"$pyinc" -I"$pbinc" \
  "$build"/src/*.cpp -o "$build/pkg/_cuda$suffix"
# The gpu tests with CPU devices and emulated kernels; smaller deterministic case.
python3 - "$repo/tests/test_backend_cuda.py" "$build/run/test_emu_cuda.py" <<'PY'
import sys
s = open(sys.argv[1]).read()
s = s.replace('.cuda()', '').replace('device="cuda"', 'device="cpu"')
s = s.replace('    if not torch.cuda.is_available():\n        pytest.skip("no CUDA device")\n    return torch.device("cuda")',
              '    return torch.device("cpu")')
s = s.replace('cuda_mod.CudaKernels(sync=True)', 'emu_kernels(False)')
s = s.replace('cuda_mod.CudaKernels(deterministic=True, sync=True)', 'emu_kernels(True)')
s = s.replace('n, d, b = 50, 257, 20000', 'n, d, b = 50, 257, 1500')
open(sys.argv[2], 'w').write(s)
PY
cp "$here/conftest_emu.py" "$build/run/conftest.py"
cd "$build/run"
FASTALIGN_REPO="$repo" FASTALIGN_EMU_BUILD="$build" OMP_NUM_THREADS=1 \
  python3 -m pytest -p no:cacheprovider -q -m gpu -k "not beyond" test_emu_cuda.py "$@"
