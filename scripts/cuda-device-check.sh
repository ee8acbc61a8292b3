#!/usr/bin/env bash
# On the GPU machine (through the device tool): the CUDA test suite, compute-sanitizer on small
# shapes, then the forward and forward+backward timings beside PyTorch SDPA. Logs go to $OUT; a
# summary is printed last.
#
# Here first:  source scripts/cuda-env.sh && scripts/cuda-build-devbin.sh
# Then run:    scripts/cuda-device-check.sh   (carry .devbin)
# Knobs: SKIP_SANITIZER=1, SKIP_BENCH=1, BENCH_N (default 16384,32768), SAN_TESTS (the tests the
# sanitizers run, default "forward_matches_cpu backward_matches_cpu"), EXTRA_BINS (A/B variants).
set -u
BIN=${BIN:-.devbin/dma-cuda-tests}
OUT=${OUT:-/tmp/dma-out}
BENCH_N=${BENCH_N:-16384,32768}
SAN_TESTS=${SAN_TESTS:-forward_matches_cpu backward_matches_cpu}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv >"$OUT/gpu.txt" 2>&1

echo "== tests" ; timeout 300 "$BIN" --test-threads=1 --nocapture >"$OUT/tests.log" 2>&1; echo "tests rc=$?" | tee -a "$OUT/summary.txt"
if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
  for tool in memcheck racecheck; do
    echo "== $tool"
    for t in $SAN_TESTS; do
      DMA_CUDA_SMALL=1 DMA_CUDA_EVERY=${SAN_EVERY:-3} timeout 200 compute-sanitizer --tool $tool --print-limit 20 \
        "$BIN" --test-threads=1 --exact "$t" >"$OUT/$tool.log" 2>&1; echo "$tool $t rc=$?" | tee -a "$OUT/summary.txt"
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" "$OUT/$tool.log" | tee -a "$OUT/summary.txt"
    done
  done
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  echo "== bench"
  for hkv in 16 4; do
    DMA_BENCH_N=$BENCH_N DMA_BENCH_HKV=$hkv timeout 150 "$BIN" --ignored --exact bench_forward --nocapture >>"$OUT/bench.log" 2>&1
    DMA_BENCH_N=$BENCH_N DMA_BENCH_HKV=$hkv timeout 150 "$BIN" --ignored --exact bench_backward --nocapture >>"$OUT/bench.log" 2>&1
  done
  for b in ${EXTRA_BINS:-}; do
    echo "variant $b" >>"$OUT/bench.log"
    timeout 100 "$b" --ignored bench_ --nocapture 2>&1 | sed "s|^BENCH|BENCH [$(basename "$b")]|" >>"$OUT/bench.log"
  done
  sizes=${BENCH_N//,/ }
  timeout 100 python3 scripts/bench_sdpa.py $sizes >>"$OUT/bench.log" 2>&1
  for hkv in 16 4; do timeout 150 python3 scripts/bench_sdpa.py --fwdbwd --hkv $hkv $sizes >>"$OUT/bench.log" 2>&1; done
fi
echo "== summary"
cat "$OUT/gpu.txt"
grep -E "worst|error above|panicked|FAILED|test result|skipping" "$OUT/tests.log" | head -30
cat "$OUT/summary.txt"
grep -E "BENCH|Error|error" "$OUT/bench.log" 2>/dev/null | head -40
