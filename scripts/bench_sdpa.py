"""Dense attention through PyTorch's SDPA (cuDNN and flash backends), timed like the dma benches
in crates/dma/tests/cuda.rs: bf16, D=128, median of CUDA-event times.

    python3 scripts/bench_sdpa.py [N ...]                  forward, dense causal, B=1, H=16
                                                           (--hq, --hkv as below)
    python3 scripts/bench_sdpa.py --fwdbwd [--hkv 4] N ..  forward + backward, dense causal, B=1,
                                                           Hq=16, Hkv=16 (or --hkv), GQA
        [--hq 8] [--dim 64]                                other query heads / head dim
    python3 scripts/bench_sdpa.py --decode CTX ...         decode: B=1, one query, Hq=32, Hkv=8,
                                                           context CTX keys (dense, GQA)
(default sizes 16384 32768; decode 8192 32768 131072)
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(fn, warmup=3, reps=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


BACKENDS = [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)]


def forward(sizes, hkv, h=16, d=128):
    for n in sizes:
        q = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        for name, backend in BACKENDS:
            try:
                with sdpa_kernel([backend]):
                    ms = median_ms(lambda: F.scaled_dot_product_attention(
                        q, k, v, is_causal=True, enable_gqa=hkv != h))
            except RuntimeError as e:
                print(f"BENCH sdpa {name} forward N={n} Hkv={hkv}: unavailable ({str(e)[:80]})")
                continue
            tflops = 4 * (n * (n + 1) / 2) * h * d / (ms * 1e-3) / 1e12
            print(f"BENCH sdpa {name} dense causal N={n} Hq={h} Hkv={hkv} D={d} bf16: {ms:.3f} ms ({tflops:.0f} TFLOP/s)")


def fwdbwd(sizes, hkv, h=16, d=128):
    for n in sizes:
        q = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                for _ in range(2))
        do = torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16)
        for name, backend in BACKENDS:
            def step():
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hkv != h)
                torch.autograd.grad(o, (q, k, v), do)
            try:
                with sdpa_kernel([backend]):
                    ms = median_ms(step)
            except RuntimeError as e:
                print(f"BENCH sdpa {name} fwd+bwd N={n} Hkv={hkv}: unavailable ({str(e)[:80]})")
                continue
            print(f"BENCH sdpa {name} dense causal fwd+bwd N={n} Hq={h} Hkv={hkv} D={d} bf16: {ms:.3f} ms")


def decode(sizes):
    hq, hkv, d = 32, 8, 128
    for n in sizes:
        q = torch.randn(1, hq, 1, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, hkv, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        for name, backend in BACKENDS + [("default", None)]:
            def step():
                F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            try:
                if backend is None:
                    ms = median_ms(step)
                else:
                    with sdpa_kernel([backend]):
                        ms = median_ms(step)
            except RuntimeError as e:
                print(f"BENCH sdpa {name} decode ctx={n}: unavailable ({str(e)[:80]})")
                continue
            print(f"BENCH sdpa {name} dense decode ctx={n} Hq={hq} Hkv={hkv} D={d} bf16 Nq=1: {ms:.4f} ms")


def main():
    args = sys.argv[1:]

    def option(name, default):
        if name not in args:
            return default
        i = args.index(name)
        value = int(args[i + 1])
        del args[i:i + 2]
        return value

    hkv = option("--hkv", 16)
    hq = option("--hq", 16)
    dim = option("--dim", 128)
    mode = "fwd"
    for m in ("--fwdbwd", "--decode"):
        if m in args:
            mode = m[2:]
            args.remove(m)
    sizes = [int(x) for x in args]
    if mode == "decode":
        decode(sizes or [8192, 32768, 131072])
    elif mode == "fwdbwd":
        fwdbwd(sizes or [16384, 32768], hkv, hq, dim)
    else:
        forward(sizes or [16384, 32768], hkv if "--hkv" in sys.argv else hq, hq, dim)


if __name__ == "__main__":
    main()
