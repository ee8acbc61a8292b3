#!/usr/bin/env bash
# On the GPU machine (device tool, carry .devbin): the whole CUDA suite of the backward/decode
# slice in one call. Tests; memcheck + racecheck on small forward, backward and decode cases;
# `dma selftest --device cuda`; `dma op --device cuda` vs cpu; timings of forward, fwd+bwd and
# decode beside SDPA; per-kernel decode times (ncu). VARIANTS="x y" times .devbin/dma-cuda-tests-x
# too (A/B in the same run). Logs in $OUT, a summary last.
set -u
B=.devbin/dma-cuda-tests
OUT=${OUT:-/tmp/dma-out}
S=$OUT/summary.txt
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader >>"$S"
timeout 240 $B --test-threads=1 --nocapture >"$OUT/tests.log" 2>&1; echo "tests rc=$?" >>"$S"
grep -E "worst|panicked|FAILED|test result" "$OUT/tests.log" >>"$S"
for tool in memcheck racecheck; do
  for t in forward_matches_cpu backward_matches_cpu decode_matches_cpu; do
    DMA_CUDA_SMALL=1 DMA_CUDA_EVERY=4 timeout 120 compute-sanitizer --tool $tool --print-limit 20 \
      $B --exact $t >"$OUT/$tool-$t.log" 2>&1
    echo "$tool $t rc=$? $(grep -hE 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool-$t.log")" >>"$S"
  done
done
timeout 120 .devbin/dma selftest --device cuda >"$OUT/selftest.log" 2>&1; echo "selftest rc=$?" >>"$S"
tail -2 "$OUT/selftest.log" >>"$S"
timeout 60 python3 scripts/cuda-op-check.py >"$OUT/opcheck.log" 2>&1; echo "opcheck rc=$? $(tail -1 "$OUT/opcheck.log")" >>"$S"
for hkv in 16 4; do for t in bench_forward bench_backward; do
  DMA_BENCH_N=16384,32768 DMA_BENCH_HKV=$hkv timeout 100 $B --ignored --exact $t --nocapture 2>&1 | grep BENCH >>"$S"
done; done
timeout 60 $B --ignored --exact bench_decode --nocapture 2>&1 | grep BENCH >>"$S"
for v in ${VARIANTS:-}; do
  DMA_BENCH_N=32768 timeout 60 $B-$v --ignored --exact bench_forward --nocapture 2>&1 | grep BENCH | sed "s/^BENCH/BENCH [$v]/" >>"$S"
  timeout 60 $B-$v --ignored --exact bench_decode --nocapture 2>&1 | grep BENCH | sed "s/^BENCH/BENCH [$v]/" >>"$S"
done
DMA_BENCH_N=32768 timeout 60 $B --ignored --exact bench_forward --nocapture 2>&1 | grep BENCH | sed "s/^BENCH/BENCH [again]/" >>"$S"
timeout 60 $B --ignored --exact bench_decode --nocapture 2>&1 | grep BENCH | sed "s/^BENCH/BENCH [again]/" >>"$S"
timeout 100 python3 scripts/bench_sdpa.py 16384 32768 2>&1 | grep BENCH >>"$S"
for hkv in 16 4; do timeout 100 python3 scripts/bench_sdpa.py --fwdbwd --hkv $hkv 16384 32768 2>&1 | grep BENCH >>"$S"; done
timeout 100 python3 scripts/bench_sdpa.py --decode 2>&1 | grep BENCH >>"$S"
DMA_BENCH_CTX=131072 timeout 200 ncu --launch-count 11 --metrics gpu__time_duration.sum --csv \
  $B --ignored --exact bench_decode --nocapture >"$OUT/ncu.csv" 2>&1
python3 - "$OUT/ncu.csv" >>"$S" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if rows:
    h = rows[0]
    k, v, g = h.index("Kernel Name"), h.index("Metric Value"), h.index("Grid Size")
    for r in rows[1:]:
        print("ncu", r[k][:40], r[g], r[v])
PY
cat "$S"
