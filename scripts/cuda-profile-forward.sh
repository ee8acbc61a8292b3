#!/usr/bin/env bash
# On the GPU machine (device tool): where the Hopper forward's time goes, per instruction. One
# launch of the forward kernel in bench_forward (N, Hq, Hkv as DMA_BENCH_N, DMA_BENCH_HQ,
# DMA_BENCH_HKV; default 32K, 16, 16; KERNEL=<name regex> and BENCH=<test> profile another
# kernel, e.g. KERNEL=dma_backward_hopper BENCH=bench_backward) under ncu's full set, then three text views of the report:
# $OUT/details.txt (throughputs, occupancy, warp states), $OUT/sass-top.txt (the SASS
# instructions with the most stall samples, and the stall reasons summed over the kernel) and
# $OUT/sass.csv.gz (every SASS instruction with its samples). The report itself is left out:
# it is large.
#
# Here first:  scripts/cuda-build-devbin.sh
# Then run:    scripts/cuda-profile-forward.sh   (carry .devbin/dma-cuda-tests)
set -u
B=.devbin/dma-cuda-tests
OUT=${OUT:-/tmp/dma-out}
KERNEL=${KERNEL:-dma_forward_hopper}
BENCH=${BENCH:-bench_forward}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export DMA_BENCH_N=${DMA_BENCH_N:-32768}
rep=/tmp/dma-forward-profile
# Skip the warm-up launches: the profiled one is a steady-state call.
timeout 400 ncu --kernel-name "regex:$KERNEL" --launch-skip 3 --launch-count 1 --set full \
  --import-source yes -f -o "$rep" "$B" --ignored --exact "$BENCH" --nocapture \
  >"$OUT/ncu.log" 2>&1
echo "ncu rc=$?"
ncu -i "$rep.ncu-rep" --page details >"$OUT/details.txt" 2>&1
ncu -i "$rep.ncu-rep" --page source --csv --print-source sass 2>/dev/null >/tmp/sass.csv
gzip -c /tmp/sass.csv >"$OUT/sass.csv.gz"
python3 - /tmp/sass.csv >"$OUT/sass-top.txt" <<'EOF'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
head = next((i for i, r in enumerate(rows) if any("Warp Stall Sampling" in c for c in r)), None)
if head is None:  # another ncu's layout: show it, for the next version of this script
    for r in rows[:5]:
        print(r)
    sys.exit(0)
h, body = rows[head], rows[head + 1:]
col = {name: i for i, name in enumerate(h)}
samples = next(i for i, n in enumerate(h) if "Warp Stall Sampling" in n)
src = col.get("Source", 1)
def num(x):
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0
total = sum(num(r[samples]) for r in body if len(r) > samples) or 1.0
print(f"{len(body)} SASS instructions, {total:.0f} stall samples")
print("top instructions by stall samples:")
for r in sorted(body, key=lambda r: -num(r[samples]) if len(r) > samples else 0)[:40]:
    print(f"{100 * num(r[samples]) / total:6.2f}%  {r[src]}")
reasons = [n for n in h if n.startswith("stall_") or n.startswith("smsp__pcsamp")]
if reasons:
    print("stall reasons over the kernel:")
    sums = {n: sum(num(r[col[n]]) for r in body if len(r) > col[n]) for n in reasons}
    for n, v in sorted(sums.items(), key=lambda kv: -kv[1])[:15]:
        print(f"{100 * v / total:6.2f}%  {n}")
EOF
head -60 "$OUT/sass-top.txt"
grep -E "Duration|Issue Slots Busy|Executed Ipc|Achieved Occupancy|L2 Hit|Compute \(SM\) Throughput|Memory Throughput" \
  "$OUT/details.txt" | head -20
