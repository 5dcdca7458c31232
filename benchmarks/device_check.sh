#!/usr/bin/env bash
# The device check: ONE script for a lent GPU (an H200: no network; torch 2.11,
# triton 3.6, Python 3.12), run from the repository root, in under 8 minutes:
#
#   1. nvidia-smi and the software versions;
#   2. build: FASTALIGN_BUILD_CUDA=1 FASTALIGN_CUDA_ARCHS=90 pip install --no-deps
#      --no-build-isolation -e .   (build time printed);
#   3. python -c 'import fastalign; print(fastalign.backends())';
#   4. the GPU tests: python -m pytest -m gpu -x -q tests/;
#   5. the benchmark: python -m fastalign bench --preset "$PRESET" --out $OUT/bench;
#   6. the ViT-B/16 student step: python benchmarks/bench_distill_step.py --vit;
#   7. compaction: at most 8 files come back from $OUT.
#
# Every step runs under its own timeout, cut to the time left, and the next
# step runs whatever the last one did; each step's exit status goes to
# $OUT/summary.md. The benchmark writes results.json after every case, so a
# benchmark stopped by its timeout still reports what it finished (the table
# and the plot are then rebuilt from results.json).
#
# Files returned (8): device_check.log, summary.md, build.log, gpu_tests.log,
# bench/results.json, bench/table.md, bench/plot.png, bench/vit.md.
#
# Usage:  OUT=/path/to/dir bash benchmarks/device_check.sh
# Env:    DEVICE_CHECK_BUDGET_S (default 450: total seconds), PYTHON (default python3),
#         DEVICE_CHECK_PRESET (default gpu-quick; cpu-tiny dry-runs the script on a machine without a GPU).

set -u -o pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/device-check-out}
mkdir -p "$OUT/bench"
exec > >(tee -a "$OUT/device_check.log") 2>&1
TEE_PID=$!

export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
TOTAL=${DEVICE_CHECK_BUDGET_S:-450}
PRESET=${DEVICE_CHECK_PRESET:-gpu-quick}
T0=$(date +%s)
SUMMARY="$OUT/summary.md"
printf '# device check %s\n\n| step | exit | seconds | note |\n|---|---|---|---|\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" > "$SUMMARY"

# The helpers turn tracing off inside themselves (`local -` restores it) to keep the log readable.
left() { local -; set +x; echo $(( TOTAL - ($(date +%s) - T0) )); }
# cap WANT RESERVE: a timeout of at most WANT seconds that leaves RESERVE seconds for later steps.
cap() {
  local -; set +x
  local want=$1 reserve=$2 l
  l=$(( $(left) - reserve ))
  (( l < want )) && want=$l
  (( want < 15 )) && want=15
  echo "$want"
}
# record NAME RC START NOTE
record() {
  local -; set +x
  local rc=$2 note=$4
  [[ $rc == 124 || $rc == 137 ]] && note="TIMED OUT; $note"
  echo "| $1 | $rc | $(( $(date +%s) - $3 )) | $note |" >> "$SUMMARY"
}

set -x

# 1. The card and the software.
s=$(date +%s)
timeout 30 nvidia-smi
record nvidia-smi $? "$s" ""
timeout 60 "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__); print(torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0))'
record versions $? "$s" ""

# 2. Build the package with the CUDA extension for sm_90.
s=$(date +%s)
FASTALIGN_BUILD_CUDA=1 FASTALIGN_CUDA_ARCHS=90 timeout -k 10 "$(cap 180 270)" \
  "$PY" -m pip install --no-deps --no-build-isolation -v -e . > "$OUT/build.log" 2>&1
rc=$?
build_s=$(( $(date +%s) - s ))
tail -n 40 "$OUT/build.log"
grep -iE "error|warning: |skipping fastalign" "$OUT/build.log" | head -n 40
echo "build took ${build_s} s (exit ${rc})"
record build "$rc" "$s" "pip install -e . with FASTALIGN_BUILD_CUDA=1 FASTALIGN_CUDA_ARCHS=90: ${build_s} s"

# 3. What loaded.
s=$(date +%s)
timeout -k 10 90 "$PY" -c 'import fastalign, json; print(json.dumps(fastalign.backends(), indent=1))'
record backends $? "$s" ""

# 4. The GPU tests (every backend against the reference on CUDA tensors).
s=$(date +%s)
timeout -k 10 "$(cap 150 200)" "$PY" -m pytest -m gpu -q -rfE --maxfail=25 tests/ 2>&1 | tee "$OUT/gpu_tests.log"
rc=$?
record gpu-tests "$rc" "$s" "$(tail -n 1 "$OUT/gpu_tests.log" | tr '|' '/')"

# 5. The benchmark. Its own time budget stops new measurements in time to write
#    the plot; the timeout is the backstop.
s=$(date +%s)
bench_t=$(cap 330 110)  # leaves time for the ViT student (step 6)
budget=$(( bench_t - 60 ))
(( budget < 30 )) && budget=30
timeout -k 10 "$bench_t" "$PY" -m fastalign bench --preset "$PRESET" --out "$OUT/bench" --time-budget "$budget"
rc=$?
record bench "$rc" "$s" "python -m fastalign bench --preset $PRESET (time budget ${budget} s, timeout ${bench_t} s)"
if [[ ! -s "$OUT/bench/results.json" && $(left) -gt 60 ]]; then
  # The CLI itself failed (e.g. another subcommand broke the parser): the same harness without it.
  s=$(date +%s)
  bench_t=$(cap 300 20)
  timeout -k 10 "$bench_t" "$PY" benchmarks/bench_gpu.py --preset "$PRESET" --out "$OUT/bench" \
    --time-budget $(( bench_t > 90 ? bench_t - 60 : 30 ))
  record bench-fallback $? "$s" "benchmarks/bench_gpu.py after the CLI produced no results"
fi
if [[ -s "$OUT/bench/results.json" && ( $rc != 0 || ! -s "$OUT/bench/plot.png" ) ]]; then
  s=$(date +%s)
  timeout -k 5 60 "$PY" -c 'import sys; from fastalign.bench.report import main; sys.exit(main(sys.argv[1:]))' "$OUT/bench"
  record report $? "$s" "table and plot rebuilt from the partial results.json"
fi

# 6. A ViT-B/16 student: two-pass vs triplet-dense vs plain PyTorch steps (issue 6).
if (( $(left) > 45 )); then
  s=$(date +%s)
  vit_args=(--vit --out "$OUT/bench/vit.md")
  [[ $PRESET == cpu-* ]] && vit_args+=(--quick)  # a dry run on a CPU: the smoke sizes
  timeout -k 5 "$(cap 90 15)" "$PY" benchmarks/bench_distill_step.py "${vit_args[@]}"
  record vit-student $? "$s" "benchmarks/bench_distill_step.py --vit"
fi

# 7. Compaction: only complete files, at most 8, each under 16 MB.
set +x
find "$OUT" -name '.*.tmp' -type f -delete
for f in "$OUT"/build.log "$OUT"/gpu_tests.log; do  # device_check.log is still being written
  if [[ -f $f && $(stat -c %s "$f") -gt 15000000 ]]; then
    tail -c 15000000 "$f" > "$f.cut" && mv "$f.cut" "$f"
  fi
done
echo "| total | - | $(( $(date +%s) - T0 )) | files: $(find "$OUT" -type f | wc -l) |" >> "$SUMMARY"
find "$OUT" -type f -printf '%P %s\n' | sort
echo
# The reply shows only the end of the output: the table's head (run facts, headline
# targets, affine verdict, first rows), then the step summary last.
[[ -s "$OUT/bench/table.md" ]] && head -c 7000 "$OUT/bench/table.md"
echo
cat "$SUMMARY"
# Close our end of the pipe and let tee finish the log before $OUT is collected.
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit 0
