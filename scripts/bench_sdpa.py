"""Dense causal attention through PyTorch's SDPA (cuDNN and flash backends), timed like the dma
forward bench in crates/dma/tests/cuda.rs: B=1, H=16, D=128, bf16, median of CUDA-event times.

    python3 scripts/bench_sdpa.py [N ...]      (default 16384 32768)
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


def main():
    sizes = [int(x) for x in sys.argv[1:]] or [16384, 32768]
    h, d = 16, 128
    for n in sizes:
        q, k, v = (torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for name, backend in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)]:
            with sdpa_kernel([backend]):
                ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
            tflops = 4 * (n * (n + 1) / 2) * h * d / (ms * 1e-3) / 1e12
            print(f"BENCH sdpa {name} dense causal N={n} H={h} D={d} bf16: {ms:.3f} ms ({tflops:.0f} TFLOP/s)")


if __name__ == "__main__":
    main()
