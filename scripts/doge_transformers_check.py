#!/usr/bin/env python3
"""Compare our Doge (the `dma logits` command) with transformers' DogeForCausalLM.

Builds small random Doge models with transformers (dense MLP, GQA with 4 query heads and 2 kv
heads, keep_window_size 16 < sequence 64, A drawn with torch.randn so the top-w keys are not
decided by ties, eager attention, f32, on the CPU), saves each with save_pretrained, writes token
ids to ids.safetensors, computes transformers' logits, runs

    DMA_BINARY logits --model DIR --input ids.safetensors --output logits.safetensors

and prints the relative Frobenius error ||ours - theirs|| / ||theirs|| of the logits for each
model. Then the other direction: a model that our `dma train` trained for two steps and saved is
loaded by transformers' from_pretrained and compared with `dma logits` on it the same way.
PASS when every error <= 1e-4, else FAIL. Exit code 0 on PASS, 1 on FAIL.

Token ids are distinct within each row: a repeated token has the same value vector, so in the
first layer exactly the same bias as its earlier occurrence, and which of two tied keys makes
the top-w is then an arbitrary choice of torch.topk (ours: the later key wins, SPEC.md).

Usage: python3 scripts/doge_transformers_check.py PATH/TO/dma [WORK_DIR]
"""

import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import DogeConfig, DogeForCausalLM

TOLERANCE = 1e-4
BATCH, SEQ = 2, 64

# (name, DogeConfig keyword arguments)
CASES = [
    (
        "gqa-untied",
        dict(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            keep_window_size=16,
            max_position_embeddings=128,
            hidden_act="silu",
            tie_word_embeddings=False,
        ),
    ),
    (
        "gqa-tied-biases-rope500",
        dict(
            vocab_size=96,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            keep_window_size=16,
            max_position_embeddings=128,
            hidden_act="gelu_pytorch_tanh",
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        ),
    ),
]


def eager_model(kwargs):
    config = DogeConfig(**kwargs)
    config._attn_implementation = "eager"
    model = DogeForCausalLM(config)
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
        except Exception as e:  # older or newer API: the config setting above stands
            print(f"  (set_attn_implementation: {e})")
    return model.float().eval()


@torch.no_grad()
def randomise(model):
    """Weights of order 1 / sqrt(fan_in), so activations and biases are of order 1; A ~ N(0, 1)
    so the bias heads rank keys differently; norms and residual scales near 1."""
    for name, p in model.named_parameters():
        if name.endswith(".A"):
            p.copy_(torch.randn_like(p))
        elif name.endswith("norm.weight") or name.endswith("_residual"):
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
        elif name.endswith("embed_tokens.weight"):
            p.copy_(torch.randn_like(p))
        elif name.endswith(".bias"):
            p.copy_(0.1 * torch.randn_like(p))
        elif p.dim() == 2:
            scale = 0.5 if "dt_proj" in name else 1.0
            p.copy_(scale * torch.randn_like(p) / math.sqrt(p.shape[1]))


def distinct_ids(vocab):
    rows = [torch.randperm(vocab)[:SEQ] for _ in range(BATCH)]
    return torch.stack(rows).to(torch.int64)


def rel_frobenius(ours, theirs):
    return (torch.linalg.norm((ours - theirs).double()) / torch.linalg.norm(theirs.double())).item()


def our_logits(binary, d, ids):
    """`dma logits` of the model directory d on ids, or None (printed) when it fails."""
    save_file({"input_ids": ids.to(torch.int32).contiguous()}, str(d / "ids.safetensors"))
    cmd = [
        str(binary), "logits",
        "--model", str(d),
        "--input", str(d / "ids.safetensors"),
        "--output", str(d / "logits.safetensors"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        print(f"  {' '.join(cmd)}\n  failed: {run.stderr.strip()}")
        return None
    return load_file(str(d / "logits.safetensors"))["logits"]


def save(model, d):
    try:
        model.save_pretrained(d, safe_serialization=True)
    except TypeError:  # transformers versions that always write safetensors
        model.save_pretrained(d)


def round_trip(binary, work):
    """Our save format read by transformers: two steps of `dma train` from a random model, the
    checkpoint loaded with from_pretrained, its logits against `dma logits` of the same files."""
    kwargs = dict(CASES[0][1], vocab_size=300)  # byte-level ids need 256 tokens
    init = work / "round-trip-init"
    model = eager_model(kwargs)
    randomise(model)
    save(model, init)
    corpus = work / "round-trip-corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 50)
    out = work / "round-trip-trained"
    cmd = [str(binary), "train", "--data", str(corpus), "--init", str(init), "--out", str(out),
           "--steps", "2", "--batch", "2", "--seq-len", "32", "--warmup", "1",
           "--save-every", "2", "--eval-every", "2", "--lr", "1e-2"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        print(f"  {' '.join(cmd)}\n  failed: {run.stderr.strip()}")
        return math.inf
    saved = out / "step-00000002"
    theirs_model = DogeForCausalLM.from_pretrained(saved, attn_implementation="eager").float().eval()
    ids = distinct_ids(kwargs["vocab_size"])
    with torch.no_grad():
        theirs = theirs_model(input_ids=ids).logits.float()
        before = model(input_ids=ids).logits.float()
    ours = our_logits(binary, saved, ids)
    if ours is None or tuple(ours.shape) != tuple(theirs.shape):
        return math.inf
    err = rel_frobenius(ours, theirs)
    print(
        f"round trip (dma train -> transformers from_pretrained): logits {tuple(theirs.shape)}, "
        f"relative Frobenius error {err:.3e} (training moved the logits by "
        f"{rel_frobenius(theirs, before):.3e})"
    )
    return err


def check(binary, work, name, kwargs):
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    model = eager_model(kwargs)
    randomise(model)
    ids = distinct_ids(kwargs["vocab_size"])
    with torch.no_grad():
        theirs = model(input_ids=ids).logits.float()
        # The same model with a window covering every key: how much the dynamic mask matters.
        windows = [layer.self_attn.keep_window_size for layer in model.model.layers]
        for layer in model.model.layers:
            layer.self_attn.keep_window_size = 10**9
        dense = model(input_ids=ids).logits.float()
        for layer, w in zip(model.model.layers, windows):
            layer.self_attn.keep_window_size = w
    save(model, d)
    if not (d / "model.safetensors").exists():
        raise SystemExit(f"{d}: save_pretrained wrote no model.safetensors: {sorted(p.name for p in d.iterdir())}")
    ours = our_logits(binary, d, ids)
    if ours is None:
        return math.inf
    if tuple(ours.shape) != tuple(theirs.shape):
        print(f"  shape {tuple(ours.shape)} != transformers' {tuple(theirs.shape)}")
        return math.inf
    err = rel_frobenius(ours, theirs)
    print(
        f"{name}: attn {model.config._attn_implementation}, logits {tuple(theirs.shape)}, "
        f"relative Frobenius error {err:.3e} "
        f"(transformers' own logits move by {rel_frobenius(dense, theirs):.3e} "
        f"when keep_window_size covers every key)"
    )
    return err


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    binary = Path(sys.argv[1]).resolve()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, binary {binary}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tmp)
        errors = [check(binary, work, name, kwargs) for name, kwargs in CASES]
        errors.append(round_trip(binary, work))
    worst = max(errors)
    verdict = "PASS" if worst <= TOLERANCE else "FAIL"
    print(f"{verdict}: worst relative Frobenius error {worst:.3e} (tolerance {TOLERANCE:.0e})")
    sys.exit(0 if verdict == "PASS" else 1)


if __name__ == "__main__":
    main()
