"""BENCH lines (crates/dma/tests/cuda.rs benchmarks, scripts/bench_sdpa.py) to the JSON-lines
records of `dma plot` on stdout:

    python3 scripts/bench_records.py bench.log > bench.jsonl
    dma plot --input bench.jsonl --out-dir docs/img/h100 --baseline sdpa-cudnn

One record per timing: kind forward | forward_backward | decode (with the suffix _paper for the
paper's configuration, Hq=2, Hkv=1), impl naming the implementation (dma; dma-state, a decode step over
the kept set carried from the step before; sdpa-cudnn, sdpa-flash, sdpa-default) and, for grouped kv heads outside the paper's configuration, its kv heads
(dma-Hkv4), n the sequence length (decode: the context), time_ms the median, peak_mib the peak
device memory where the line has it.
"""
import json
import re
import sys


def fields(line):
    return dict(re.findall(r"(\w+)=(\d+)", line))


def record(line):
    m = re.search(r": ([0-9.]+) ms", line)
    if not m or not line.startswith("BENCH"):
        return None
    f = fields(line)
    words = line.split()
    who = words[1] if words[1].startswith("dma") else f"sdpa-{words[2]}"
    if "decode" in line:
        kind, n = "decode", int(f["ctx"])
    else:
        kind = "forward_backward" if "fwd+bwd" in line else "forward"
        n = int(f["N"])
    hq = int(f.get("Hq", f.get("H", 0)))
    hkv = int(f.get("Hkv", hq))
    if hq == 2:  # the paper's configuration gets its own charts
        kind += "_paper"
    grouped = hkv != hq and kind in ("forward", "forward_backward")
    rec = {"kind": kind, "impl": f"{who}-Hkv{hkv}" if grouped else who, "n": n,
           "time_ms": float(m.group(1)), "device": "H100", "dtype": "bf16",
           "heads": hq, "head_dim": int(f.get("D", 128))}
    if "w" in f:
        rec["window"] = int(f["w"])
    peak = re.search(r"peak device memory ([0-9.]+) MiB", line)
    if peak:
        rec["peak_mib"] = float(peak.group(1))
    rec["hkv"] = hkv
    return rec


def main():
    seen = set()
    for path in sys.argv[1:]:
        for line in open(path):
            r = record(line.strip())
            if r is None:
                continue
            key = (r["kind"], r["impl"], r["n"])
            if key in seen:  # a repeated timing: keep the first
                continue
            seen.add(key)
            print(json.dumps(r))


if __name__ == "__main__":
    main()
