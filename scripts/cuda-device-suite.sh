#!/usr/bin/env bash
# On the GPU machine (device tool): the correctness suite of the CUDA backend and of the candle
# path. Kernel tests (every head dim, dtype, layout), memcheck + racecheck on small shapes
# (synccheck too for the forward and backward),
# `dma selftest --device cuda` (kernels, the dma-candle op with backward, a Doge on the GPU).
# The forward and backward tests run five times: as by default on sm_90 (the Hopper kernels, sure
# keys, lists of up to 512 rows), without the Hopper kernels (DMA_CUDA_NO_WGMMA=1), without sure
# keys (DMA_CUDA_NO_SURE_KEYS=1) and with lists of at most 128 and 256 rows
# (DMA_CUDA_LIST_ROWS=128, 256; the partition test too), the forward also with its kernels
# launched one after another (DMA_CUDA_NO_OVERLAP=1); the decode test also without the fused
# decode kernel (DMA_CUDA_NO_FUSED_DECODE=1).
# Logs in $OUT, a summary last. Knobs: SKIP_TESTS=1 (the kernel tests), SKIP_SWITCHES=1 (their
# runs under the switches), SKIP_SANITIZER=1, SAN_EVERY, SAN_TIMEOUT.
#
# Here first:  scripts/cuda-build-devbin.sh
# Then run:    scripts/cuda-device-suite.sh   (carry .devbin/dma.xz and .devbin/dma-cuda-tests)
# The whole suite took ~700 s on the H100 in stop 17, over the device tool's 600 s per call: run
# it as three calls, each ending with the selftest (~60 s):
#   SKIP_SWITCHES=1 SKIP_SANITIZER=1   the kernel tests (~210 s)
#   SKIP_TESTS=1 SKIP_SANITIZER=1      the switches (~450 s)
#   SKIP_TESTS=1 SKIP_SWITCHES=1       the sanitizers (~330 s in stop 21)
set -u
B=.devbin/dma-cuda-tests
OUT=${OUT:-/tmp/dma-out}
S=$OUT/summary.txt
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1
if [ ! -x .devbin/dma ]; then
  python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.devbin/dma.xz'), open('.devbin/dma', 'wb'))"
  chmod +x .devbin/dma
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader >>"$S"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout 300 $B --test-threads=1 --nocapture >"$OUT/tests.log" 2>&1; echo "tests rc=$?" >>"$S"
  grep -E "worst|panicked|FAILED|test result" "$OUT/tests.log" >>"$S"
fi
if [ "${SKIP_SWITCHES:-0}" != 1 ]; then
  # On sm_90 the forward and backward at D = 64 and 128 run kernels/forward_hopper.cu and
  # backward_hopper.cu; check forward.cu and backward.cu there too.
  for t in forward_matches_cpu backward_matches_cpu; do
    DMA_CUDA_NO_WGMMA=1 timeout 200 $B --exact $t --nocapture >"$OUT/tests-no-wgmma-$t.log" 2>&1
    echo "$t with DMA_CUDA_NO_WGMMA=1 rc=$?" >>"$S"
    grep -E "worst|panicked|test result" "$OUT/tests-no-wgmma-$t.log" >>"$S"
  done
  # Decode steps (one query per sequence) run kernels/decode_fused.cu on sm_90; check the
  # multi-launch decode there too (other GPUs, longer contexts).
  DMA_CUDA_NO_FUSED_DECODE=1 timeout 200 $B --exact decode_matches_cpu --nocapture >"$OUT/tests-no-fused-decode.log" 2>&1
  echo "decode_matches_cpu with DMA_CUDA_NO_FUSED_DECODE=1 rc=$?" >>"$S"
  grep -E "worst|panicked|test result" "$OUT/tests-no-fused-decode.log" >>"$S"
  for switch in DMA_CUDA_NO_SURE_KEYS=1 DMA_CUDA_LIST_ROWS=128 DMA_CUDA_LIST_ROWS=256; do
    for t in forward_matches_cpu backward_matches_cpu partition_puts_the_sure_keys_first; do
      env $switch timeout 200 $B --exact $t --nocapture >"$OUT/tests-${switch/=/-}-$t.log" 2>&1
      echo "$t with $switch rc=$?" >>"$S"
      grep -E "worst|panicked|test result" "$OUT/tests-${switch/=/-}-$t.log" >>"$S"
    done
  done
  # The forward's selection and attention launched one after another, not overlapped.
  DMA_CUDA_NO_OVERLAP=1 timeout 200 $B --exact forward_matches_cpu --nocapture >"$OUT/tests-no-overlap.log" 2>&1
  echo "forward_matches_cpu with DMA_CUDA_NO_OVERLAP=1 rc=$?" >>"$S"
  grep -E "worst|panicked|test result" "$OUT/tests-no-overlap.log" >>"$S"
fi
if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
  # Per run: racecheck of the decode test took 150.4 s in stop 21 (the whole sanitizer call
  # ~330 s), so 240 leaves room without letting a hang take the device tool's 600 s.
  SAN_TIMEOUT=${SAN_TIMEOUT:-240}
  for tool in memcheck racecheck; do
    for t in forward_matches_cpu backward_matches_cpu decode_matches_cpu decode_state_matches_cpu \
      decode_state_errors_and_fallbacks \
      partition_puts_the_sure_keys_first; do
      DMA_CUDA_SMALL=1 DMA_CUDA_EVERY=${SAN_EVERY:-4} timeout $SAN_TIMEOUT compute-sanitizer --tool $tool \
        --print-limit 20 $B --exact $t >"$OUT/$tool-$t.log" 2>&1
      echo "$tool $t rc=$? $(grep -hE 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool-$t.log")" >>"$S"
    done
  done
  # The Hopper kernels' mbarriers and named barriers. With synccheck's default number of tracked
  # barriers it reports an overflow and the launch fails; 8192 is enough (100000: out of memory).
  for t in forward_matches_cpu backward_matches_cpu; do
    DMA_CUDA_SMALL=1 DMA_CUDA_EVERY=${SAN_EVERY:-4} timeout $SAN_TIMEOUT compute-sanitizer --tool synccheck \
      --num-cuda-barriers 8192 --print-limit 20 $B --exact $t >"$OUT/synccheck-$t.log" 2>&1
    echo "synccheck $t rc=$? $(grep -h 'ERROR SUMMARY' "$OUT/synccheck-$t.log")" >>"$S"
  done
fi
timeout 200 .devbin/dma selftest --device cuda >"$OUT/selftest.log" 2>&1; echo "selftest rc=$?" >>"$S"
grep -E "candle|doge|FAIL|error" "$OUT/selftest.log" | head -20 >>"$S"
tail -2 "$OUT/selftest.log" >>"$S"
cat "$S"
