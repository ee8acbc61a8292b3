"""`dma op --device cuda` against `dma op --device cpu` on one random bf16 file (forward and
backward): run on the GPU machine with the CLI at .devbin/dma (scripts/cuda-build-devbin.sh).

    python3 scripts/cuda-op-check.py [DMA_BINARY]
"""
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

dma = sys.argv[1] if len(sys.argv) > 1 else ".devbin/dma"
torch.manual_seed(0)
b, n, hq, hkv, d = 2, 777, 8, 2, 128
t = {
    "q": torch.rand(b, n, hq, d) * 2 - 1,
    "k": torch.rand(b, n, hkv, d) * 2 - 1,
    "v": torch.rand(b, n, hkv, d) * 2 - 1,
    "dout": torch.rand(b, n, hq, d) * 2 - 1,
}
t = {k: v.to(torch.bfloat16) for k, v in t.items()}
t["bias"] = torch.rand(b, hkv, n) * 8 - 4
worst = 0.0
with tempfile.TemporaryDirectory() as tmp:
    save_file(t, f"{tmp}/in.safetensors")
    outs = {}
    for dev in ("cpu", "cuda"):
        cmd = [dma, "op", "--input", f"{tmp}/in.safetensors", "--output", f"{tmp}/{dev}.safetensors",
               "--window", "200", "--device", dev]
        r = subprocess.run(cmd, capture_output=True, text=True)
        print(" ".join(cmd[1:]), "-> rc", r.returncode, r.stderr.strip()[:200])
        if r.returncode != 0:
            sys.exit(1)
        outs[dev] = load_file(f"{tmp}/{dev}.safetensors")
    for name, ref in outs["cpu"].items():
        got = outs["cuda"][name].float()
        ref = ref.float()
        fin = torch.isfinite(ref)
        err = ((got[fin] - ref[fin]).norm() / ref[fin].norm().clamp_min(1e-30)).item()
        bad = torch.isnan(got).any().item()
        worst = max(worst, err if not bad else float("inf"))
        print(f"op {name}: cuda vs cpu relative error {err:.2e}{' NaN!' if bad else ''}")
print(f"OPCHECK {'PASS' if worst <= 1e-2 else 'FAIL'} worst {worst:.2e}")
sys.exit(0 if worst <= 1e-2 else 1)
