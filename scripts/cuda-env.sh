#!/usr/bin/env bash
# CUDA 13.0 toolchain pieces from PyPI into .cuda/ (ignored by git), for compiling and inspecting
# the dma crate's CUDA kernels on a machine without a GPU (NVRTC, ptxas, the CUDA headers).
#
#   scripts/cuda-env.sh install   # once per machine: pip wheels into .cuda/, and what candle's
#                                 # `cuda` feature needs to build (cuBLAS, cuRAND, a libcuda stub)
#   scripts/cuda-env.sh install-nvrtc   # only NVRTC and headers: compiling the kernels (CI)
#   source scripts/cuda-env.sh    # in each shell: PATH, LD_LIBRARY_PATH, CUDA_HOME
#
# The GPU machine has its own CUDA under /usr/local/cuda; nothing here is needed there.
_dma_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_dma_cu13="$_dma_root/.cuda/nvidia/cu13"

if [ "${1:-}" = "install" ] || [ "${1:-}" = "install-nvrtc" ]; then
  # NVRTC and the headers the kernels include: enough to compile every kernel (CI does).
  _dma_wheels="nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-crt==13.0.88
    nvidia-cuda-nvrtc==13.0.88"
  # nvcc and NVVM too (ptxas -v, candle's kernels).
  [ "$1" = "install" ] && _dma_wheels="$_dma_wheels nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88"
  # shellcheck disable=SC2086
  python3 -m pip install --quiet --target "$_dma_root/.cuda" $_dma_wheels || exit 1
  # The wheels ship versioned sonames only; cudarc also looks for the unversioned names.
  for lib in "$_dma_cu13"/lib/libnvrtc.so.13 "$_dma_cu13"/lib/libnvrtc-builtins.so.13.0; do
    [ -e "$lib" ] && ln -sf "$(basename "$lib")" "${lib%%.so*}.so"
  done
fi

if [ "${1:-}" = "install" ] || [ "${1:-}" = "install-candle" ]; then
  # candle's `cuda` feature links cuBLAS, cuRAND and libcuda at build time (cudarc's dynamic
  # linking) and compiles its kernels with nvcc. The GPU machine has CUDA 13.0: pin its libraries.
  # (pip --target does not merge into an existing nvidia/ folder: unpack aside, copy the libraries.)
  rm -rf "$_dma_root/.cuda/candle-wheels"
  python3 -m pip install --quiet --target "$_dma_root/.cuda/candle-wheels" --no-deps \
    nvidia-cublas==13.0.0.19 nvidia-curand==10.4.0.35 || exit 1
  cp -a "$_dma_root"/.cuda/candle-wheels/nvidia/cu13/lib/. "$_dma_cu13/lib/" || exit 1
  for lib in "$_dma_cu13"/lib/libcublas.so.13 "$_dma_cu13"/lib/libcublasLt.so.13 \
    "$_dma_cu13"/lib/libcurand.so.10 "$_dma_cu13"/lib/libcudart.so.13; do
    [ -e "$lib" ] && ln -sf "$(basename "$lib")" "${lib%%.so*}.so"
  done
  # No wheel carries libcuda (it comes with the driver): link against a stub that defines every
  # driver-API name cudarc declares; at run time the binary loads the GPU machine's libcuda.so.1.
  _dma_sys="$(find "${CARGO_HOME:-$HOME/.cargo}"/registry/src -path '*cudarc-0.19.*/src/driver/sys/mod.rs' | head -1)"
  if [ -z "$_dma_sys" ]; then
    cargo fetch --manifest-path "$_dma_root/Cargo.toml" >/dev/null || exit 1
    _dma_sys="$(find "${CARGO_HOME:-$HOME/.cargo}"/registry/src -path '*cudarc-0.19.*/src/driver/sys/mod.rs' | head -1)"
  fi
  grep -o 'fn cu[A-Za-z0-9_]*' "$_dma_sys" | sort -u | sed 's/^fn \(.*\)/void \1(void) {}/' \
    > "$_dma_root/.cuda/libcuda-stub.c"
  # In lib/stubs (cudarc's build searches it), never on LD_LIBRARY_PATH: a binary run here must
  # not load the stub as if it were a driver.
  mkdir -p "$_dma_cu13/lib/stubs"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$_dma_cu13/lib/stubs/libcuda.so" \
    "$_dma_root/.cuda/libcuda-stub.c" || exit 1
  echo "installed into $_dma_root/.cuda"
fi

export CUDA_HOME="$_dma_cu13"
export PATH="$_dma_cu13/bin:$PATH"
export LD_LIBRARY_PATH="$_dma_cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$_dma_root/target-cuda}"
