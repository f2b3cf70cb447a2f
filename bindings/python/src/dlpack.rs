//! Importing tensors through DLPack (`__dlpack__`): the capsule's structs, and ownership of an
//! imported tensor until its memory is no longer read.
//!
//! The consumer protocol: call `x.__dlpack__(...)`, take the `DLManagedTensor` out of the capsule,
//! rename the capsule to `used_dltensor` (so the producer's capsule destructor does not free it
//! too), and call the tensor's `deleter` once done. DLPack 1.0's versioned capsule
//! (`dltensor_versioned`, with a read-only flag) is asked for first; producers that predate it get
//! the legacy call.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::ffi::{c_void, CStr};
use transferlens::{DType, Error};

/// `DLDeviceType` values this package reads.
pub const DEVICE_CPU: i32 = 1;
pub const DEVICE_CUDA: i32 = 2;
pub const DEVICE_CUDA_HOST: i32 = 3;
pub const DEVICE_CUDA_MANAGED: i32 = 13;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *const i64,
    /// In elements; NULL for a compact row-major tensor.
    strides: *const i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

const FLAG_READ_ONLY: u64 = 1;

/// The managed tensor taken out of a capsule, whichever version.
enum Managed {
    Legacy(*mut DLManagedTensor),
    Versioned(*mut DLManagedTensorVersioned),
}

/// An imported tensor: its layout, and the producer's memory kept alive until drop.
pub struct DlpackTensor {
    managed: Managed,
    /// Start of the first element (data + byte_offset).
    pub ptr: *mut u8,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Strides in elements, one per dimension (computed for a compact tensor).
    pub strides: Vec<isize>,
    /// `DLDeviceType` and ordinal.
    pub device_type: i32,
    pub device_id: i32,
    pub read_only: bool,
}

// SAFETY: the tensor owns the producer's DLManagedTensor (the capsule was renamed, so nothing else
// frees it); DLPack's deleter may be called from any thread, and the memory is plain data.
unsafe impl Send for DlpackTensor {}
// SAFETY: shared access only reads the layout fields; the memory is read through raw pointers by
// the callers, who order their accesses (the GIL, or one analysis at a time).
unsafe impl Sync for DlpackTensor {}

impl Drop for DlpackTensor {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a capsule we renamed to "used_...", so we own it and call
        // its deleter exactly once (here).
        unsafe {
            match self.managed {
                Managed::Legacy(m) => {
                    if let Some(d) = (*m).deleter {
                        d(m)
                    }
                }
                Managed::Versioned(m) => {
                    if let Some(d) = (*m).deleter {
                        d(m)
                    }
                }
            }
        }
    }
}

fn dtype_of(t: DLDataType) -> Result<DType, Error> {
    Ok(match (t.code, t.bits, t.lanes) {
        (2, 32, 1) => DType::F32,
        (2, 64, 1) => DType::F64,
        (2, 16, 1) => DType::F16,
        (4, 16, 1) => DType::BF16,
        (code, bits, lanes) => {
            return Err(Error::UnsupportedDtype(format!(
            "DLPack dtype (code {code}, {bits} bits, {lanes} lanes) is not one of float32, float64, float16, bfloat16"
        )))
        }
    })
}

/// `(device_type, device_id)` of an object with `__dlpack_device__`, else CPU.
fn dlpack_device(obj: &Bound<'_, PyAny>) -> PyResult<(i32, i32)> {
    if obj.hasattr("__dlpack_device__")? {
        let (t, id): (i32, i32) = obj.call_method0("__dlpack_device__")?.extract()?;
        Ok((t, id))
    } else {
        Ok((DEVICE_CPU, 0))
    }
}

/// Imports `obj` through `__dlpack__`. `cuda_stream` gives the producer the stream that will read
/// a CUDA tensor (the producer orders its pending work before it); it is asked for only for CUDA
/// tensors.
pub fn import(
    obj: &Bound<'_, PyAny>,
    cuda_stream: impl FnOnce(i32) -> PyResult<Option<usize>>,
) -> PyResult<DlpackTensor> {
    let py = obj.py();
    let (device_type, device_id) = dlpack_device(obj)?;
    let kwargs = PyDict::new(py);
    if device_type == DEVICE_CUDA {
        if let Some(stream) = cuda_stream(device_id)? {
            kwargs.set_item("stream", stream)?;
        }
    }
    let versioned_kwargs = kwargs.copy()?;
    versioned_kwargs.set_item("max_version", (1, 0))?;
    let capsule = match obj.call_method("__dlpack__", (), Some(&versioned_kwargs)) {
        Ok(c) => c,
        // A producer older than DLPack 1.0 does not take max_version.
        Err(e) if e.is_instance_of::<PyTypeError>(py) => obj.call_method("__dlpack__", (), Some(&kwargs))?,
        Err(e) => return Err(e),
    };
    from_capsule(&capsule)
}

const VERSIONED: &CStr = c"dltensor_versioned";
const LEGACY: &CStr = c"dltensor";

fn from_capsule(capsule: &Bound<'_, PyAny>) -> PyResult<DlpackTensor> {
    let cap = capsule.as_ptr();
    // SAFETY: PyCapsule_IsValid accepts any object pointer and only reads it; the GIL is held.
    let (is_versioned, is_legacy) = unsafe {
        (ffi::PyCapsule_IsValid(cap, VERSIONED.as_ptr()) == 1, ffi::PyCapsule_IsValid(cap, LEGACY.as_ptr()) == 1)
    };
    let (managed, tensor, read_only) = if is_versioned {
        // SAFETY: the capsule is valid with this name (checked above).
        let m = unsafe { ffi::PyCapsule_GetPointer(cap, VERSIONED.as_ptr()) } as *mut DLManagedTensorVersioned;
        // SAFETY: a valid versioned capsule holds a DLManagedTensorVersioned, alive until its
        // deleter is called.
        let (major, flags) = unsafe { ((*m).version.major, (*m).flags) };
        if major != 1 {
            return Err(crate::errors::to_py(Error::InvalidArgument(format!(
                "DLPack major version {major} is not supported (expected 1)"
            ))));
        }
        // SAFETY: as above; dl_tensor lives inside the managed tensor.
        (Managed::Versioned(m), unsafe { &(*m).dl_tensor } as *const DLTensor, flags & FLAG_READ_ONLY != 0)
    } else if is_legacy {
        // SAFETY: the capsule is valid with this name (checked above).
        let m = unsafe { ffi::PyCapsule_GetPointer(cap, LEGACY.as_ptr()) } as *mut DLManagedTensor;
        // SAFETY: a valid legacy capsule holds a DLManagedTensor, alive until its deleter is called.
        (Managed::Legacy(m), unsafe { &(*m).dl_tensor } as *const DLTensor, false)
    } else {
        return Err(PyTypeError::new_err("__dlpack__ did not return an unused DLPack capsule"));
    };
    // The capsule's destructor must not free what we now own.
    let used: &CStr = if is_versioned { c"used_dltensor_versioned" } else { c"used_dltensor" };
    // SAFETY: `cap` is a valid capsule; the name is a 'static C string, as the capsule requires.
    if unsafe { ffi::PyCapsule_SetName(cap, used.as_ptr()) } != 0 {
        return Err(PyErr::fetch(capsule.py()));
    }
    // From here on, dropping `owned` calls the deleter.
    let mut owned = DlpackTensor {
        managed,
        ptr: std::ptr::null_mut(),
        dtype: DType::F32,
        shape: Vec::new(),
        strides: Vec::new(),
        device_type: 0,
        device_id: 0,
        read_only,
    };
    // SAFETY: the tensor is alive while `owned` is (its deleter has not run).
    let t = unsafe { &*tensor };
    owned.dtype = dtype_of(t.dtype).map_err(crate::errors::to_py)?;
    owned.device_type = t.device.device_type;
    owned.device_id = t.device.device_id;
    let ndim = usize::try_from(t.ndim).map_err(|_| PyTypeError::new_err("DLPack tensor with negative ndim"))?;
    let shape: Vec<i64> = if ndim == 0 {
        Vec::new()
    } else {
        // SAFETY: DLPack guarantees `shape` holds ndim values.
        unsafe { std::slice::from_raw_parts(t.shape, ndim) }.to_vec()
    };
    owned.shape = shape.iter().map(|&d| d as usize).collect();
    owned.strides = if t.strides.is_null() || ndim == 0 {
        let mut s = vec![1isize; ndim];
        for k in (0..ndim.saturating_sub(1)).rev() {
            s[k] = s[k + 1] * shape[k + 1] as isize;
        }
        s
    } else {
        // SAFETY: a non-NULL `strides` holds ndim values (DLPack).
        unsafe { std::slice::from_raw_parts(t.strides, ndim) }.iter().map(|&s| s as isize).collect()
    };
    owned.ptr = (t.data as *mut u8).wrapping_add(t.byte_offset as usize);
    Ok(owned)
}

impl DlpackTensor {
    /// Whether the memory is on the host (CPU, pinned or managed memory).
    pub fn on_host(&self) -> bool {
        matches!(self.device_type, DEVICE_CPU | DEVICE_CUDA_HOST | DEVICE_CUDA_MANAGED)
    }
}
