#!/usr/bin/env bash
# Needle in a haystack (issue 4) on the GPU machine: one `dma needle` run per attention kind, all
# at once (a run is small: 2 layers, d_model 128), each trained on examples of every length in
# TRAIN_LENGTHS mixed in its batches and evaluated at EVAL_LENGTHS (lengths past the longest
# training length test extrapolation). Writes OUT/needle/needle-KIND.{json,png,log}; a run still
# going after DEADLINE seconds is stopped and writes nothing.
#
#   bash scripts/needle.sh
#   KINDS="dma mha" STEPS=2000 bash scripts/needle.sh
#   DEVICE=cpu DMA=target/release/dma STEPS=20 BATCH=4 TRAIN_LENGTHS=128 EVAL_LENGTHS=128,256 \
#     EVAL_EXAMPLES=2 bash scripts/needle.sh    # a smoke run on the CPU
set -u
DMA=${DMA:-.devbin/dma}
OUT=${OUT:-/tmp/dma-out}/needle
KINDS=${KINDS:-dma mha swa}
TRAIN_LENGTHS=${TRAIN_LENGTHS:-128,256,384,512}
EVAL_LENGTHS=${EVAL_LENGTHS:-256,512,1024,2048}
STEPS=${STEPS:-6000}
BATCH=${BATCH:-32}
WINDOW=${WINDOW:-64}
EVAL_EXAMPLES=${EVAL_EXAMPLES:-64}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-500}
mkdir -p "$OUT"
# --seq-len is the longest training length: the report marks longer evaluation lengths as unseen.
longest=$(tr ',' '\n' <<<"$TRAIN_LENGTHS" | sort -n | tail -1)
for kind in $KINDS; do
  timeout "$DEADLINE" "$DMA" needle --device "$DEVICE" --attention "$kind" --seq-len "$longest" \
    --train-lengths "$TRAIN_LENGTHS" --eval-lengths "$EVAL_LENGTHS" --window "$WINDOW" \
    --d-model 128 --heads 2 --steps "$STEPS" --batch "$BATCH" \
    --train-examples $((STEPS * BATCH)) --eval-examples "$EVAL_EXAMPLES" --seed 0 \
    --json "$OUT/needle-$kind.json" --heatmap "$OUT/needle-$kind.png" \
    2>&1 | tr '\r' '\n' | grep -vE '^\s*$' | grep -v 'tok/s' >"$OUT/needle-$kind.log" &
done
wait
for kind in $KINDS; do
  echo "== $kind"
  tail -3 "$OUT/needle-$kind.log"
done
