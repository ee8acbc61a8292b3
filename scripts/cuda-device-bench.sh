#!/usr/bin/env bash
# On the GPU machine (device tool): every H100 timing of docs/benchmarks.md in one run, our
# kernels beside PyTorch SDPA (cuDNN and flash, dense causal) on the same GPU. Forward and
# forward+backward at B=1, Hq=16, Hkv=16 and 4, D=128, bf16, w=2048, N in SIZES; the paper's
# configuration (Hq=2, Hkv=1); decode at B=1, Hq=32, Hkv=8 over CTX. Every BENCH line goes to
# $OUT/bench.log, and as records for `dma plot` to $OUT/bench.jsonl (scripts/bench_records.py).
#
# Here first:  scripts/cuda-build-devbin.sh
# Then run:    scripts/cuda-device-bench.sh   (carry .devbin/dma-cuda-tests)
set -u
B=.devbin/dma-cuda-tests
OUT=${OUT:-/tmp/dma-out}
SIZES=${SIZES:-4096,8192,16384,32768,65536}
CTX=${CTX:-8192,32768,131072}
L=$OUT/bench.log
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >"$L"
for heads in "16 16" "16 4" "2 1"; do
  set -- $heads
  for t in bench_forward bench_backward; do
    DMA_BENCH_N=$SIZES DMA_BENCH_HQ=$1 DMA_BENCH_HKV=$2 timeout 200 $B --ignored --exact $t \
      --nocapture 2>&1 | grep BENCH >>"$L"
  done
  timeout 200 python3 scripts/bench_sdpa.py --hq $1 --hkv $2 ${SIZES//,/ } 2>&1 | grep BENCH >>"$L"
  timeout 300 python3 scripts/bench_sdpa.py --fwdbwd --hq $1 --hkv $2 ${SIZES//,/ } 2>&1 |
    grep BENCH >>"$L"
done
DMA_BENCH_CTX=$CTX timeout 120 $B --ignored --exact bench_decode --nocapture 2>&1 | grep BENCH >>"$L"
timeout 120 python3 scripts/bench_sdpa.py --decode ${CTX//,/ } 2>&1 | grep BENCH >>"$L"
python3 scripts/bench_records.py "$L" >"$OUT/bench.jsonl"
cat "$L"
