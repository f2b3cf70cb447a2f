//! Python arrays as the library's matrices: numpy arrays and `__dlpack__` objects, used in place
//! when their rows are strided (each row contiguous, rows a fixed number of elements apart),
//! copied once otherwise; and the contexts the calls run on.

use crate::dlpack::{self, DlpackTensor};
use crate::errors::{invalid, to_py};
use numpy::{PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use std::collections::HashMap;
use std::sync::Mutex;
use transferlens::tensor::HostSlice;
use transferlens::{BackendChoice, Context, DType, Error, Matrix};

/// Parses `backend=`.
pub fn backend_choice(name: &str) -> PyResult<BackendChoice> {
    match name {
        "auto" => Ok(BackendChoice::Auto),
        "cpu" => Ok(BackendChoice::Cpu),
        "cuda" => Ok(BackendChoice::Cuda),
        _ => invalid(format!("backend must be 'auto', 'cpu' or 'cuda', got {name:?}")),
    }
}

/// Contexts are made once per (backend, device) and shared: opening a CUDA device compiles the
/// kernels, and probing for one on a machine without CUDA is not free either.
pub fn context(choice: BackendChoice, device: i32) -> PyResult<Context> {
    static CONTEXTS: Mutex<Option<HashMap<(u32, i32), Context>>> = Mutex::new(None);
    let key = (choice as u32, device);
    let mut map = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    if let Some(c) = map.get(&key) {
        return Ok(c.clone());
    }
    let c = Context::new(choice, device).map_err(to_py)?;
    map.insert(key, c.clone());
    Ok(c)
}

/// What keeps an input's memory alive.
enum Owner {
    /// A numpy array (the caller's, or a contiguous copy numpy made).
    Numpy(#[allow(dead_code)] Py<PyAny>),
    Dlpack(#[allow(dead_code)] DlpackTensor),
    /// Our own copy, 8-byte aligned.
    Copy(#[allow(dead_code)] Vec<u64>),
}

/// A 2-D input: where its elements are, and what keeps them alive.
pub struct InputMatrix {
    _owner: Owner,
    ptr: *const u8,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    row_stride: usize,
    /// -1 for host memory, else the CUDA device ordinal.
    pub device: i32,
}

// SAFETY: the owner keeps the memory alive wherever the value moves; the pointer is only read.
unsafe impl Send for InputMatrix {}
// SAFETY: shared access only reads the memory.
unsafe impl Sync for InputMatrix {}

impl InputMatrix {
    /// The library's view of the input.
    pub fn matrix(&self) -> Result<Matrix<'_>, Error> {
        let span = if self.rows == 0 { 0 } else { (self.rows - 1) * self.row_stride + self.cols };
        if self.device >= 0 {
            // SAFETY: the owner keeps `span` elements of device memory at ptr alive for &self
            // (checked when the input was made: the exporter's shape and strides cover them).
            return unsafe {
                Matrix::from_device(self.ptr as u64, self.dtype, self.device, self.rows, self.cols, self.row_stride)
            };
        }
        let ptr = if span == 0 { std::ptr::NonNull::<u64>::dangling().as_ptr() as *const u8 } else { self.ptr };
        // SAFETY: `span` elements of `dtype` at ptr are readable host memory, aligned for the
        // dtype (checked when the input was made), kept alive by the owner for &self; an empty
        // span uses a dangling aligned pointer, as empty slices may.
        let data = unsafe {
            match self.dtype {
                DType::F32 => HostSlice::F32(std::slice::from_raw_parts(ptr as *const f32, span)),
                DType::F64 => HostSlice::F64(std::slice::from_raw_parts(ptr as *const f64, span)),
                DType::F16 => HostSlice::F16(std::slice::from_raw_parts(ptr as *const half::f16, span)),
                DType::BF16 => HostSlice::BF16(std::slice::from_raw_parts(ptr as *const half::bf16, span)),
            }
        };
        Matrix::from_host(data, self.rows, self.cols, self.row_stride)
    }
}

/// The row stride, in elements, of a 2-D layout with these strides (in elements), when every
/// row is contiguous and rows are a non-negative number of elements apart; `None` otherwise.
fn row_stride_of(rows: usize, cols: usize, strides: [isize; 2]) -> Option<usize> {
    let contiguous_rows = cols <= 1 || strides[1] == 1;
    if !contiguous_rows {
        return None;
    }
    if rows <= 1 {
        return Some(cols.max(1));
    }
    usize::try_from(strides[0]).ok().filter(|&s| s >= cols)
}

/// The dtype of a numpy array of native-order floats the library reads; `None` otherwise.
pub fn numpy_dtype(a: &Bound<'_, PyUntypedArray>) -> Option<DType> {
    use numpy::PyArrayDescrMethods;
    let d = a.dtype();
    if d.kind() != b'f' || d.byteorder() == b'>' {
        return None;
    }
    match d.itemsize() {
        2 => Some(DType::F16),
        4 => Some(DType::F32),
        8 => Some(DType::F64),
        _ => None,
    }
}

/// `what` as a 2-D matrix (see the module docs). `cuda_stream(device)` is the stream a CUDA
/// input will be read on.
pub fn input_matrix(
    obj: &Bound<'_, PyAny>,
    what: &str,
    cuda_stream: &dyn Fn(i32) -> PyResult<Option<usize>>,
) -> PyResult<InputMatrix> {
    let py = obj.py();
    if let Ok(a) = obj.cast::<PyUntypedArray>() {
        return numpy_matrix(a, what);
    }
    if obj.hasattr("__dlpack__")? {
        return dlpack_matrix(dlpack::import(obj, cuda_stream)?, what);
    }
    // Anything else (nested lists, ...) goes through numpy once, as float64.
    let np = py.import("numpy")?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("dtype", np.getattr("float64")?)?;
    let a = np.call_method("asarray", (obj,), Some(&kwargs))?;
    numpy_matrix(a.cast::<PyUntypedArray>()?, what)
}

fn numpy_matrix(a: &Bound<'_, PyUntypedArray>, what: &str) -> PyResult<InputMatrix> {
    if a.ndim() != 2 {
        return Err(to_py(Error::ShapeMismatch(format!(
            "{what} must be 2-D (samples x features), got {} dimensions",
            a.ndim()
        ))));
    }
    let Some(dtype) = numpy_dtype(a) else {
        return Err(to_py(Error::UnsupportedDtype(format!(
            "{what} has dtype {}; use float32, float64 or float16 (or bfloat16 through DLPack)",
            a.dtype()
        ))));
    };
    let size = dtype.size();
    let (rows, cols) = (a.shape()[0], a.shape()[1]);
    // SAFETY: the array object is alive (we hold it); reading its data pointer field is sound.
    let ptr = unsafe { (*a.as_array_ptr()).data } as *const u8;
    let aligned = (ptr as usize).is_multiple_of(size);
    let strides = a.strides();
    let in_elements = |s: isize| if s % size as isize == 0 { s / size as isize } else { isize::MIN };
    let layout = row_stride_of(rows, cols, [in_elements(strides[0]), in_elements(strides[1])]);
    match layout {
        Some(row_stride) if aligned => Ok(InputMatrix {
            _owner: Owner::Numpy(a.clone().into_any().unbind()),
            ptr,
            dtype,
            rows,
            cols,
            row_stride,
            device: -1,
        }),
        // Other layouts: one contiguous copy, made by numpy.
        _ => {
            let copy = a.py().import("numpy")?.call_method1("ascontiguousarray", (a,))?;
            numpy_matrix(copy.cast::<PyUntypedArray>()?, what)
        }
    }
}

fn dlpack_matrix(t: DlpackTensor, what: &str) -> PyResult<InputMatrix> {
    if t.shape.len() != 2 {
        return Err(to_py(Error::ShapeMismatch(format!(
            "{what} must be 2-D (samples x features), got {} dimensions",
            t.shape.len()
        ))));
    }
    let (rows, cols, dtype) = (t.shape[0], t.shape[1], t.dtype);
    let aligned = (t.ptr as usize).is_multiple_of(dtype.size());
    let device = if t.on_host() {
        -1
    } else if t.device_type == dlpack::DEVICE_CUDA {
        t.device_id
    } else {
        return invalid(format!("{what}: DLPack device type {} is neither the CPU nor CUDA", t.device_type));
    };
    match row_stride_of(rows, cols, [t.strides[0], t.strides[1]]) {
        Some(row_stride) if aligned => {
            let ptr = t.ptr as *const u8;
            Ok(InputMatrix { _owner: Owner::Dlpack(t), ptr, dtype, rows, cols, row_stride, device })
        }
        _ if device >= 0 => invalid(format!(
            "{what}: a CUDA tensor must have contiguous rows (strides {:?}); call .contiguous() first",
            t.strides
        )),
        _ => {
            let copy = gather(&t, rows, cols);
            let ptr = copy.as_ptr() as *const u8;
            Ok(InputMatrix { _owner: Owner::Copy(copy), ptr, dtype, rows, cols, row_stride: cols, device })
        }
    }
}

/// A contiguous copy of a 2-D host tensor of any strides, in 8-byte aligned memory.
fn gather(t: &DlpackTensor, rows: usize, cols: usize) -> Vec<u64> {
    let size = t.dtype.size();
    let mut out = vec![0u64; (rows * cols * size).div_ceil(8)];
    let dst = out.as_mut_ptr() as *mut u8;
    for r in 0..rows {
        for c in 0..cols {
            let offset = (r as isize * t.strides[0] + c as isize * t.strides[1]) * size as isize;
            // SAFETY: the exporter's shape and strides address element (r, c) inside its buffer,
            // kept alive by `t`; the destination holds rows x cols elements; they do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(t.ptr.offset(offset), dst.add((r * cols + c) * size), size) };
        }
    }
    out
}

/// The layers of `obj`: a list or tuple of matrices, or one matrix.
pub fn layers<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        obj.try_iter()?.collect()
    } else {
        Ok(vec![obj.clone()])
    }
}

/// Inputs and the context to compute them on: the CUDA device the inputs live on, if any;
/// else the backend asked for.
pub struct Inputs {
    pub ctx: Context,
    pub sides: Vec<Vec<InputMatrix>>,
}

impl Inputs {
    /// Imports each side's layers, named `names[k][i]`.
    pub fn import(sides: &[(&str, Vec<Bound<'_, PyAny>>)], choice: BackendChoice) -> PyResult<Inputs> {
        let stream = |device: i32| -> PyResult<Option<usize>> {
            if choice == BackendChoice::Cpu {
                return Err(to_py(Error::InvalidArgument(
                    "a CUDA tensor was given with backend='cpu'; use backend='auto' or 'cuda'".into(),
                )));
            }
            let ctx = context(BackendChoice::Cuda, device)?;
            let dev = ctx.cuda_device().expect("a CUDA context has a device");
            Ok(Some(dev.stream().cu_stream() as usize))
        };
        let mut out = Vec::with_capacity(sides.len());
        for (name, objs) in sides {
            let side: Vec<InputMatrix> = objs
                .iter()
                .enumerate()
                .map(|(i, o)| input_matrix(o, &format!("{name}[{i}]"), &stream))
                .collect::<PyResult<_>>()?;
            out.push(side);
        }
        let mut devices: Vec<i32> = out.iter().flatten().map(|m| m.device).filter(|&d| d >= 0).collect();
        devices.sort_unstable();
        devices.dedup();
        let ctx = match devices.as_slice() {
            [] => context(choice, 0)?,
            [d] => context(BackendChoice::Cuda, *d)?,
            _ => return invalid(format!("the inputs are on several CUDA devices ({devices:?}); move them to one")),
        };
        Ok(Inputs { ctx, sides: out })
    }

    /// The library's views of side `k`.
    pub fn matrices(&self, k: usize) -> PyResult<Vec<Matrix<'_>>> {
        self.sides[k].iter().map(|m| m.matrix().map_err(to_py)).collect()
    }
}
