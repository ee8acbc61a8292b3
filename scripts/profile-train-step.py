#!/usr/bin/env python3
"""GPU time of a short training run by kernel, on the GPU machine: runs the given command under
ncu (gpu__time_duration only, so each kernel is replayed once) and prints the total and the
kernels that take most of it, summed by name.

    scripts/profile-train-step.py .devbin/dma mqar --device cuda --steps 2 ...
"""
import csv
import io
import subprocess
import sys
from collections import defaultdict

# ncu spells the unit out or abbreviates it, by version.
UNITS = {"nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3,
         "ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def main() -> None:
    cmd = ["ncu", "--metrics", "gpu__time_duration.sum", "--csv", *sys.argv[1:]]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    # ncu prints the program's own output first; the CSV starts at its header.
    start = out.find('"ID","Process ID"')
    if start < 0:
        sys.exit("no ncu CSV in the output:\n" + out[-2000:])
    total_ms, calls = defaultdict(float), defaultdict(int)
    for row in csv.DictReader(io.StringIO(out[start:])):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = row["Kernel Name"].split("(")[0].split("<")[0]
        total_ms[name] += float(row["Metric Value"].replace(",", "")) * UNITS[row["Metric Unit"]]
        calls[name] += 1
    grand = sum(total_ms.values())
    print(f"GPU total {grand:.1f} ms in {sum(calls.values())} kernels")
    for name, ms in sorted(total_ms.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{ms:8.2f} ms {100 * ms / grand:5.1f}% {calls[name]:6d} calls  {name}")


if __name__ == "__main__":
    main()
