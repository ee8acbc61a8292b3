//! Device buffers: uploads from and downloads to the host, and uninitialised allocations, with
//! their errors typed (OOM with the buffer's size and purpose).

use super::device::Device;
use super::error;
use crate::Result;
use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, DeviceSlice};

/// A device copy of `x`, `what` naming it in an out-of-memory error.
pub(crate) fn upload<T: DeviceRepr>(
    dev: &Device,
    x: &[T],
    what: &'static str,
) -> Result<CudaSlice<T>> {
    dev.stream()
        .clone_htod(x)
        .map_err(error::alloc(what, std::mem::size_of_val(x)))
}

/// A device buffer of `n` copies of `value` (outputs poisoned with NaN by the host entry points).
pub(crate) fn filled<T: DeviceRepr + Clone>(
    dev: &Device,
    value: T,
    n: usize,
    what: &'static str,
) -> Result<CudaSlice<T>> {
    upload(dev, &vec![value; n], what)
}

/// A host copy of a device buffer.
pub(crate) fn download<T: DeviceRepr>(dev: &Device, x: &CudaSlice<T>) -> Result<Vec<T>> {
    dev.stream().clone_dtoh(x).map_err(error::driver)
}

/// An uninitialised device buffer of `n` elements.
///
/// # Safety
/// The caller writes every element before anything reads it.
pub(crate) unsafe fn alloc_uninit<T: DeviceRepr>(
    dev: &Device,
    what: &'static str,
    n: usize,
) -> Result<CudaSlice<T>> {
    dev.stream()
        .alloc::<T>(n)
        .map_err(error::alloc(what, n * std::mem::size_of::<T>()))
}

/// A device buffer the kernels read: a whole [`CudaSlice`], or a [`CudaView`] of part of one
/// (e.g. the filled prefix of a KV cache allocated with room to grow, or one half of a buffer
/// holding k and v), read in place.
pub trait DeviceInput<T>: DeviceSlice<T> {
    /// The elements, as a view (what a kernel launch takes).
    fn view(&self) -> CudaView<'_, T>;
}

impl<T> DeviceInput<T> for CudaSlice<T> {
    fn view(&self) -> CudaView<'_, T> {
        self.as_view()
    }
}

impl<T> DeviceInput<T> for CudaView<'_, T> {
    fn view(&self) -> CudaView<'_, T> {
        self.slice(..)
    }
}
