#!/usr/bin/env bash
# CUDA 13.0 toolchain pieces from PyPI into .cuda/ (ignored by git), for compiling and inspecting
# the dma crate's CUDA kernels on a machine without a GPU (NVRTC, ptxas, the CUDA headers).
#
#   scripts/cuda-env.sh install   # once per machine: pip wheels into .cuda/
#   source scripts/cuda-env.sh    # in each shell: PATH, LD_LIBRARY_PATH, CUDA_HOME
#
# The GPU machine has its own CUDA under /usr/local/cuda; nothing here is needed there.
_dma_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_dma_cu13="$_dma_root/.cuda/nvidia/cu13"

if [ "${1:-}" = "install" ]; then
  python3 -m pip install --quiet --target "$_dma_root/.cuda" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88 || exit 1
  # The wheels ship versioned sonames only; cudarc also looks for the unversioned names.
  for lib in "$_dma_cu13"/lib/libnvrtc.so.13 "$_dma_cu13"/lib/libnvrtc-builtins.so.13.0; do
    [ -e "$lib" ] && ln -sf "$(basename "$lib")" "${lib%%.so*}.so"
  done
  echo "installed into $_dma_root/.cuda"
fi

export CUDA_HOME="$_dma_cu13"
export PATH="$_dma_cu13/bin:$PATH"
export LD_LIBRARY_PATH="$_dma_cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$_dma_root/target-cuda}"
