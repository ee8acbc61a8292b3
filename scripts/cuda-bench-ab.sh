#!/usr/bin/env bash
# On the GPU machine (device tool): the A/B of one environment switch of the kernels (for example
# DMA_CUDA_NO_SURE_KEYS or DMA_CUDA_NO_WGMMA) in one run: a benchmark of the test binary
# (bench_forward by default; DMA_BENCH_N, DMA_BENCH_HQ and DMA_BENCH_HKV as in
# scripts/cuda-device-bench.sh) ROUNDS times, each round without and then with VAR=VALUE (1 unless
# given), so that both sides see the same clocks. Prints the BENCH lines, each prefixed with its
# round and side.
#
# Here first:  scripts/cuda-build-devbin.sh
# Then run:    VAR=DMA_CUDA_NO_SURE_KEYS bash scripts/cuda-bench-ab.sh   (carry .devbin/dma-cuda-tests)
#              VAR=DMA_CUDA_NO_SURE_KEYS DMA_BENCH_HKV=4 bash scripts/cuda-bench-ab.sh
#              VAR=DMA_CUDA_LIST_ROWS VALUE=128 bash scripts/cuda-bench-ab.sh   (on: 128-row lists)
set -u
VAR=${VAR:?name the switch, for example VAR=DMA_CUDA_NO_SURE_KEYS}
VALUE=${VALUE:-1}
ROUNDS=${ROUNDS:-2}
TEST=${TEST:-bench_forward}
export DMA_BENCH_N=${DMA_BENCH_N:-16384,32768}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
for round in $(seq "$ROUNDS"); do
  for side in off on; do
    if [ "$side" = on ]; then export "$VAR=$VALUE"; else unset "$VAR"; fi
    timeout 200 .devbin/dma-cuda-tests --ignored --exact "$TEST" --nocapture 2>&1 |
      grep BENCH | sed "s/^/round $round $VAR $side: /"
  done
done
