#!/usr/bin/env bash
# The kept-key masks and attention weights of a small trained Doge (issue 4's `dma heatmap`, the
# paper's Appendix C figures): trains a 2-layer Doge with DMA on the Python standard library
# sources of this machine (the training files of scripts/perplexity.sh's split), then draws
# layers 0 and 1 for the start of the first held-out file. Small enough for the CPU.
# Writes OUT/heatmap-layer0.png, OUT/heatmap-layer1.png and OUT/heatmap-train.jsonl.
#
#   scripts/heatmap-example.sh                 # DMA=target/release/dma, DEVICE=cpu
set -eu
DMA=${DMA:-target/release/dma}
OUT=${OUT:-/tmp/dma-out}/heatmap
DEVICE=${DEVICE:-cpu}
STEPS=${STEPS:-600}
SEQ=${SEQ:-256}
WINDOW=${WINDOW:-32}
PROMPT_BYTES=${PROMPT_BYTES:-450}
WORK=${WORK:-/tmp/dma-heatmap}
mkdir -p "$OUT" "$WORK"
# shellcheck source=scripts/stdlib-corpus.sh
source "$(dirname "${BASH_SOURCE[0]}")/stdlib-corpus.sh"
# 2 layers, hidden 128, 4 query and 2 kv heads of 32, vocab 1024: about 0.6M parameters.
cat >"$WORK/config.json" <<JSON
{"vocab_size": 1024, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
 "num_attention_heads": 4, "num_key_value_heads": 2, "keep_window_size": $WINDOW,
 "max_position_embeddings": $SEQ, "tie_word_embeddings": true}
JSON
rm -rf "$WORK/model"
"$DMA" train --device "$DEVICE" --kind dma --init "$WORK/config.json" --out "$WORK/model" \
  --data $(cat "$WORK/train.txt") --train-tokenizer --steps "$STEPS" --batch 8 --seq-len "$SEQ" \
  --warmup $((STEPS / 20)) --lr 3e-3 --save-every "$STEPS" --seed 0 \
  --log "$OUT/heatmap-train.jsonl" 2>&1 | tr '\r' '\n' | grep -E 'step [0-9]+:' | tail -2
prompt_file=$(head -1 "$WORK/valid.txt")
prompt=$(head -c "$PROMPT_BYTES" "$prompt_file")
echo "prompt: the first $PROMPT_BYTES bytes of $prompt_file"
for layer in 0 1; do
  "$DMA" heatmap --device "$DEVICE" --model "$WORK/model/step-$(printf %08d "$STEPS")" \
    --prompt "$prompt" --layer "$layer" \
    --out "$OUT/heatmap-layer$layer.png"
done
ls -la "$OUT"
