#!/usr/bin/env bash
# On the GPU machine (device tool): Doge generation speed at long context, `dma generate
# --device cuda` on a random model of the decode benchmark's attention shape (Hq = 32, Hkv = 8,
# D = 128, w = 2048; 2 layers, hidden 4096, byte tokens), prompts of 8K, 32K and 120K tokens,
# 128 decode steps each; every binary named runs twice per context, alternating. Each prints its
# prefill time and median decode step.
#
# Here first:  scripts/cuda-build-devbin.sh   (BEFORE=<commit> for a baseline binary)
# Then run:    scripts/cuda-device-generate.sh .devbin/dma-before .devbin/dma
#              (carry the binaries as .xz: they are unpacked here)
set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
for b in "$@"; do
  if [ ! -x "$b" ]; then
    python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('$b.xz'), open('$b', 'wb'))"
    chmod +x "$b"
  fi
done
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
g=$(mktemp -d)
echo '{"vocab_size":512,"hidden_size":4096,"intermediate_size":4096,"num_hidden_layers":2,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":140000,"keep_window_size":2048}' >"$g/config.json"
head -c 300000 /dev/urandom | base64 -w0 | head -c 200000 >"$g/text.txt"
# One training step writes a model directory (random weights, A ~ N(0, 1)).
timeout 200 "$1" train --data "$g/text.txt" --init "$g/config.json" --out "$g/model" --steps 1 \
  --batch 1 --seq-len 64 --device cuda --a-std 1.0 >"$g/train.log" 2>&1 || { cat "$g/train.log"; exit 1; }
for n in 8000 32000 120000; do
  for rep in 1 2; do
    for b in "$@"; do
      printf "| %s | %s | " "$b" "$n"
      timeout 200 "$b" generate --model "$g/model/step-00000001" --device cuda \
        --prompt "$(head -c $n "$g/text.txt")" --max-new-tokens 129 2>&1 >/dev/null |
        grep -v "^no tokenizer" | head -c 300 | tr '\n' ' '
      echo
    done
  done
done
