#!/usr/bin/env bash
# The MQAR grid of issue 4 on the GPU machine: sequence length x kv pairs x d_model x attention,
# w = WINDOW for dma and swa, vocab VOCAB (8192), 2 layers, head dim HEAD_DIM (64; heads =
# d_model / HEAD_DIM), on DEVICE (cuda), a fresh training set of STEPS x BATCH examples per run
# (with TOKENS set, each run's batch is TOKENS / seq_len instead, so that every length trains on
# the same tokens per step). Runs JOBS runs at once, smallest first, and writes every finished
# run's JSON as one line of OUT/mqar-grid.jsonl. JOBS=3 or 4 is what the grid ran with: at 65536
# tokens a step, 3-4 runs at once finished 1.5-2x as many runs per minute as one at a time;
# 9 at once (N = 512, batch 128) filled the H100's 80 GB and finished none in 530 s. Runs still going after DEADLINE seconds are stopped and listed.
#
#   scripts/mqar-grid.sh            # DMA=.devbin/dma, all 72 runs
#   SEQS="512 1024" KVS=64 scripts/mqar-grid.sh
#   TOKENS=65536 STEPS=2500 LR=1e-3 SKIP_DONE=docs/results/mqar scripts/mqar-grid.sh   # the rest
#   DEVICE=cpu VOCAB=16 HEAD_DIM=32 SEQS="64 128 256" KVS=4 DMODELS=64 WINDOW=16 \
#     STEPS=1000 BATCH=16 LR=5e-4 DMA=target/release/dma scripts/mqar-grid.sh   # a CPU toy grid
set -u
DMA=${DMA:-.devbin/dma}
OUT=${OUT:-/tmp/dma-out}
WORK=${WORK:-/tmp/dma-mqar}
SEQS=${SEQS:-512 1024 2048 4096}
KVS=${KVS:-64 128 256}
DMODELS=${DMODELS:-64 128}
KINDS=${KINDS:-dma swa mha}
WINDOW=${WINDOW:-512}
STEPS=${STEPS:-1500}
BATCH=${BATCH:-32}
TOKENS=${TOKENS:-}
LR=${LR:-3e-3}
JOBS=${JOBS:-1}
DEADLINE=${DEADLINE:-500}
SEED=${SEED:-0}
A_STD=${A_STD:-0}
DEVICE=${DEVICE:-cuda}
VOCAB=${VOCAB:-8192}
HEAD_DIM=${HEAD_DIM:-64}
mkdir -p "$OUT" "$WORK"
rm -f "$WORK"/*.json
for seq in $SEQS; do for kv in $KVS; do for d in $DMODELS; do for kind in $KINDS; do
  [ $((4 * kv)) -le "$seq" ] || continue
  batch=$BATCH
  [ -z "$TOKENS" ] || batch=$((TOKENS / seq))
  echo "$DMA mqar --device $DEVICE --attention $kind --seq-len $seq --kv-pairs $kv --d-model $d" \
    "--heads $((d / HEAD_DIM)) --layers 2 --window $WINDOW --vocab $VOCAB --steps $STEPS --batch $batch" \
    "--train-examples $((STEPS * batch)) --test-examples 1000 --lr $LR --seed $SEED --a-std $A_STD" \
    "--output $WORK/$kind-$seq-$kv-$d.json"
done; done; done; done >"$WORK/commands.txt"
# SKIP_DONE=DIR: leave out the runs whose result (same cell, steps, batch, lr, a_std) is already in
# a DIR/*.jsonl, so that calls with a deadline can go through the grid a piece at a time.
if [ -n "${SKIP_DONE:-}" ]; then
  python3 - "$WORK/commands.txt" "$SKIP_DONE" <<'PY'
import glob, json, os, sys
def cell(attention, seq, kv, d, steps, batch, lr, a_std):
    return (attention, int(seq), int(kv), int(d), int(steps), int(batch), float(lr), float(a_std or 0))
done = set()
for path in glob.glob(os.path.join(sys.argv[2], "*.jsonl")):
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            done.add(cell(r["attention"], r["seq_len"], r["kv_pairs"], r["d_model"], r["steps"],
                          r["batch"], r["lr"], r.get("a_std")))
keep = []
for line in open(sys.argv[1]):
    a = line.split()
    arg = lambda name: a[a.index(name) + 1]
    key = cell(arg("--attention"), arg("--seq-len"), arg("--kv-pairs"), arg("--d-model"),
               arg("--steps"), arg("--batch"), arg("--lr"), arg("--a-std"))
    if key not in done:
        keep.append(line)
print(f"SKIP_DONE: {sum(1 for _ in open(sys.argv[1])) - len(keep)} runs already in {sys.argv[2]}")
open(sys.argv[1], "w").writelines(keep)
PY
fi
echo "$(wc -l <"$WORK/commands.txt") runs, $JOBS at a time, deadline ${DEADLINE}s"
timeout "$DEADLINE" xargs -P "$JOBS" -I{} sh -c '{} >/dev/null 2>&1' <"$WORK/commands.txt"
for f in "$WORK"/*.json; do [ -e "$f" ] && tr -d '\n' <"$f" && echo; done >"$OUT/mqar-grid.jsonl"
echo "$(wc -l <"$OUT/mqar-grid.jsonl") runs finished"
python3 - "$OUT/mqar-grid.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows.sort(key=lambda r: (r["seq_len"], r["kv_pairs"], r["d_model"], r["attention"]))
for r in rows:
    print(f'{r["attention"]} N={r["seq_len"]} kv={r["kv_pairs"]} d={r["d_model"]}: '
          f'acc {r["accuracy"]:.3f} ({r["train_seconds"]:.0f} s)')
PY
