#!/usr/bin/env bash
# Perplexity experiment (issue 4): one small Doge trained for the same tokens with each attention
# kind on the Python standard library sources of the machine it runs on, split into training and
# validation sets by file (every 20th file, in sorted order, is held out). A byte-level BPE is
# trained once on the training files and shared by all runs. Writes OUT/perplexity/KIND.jsonl
# (one line per step, held-out loss every EVAL_EVERY steps), OUT/perplexity/KIND.log and the
# shared tokenizer.json; checkpoints go to WORK (default /tmp/dma-perplexity). Prints the final
# held-out perplexities.
#
#   scripts/perplexity.sh                      # on the GPU machine, DMA=.devbin/dma
#   KINDS="dma mha swa" STEPS=600 scripts/perplexity.sh
#   LAYERS=6 STEPS=700 scripts/perplexity.sh   # the runs in docs/results/perplexity (18.4M)
#   KINDS=dma A_STD=1 scripts/perplexity.sh    # DMA from a random A (`dma train --a-std`)
set -eu
DMA=${DMA:-.devbin/dma}
OUT=${OUT:-/tmp/dma-out}/perplexity
KINDS=${KINDS:-dma mha swa}
STEPS=${STEPS:-600}
BATCH=${BATCH:-8}
SEQ=${SEQ:-2048}
WINDOW=${WINDOW:-256}
LAYERS=${LAYERS:-8}
EVAL_EVERY=${EVAL_EVERY:-50}
A_STD=${A_STD:-0}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/dma-perplexity}
mkdir -p "$OUT" "$WORK"
# shellcheck source=scripts/stdlib-corpus.sh
source "$(dirname "${BASH_SOURCE[0]}")/stdlib-corpus.sh"
# Hidden 512, LAYERS layers of 8 query and 4 kv heads of 64, vocab 8192 tied: 4.2M parameters
# in the embedding and 2.36M a layer, so 18.4M at 6 (the runs in docs/results/perplexity) and
# 23.1M at 8.
cat >"$WORK/config.json" <<JSON
{"vocab_size": 8192, "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": $LAYERS,
 "num_attention_heads": 8, "num_key_value_heads": 4, "keep_window_size": $WINDOW,
 "max_position_embeddings": $SEQ, "tie_word_embeddings": true}
JSON
tokenizer=(--train-tokenizer)
[ -n "${TOKENIZER:-}" ] && tokenizer=(--tokenizer "$TOKENIZER")
for kind in $KINDS; do
  rm -rf "$WORK/$kind" "$OUT/$kind.jsonl"
  "$DMA" train --device "$DEVICE" --kind "$kind" --init "$WORK/config.json" --out "$WORK/$kind" \
    --data $(cat "$WORK/train.txt") --eval-data $(cat "$WORK/valid.txt") "${tokenizer[@]}" \
    --steps "$STEPS" --batch "$BATCH" --seq-len "$SEQ" --warmup $((STEPS / 20)) --lr 1e-3 \
    --eval-every "$EVAL_EVERY" --eval-batches 8 --save-every "$STEPS" --seed 0 --a-std "$A_STD" \
    --log "$OUT/$kind.jsonl" 2>&1 | tr '\r' '\n' | grep -vE '^\s*$|tok/s' >"$OUT/$kind.log"
  if [ "${tokenizer[0]}" = --train-tokenizer ]; then
    cp "$WORK/$kind/tokenizer.json" "$OUT/tokenizer.json"
    tokenizer=(--tokenizer "$OUT/tokenizer.json")
  fi
  echo "$kind: $(grep -E 'step [0-9]+:' "$OUT/$kind.log" | tail -1)"
done
