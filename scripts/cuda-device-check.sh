#!/usr/bin/env bash
# On the GPU machine (through the device tool): the CUDA test suite, compute-sanitizer on small
# shapes, then the forward timing beside PyTorch SDPA. Logs go to $OUT; a summary is printed last.
#
# Here first:  source scripts/cuda-env.sh && scripts/cuda-build-devbin.sh
# Then run:    scripts/cuda-device-check.sh   (carry .devbin)
set -u
BIN=${BIN:-.devbin/dma-cuda-tests}
OUT=${OUT:-/tmp/dma-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv >"$OUT/gpu.txt" 2>&1

echo "== tests" ; timeout 300 "$BIN" --test-threads=1 --nocapture >"$OUT/tests.log" 2>&1; echo "tests rc=$?" | tee -a "$OUT/summary.txt"
if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
  echo "== memcheck"
  DMA_CUDA_SMALL=1 timeout 200 compute-sanitizer --tool memcheck --print-limit 20 "$BIN" --test-threads=1 \
    forward_matches_cpu >"$OUT/memcheck.log" 2>&1; echo "memcheck rc=$?" | tee -a "$OUT/summary.txt"
  grep -E "ERROR SUMMARY" "$OUT/memcheck.log" | tee -a "$OUT/summary.txt"
  echo "== racecheck"
  DMA_CUDA_SMALL=1 timeout 200 compute-sanitizer --tool racecheck --print-limit 20 "$BIN" --test-threads=1 \
    forward_matches_cpu >"$OUT/racecheck.log" 2>&1; echo "racecheck rc=$?" | tee -a "$OUT/summary.txt"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/racecheck.log" | tee -a "$OUT/summary.txt"
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  echo "== bench"
  timeout 150 "$BIN" --ignored bench_forward --nocapture >"$OUT/bench.log" 2>&1; echo "bench rc=$?" | tee -a "$OUT/summary.txt"
  # Variants to compare (other builds of the test binary), e.g. EXTRA_BINS=".devbin/x .devbin/y".
  for b in ${EXTRA_BINS:-}; do
    echo "variant $b" >>"$OUT/bench.log"
    timeout 100 "$b" --ignored bench_forward --nocapture 2>&1 | sed "s|^BENCH|BENCH [$(basename "$b")]|" >>"$OUT/bench.log"
  done
  timeout 100 python3 scripts/bench_sdpa.py >>"$OUT/bench.log" 2>&1
fi
echo "== summary"
cat "$OUT/gpu.txt"
grep -E "worst|error above|panicked|FAILED|test result|skipping" "$OUT/tests.log" | head -30
cat "$OUT/summary.txt"
grep BENCH "$OUT/bench.log" 2>/dev/null
