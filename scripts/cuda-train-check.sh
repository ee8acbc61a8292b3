#!/usr/bin/env bash
# On the GPU machine (device tool), in one call: checks and times a new build's training path
# before it trains anything, then spends what is left of the call on MQAR grid cells.
#   1. the kernel tests of the layers around the attention (RMSNorm, RoPE, silu_mul, scale_add,
#      the embedding's scatter, the cross-entropy) and of AdamW against f64, and
#      `dma selftest --device cuda` (its `candle` and `doge` checks cover the same layers
#      through candle's autograd);
#   2. the time of an MQAR training step (dma and mha) with the build before (.devbin/dma-before)
#      and this one, one after the other;
#   3. the GPU time of a 2-step run by kernel (scripts/profile-train-step.py);
#   4. only if 1 passed: MQAR grid runs until BUDGET seconds from the start, by default the ones
#      not yet in docs/results/mqar (GRID holds scripts/mqar-grid.sh's variables; GRID=off: none;
#      JOBS runs at once, 1 by default).
# Here first: BEFORE=<baseline commit> scripts/cuda-build-devbin.sh (the baseline as
# .devbin/dma-before.xz). Carry .devbin/dma.xz, .devbin/dma-before.xz, .devbin/dma-cuda-tests.
#
#   bash scripts/cuda-train-check.sh
#   GRID='SEQS=512 KVS=128 DMODELS=128' bash scripts/cuda-train-check.sh
#   JOBS=3 bash scripts/cuda-train-check.sh     # three grid runs share the GPU
set -u
OUT=${OUT:-/tmp/dma-out}
BUDGET=${BUDGET:-570}
GRID=${GRID-SKIP_DONE=docs/results/mqar}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1
for b in dma dma-before; do
  [ -f ".devbin/$b.xz" ] || continue
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1] + '.xz'), open(sys.argv[1], 'wb'))" ".devbin/$b"
  chmod +x ".devbin/$b"
done
ok=1
timeout 180 .devbin/dma-cuda-tests --exact rms_norm_matches_f64 rope_matches_f64 \
  silu_mul_matches_f64 scale_add_matches_f64 adamw_matches_f64 scatter_add_rows_matches_cpu \
  cross_entropy_matches_f64 \
  --nocapture \
  >"$OUT/layer-tests.log" 2>&1 || ok=0
grep -E "rms_norm|rope|silu|scale_add|adamw|scatter|cross_entropy|test result|panicked" "$OUT/layer-tests.log"
timeout 240 .devbin/dma selftest --device cuda >"$OUT/selftest.log" 2>&1 || ok=0
grep -E "candle|doge|PASS|FAIL" "$OUT/selftest.log" | tail -12
echo "checks passed: $ok ($SECONDS s)"

M="mqar --device cuda --seq-len 1024 --kv-pairs 64 --d-model 128 --heads 2 --layers 2 --window 512
   --vocab 8192 --batch 64 --lr 1e-3 --seed 0 --test-examples 200"
# train_seconds includes one-time costs in the first steps (a build without the PTX disk cache
# compiles its kernels there: the 2-step run fills that cache), so the time per step is the
# difference of a 150- and a 50-step run.
for kind in dma mha; do
  for b in dma-before dma; do
    [ -x ".devbin/$b" ] || continue
    # A first run compiles the build's kernels into the PTX disk cache (each build its own).
    for steps in 2 50 150; do
      # shellcheck disable=SC2086
      ".devbin/$b" $M --attention "$kind" --steps $steps --train-examples $((64 * steps)) \
        --output "/tmp/$b-$kind-$steps.json" >/dev/null 2>&1
    done
    python3 -c "import json, sys
t = [json.load(open(f))['train_seconds'] for f in sys.argv[2:]]
print(f'{sys.argv[1]}: 50 steps {t[0]:.2f} s, 150 steps {t[1]:.2f} s, {10 * (t[1] - t[0]):.1f} ms a step')" \
      "$b $kind" "/tmp/$b-$kind-50.json" "/tmp/$b-$kind-150.json"
  done
done | tee "$OUT/timing.txt"
# shellcheck disable=SC2086
timeout 150 python3 scripts/profile-train-step.py .devbin/dma $M --attention dma --steps 2 \
  --train-examples 128 --output /tmp/profile.json >"$OUT/profile.txt" 2>&1
head -30 "$OUT/profile.txt"
echo "timing and profile done ($SECONDS s)"

left=$((BUDGET - SECONDS))
if [ "$ok" = 1 ] && [ "$GRID" != off ] && [ "$left" -gt 150 ]; then
  env $GRID TOKENS=65536 STEPS=${STEPS:-2500} LR=1e-3 JOBS=${JOBS:-1} DEADLINE=$left OUT="$OUT/grid" \
    WORK=/tmp/dma-grid bash scripts/mqar-grid.sh | tee "$OUT/grid.log"
else
  echo "no grid runs (checks passed: $ok, GRID '${GRID}', $left s left)"
fi
