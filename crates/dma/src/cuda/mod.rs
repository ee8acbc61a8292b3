//! The CUDA backend (feature `cuda`): DMA on cudarc device buffers.
//!
//! libcuda and libnvrtc are loaded at run time, so the crate builds on machines without CUDA; a
//! missing driver or device is a typed error.

mod device;
mod error;
mod libs;

pub use device::{Arch, Device};
