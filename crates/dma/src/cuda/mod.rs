//! The CUDA backend (feature `cuda`): DMA on cudarc device buffers.
//!
//! Kernels are CUDA C++ (`kernels/*.cu`) compiled at run time by NVRTC for the GPU in hand
//! (sm_90a on H100, sm_80 and newer generally), specialised by template arguments and cached
//! per process ([`compile`]). libcuda and libnvrtc are loaded at run time, so the crate builds on
//! machines without CUDA; a missing driver or device is a typed error.

pub mod compile;
mod device;
mod error;
mod libs;

pub use device::{Arch, Device};
