#!/usr/bin/env bash
# Builds the CUDA test binary here and copies it, stripped, to .devbin/dma-cuda-tests (ignored:
# add `/.devbin/` to .git/info/exclude), for carrying to the GPU machine.
# BEFORE=<commit> also builds the `dma` CLI of that commit as .devbin/dma-before.xz, the
# baseline of scripts/cuda-train-check.sh's A/B (in a temporary worktree sharing the target
# folder, so only the workspace's own crates compile again).
set -eu
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# nvcc, cuBLAS and a libcuda stub for candle's `cuda` build (scripts/cuda-env.sh install), and
# the H100's compute capability so that candle's build does not look for a GPU.
source scripts/cuda-env.sh
export CUDA_COMPUTE_CAP=90
mkdir -p .devbin
if [ -n "${BEFORE:-}" ]; then
  tree=$(mktemp -d)
  git worktree add --detach -q "$tree" "$BEFORE"
  ln -s "$root/.cuda" "$tree/.cuda"
  (cd "$tree" && cargo build -p dma-cli --features cuda --release 2>/dev/null)
  git worktree remove --force "$tree"
  cp "$CARGO_TARGET_DIR/release/dma" .devbin/dma-before
  strip .devbin/dma-before
  xz -T2 -6 -f .devbin/dma-before
  ls -la .devbin/dma-before.xz
  # cargo names a workspace crate's build by its path inside the workspace, so that build took
  # the same slots as this checkout's, and this checkout's files, older than it, would look
  # built: make them newer, so that the builds below compile this checkout's code.
  find crates -type f -exec touch {} +
fi
bin=$(cargo test -p dma --features cuda --release --test cuda --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])')
cp "$bin" .devbin/dma-cuda-tests
strip .devbin/dma-cuda-tests
ls -la .devbin/dma-cuda-tests
# The `dma` CLI with the cuda device (`dma selftest --device cuda`, `dma op --device cuda`, the
# model subcommands with --device cuda).
cargo build -p dma-cli --features cuda --release 2>/dev/null
cp "$CARGO_TARGET_DIR/release/dma" .devbin/dma
strip .devbin/dma
ls -la .devbin/dma
# Compressed for the device tool's 64 MiB carry limit (candle's kernels make the binary ~60 MB);
# scripts/cuda-device-suite.sh unpacks it there.
xz -T2 -6 -kf .devbin/dma
ls -la .devbin/dma.xz
