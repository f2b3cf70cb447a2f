//! The exception classes: `transferlens.Error` and one subclass per status of the library.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use transferlens::{Error, Status};

/// The classes, in a module of their own: `Error` is also the library's error type.
pub mod class {
    use super::*;
    create_exception!(transferlens, Error, PyException, "A transferlens call failed. `status` is the C ABI's status code, `status_name` its C name; the message says what was wrong.");
    create_exception!(transferlens, NullArgument, Error, "A required argument was missing (TL_STATUS_NULL_ARGUMENT).");
    create_exception!(
        transferlens,
        InvalidArgument,
        Error,
        "A value is outside its domain (TL_STATUS_INVALID_ARGUMENT)."
    );
    create_exception!(
        transferlens,
        ShapeMismatch,
        Error,
        "Sizes, shapes or tensor names do not agree (TL_STATUS_SHAPE_MISMATCH)."
    );
    create_exception!(
        transferlens,
        UnsupportedDtype,
        Error,
        "The element type is not float32, float64, float16 or bfloat16 (TL_STATUS_UNSUPPORTED_DTYPE)."
    );
    create_exception!(
        transferlens,
        DegenerateInput,
        Error,
        "The input admits no meaningful answer: too few samples, zero variance (TL_STATUS_DEGENERATE_INPUT)."
    );
    create_exception!(
        transferlens,
        NonFinite,
        Error,
        "NaN or Inf in the input, or a result that overflows (TL_STATUS_NON_FINITE)."
    );
    create_exception!(transferlens, IoError, Error, "A file could not be read or written (TL_STATUS_IO).");
    create_exception!(
        transferlens,
        FormatError,
        Error,
        "A file is not valid, e.g. a malformed safetensors header (TL_STATUS_FORMAT)."
    );
    create_exception!(transferlens, NotFound, Error, "A named tensor or module does not exist (TL_STATUS_NOT_FOUND).");
    create_exception!(
        transferlens,
        DeviceUnavailable,
        Error,
        "CUDA was asked for but no driver, library or device is present (TL_STATUS_DEVICE_UNAVAILABLE)."
    );
    create_exception!(transferlens, DeviceError, Error, "A CUDA call failed (TL_STATUS_DEVICE).");
    create_exception!(transferlens, CallbackError, Error, "An evaluator broke its contract, e.g. returned no 'loss' (TL_STATUS_CALLBACK). An exception raised inside an evaluator propagates as itself instead.");
    create_exception!(
        transferlens,
        InternalError,
        Error,
        "A bug inside the library, never the caller's doing (TL_STATUS_PANIC)."
    );
    create_exception!(
        transferlens,
        OutOfMemory,
        Error,
        "Memory for a size the caller chose could not be had (TL_STATUS_OUT_OF_MEMORY)."
    );
}
use class::*;

/// The exception for a library error, carrying its message.
pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e.status() {
        Status::Ok => class::Error::new_err(msg),
        Status::NullArgument => NullArgument::new_err(msg),
        Status::InvalidArgument => InvalidArgument::new_err(msg),
        Status::ShapeMismatch => ShapeMismatch::new_err(msg),
        Status::UnsupportedDtype => UnsupportedDtype::new_err(msg),
        Status::DegenerateInput => DegenerateInput::new_err(msg),
        Status::NonFinite => NonFinite::new_err(msg),
        Status::Io => IoError::new_err(msg),
        Status::Format => FormatError::new_err(msg),
        Status::NotFound => NotFound::new_err(msg),
        Status::DeviceUnavailable => DeviceUnavailable::new_err(msg),
        Status::Device => DeviceError::new_err(msg),
        Status::Callback => CallbackError::new_err(msg),
        Status::Panic => InternalError::new_err(msg),
        Status::OutOfMemory => OutOfMemory::new_err(msg),
    }
}

/// `Err(InvalidArgument(message))` for argument checks made in the binding.
pub fn invalid<T>(message: impl Into<String>) -> PyResult<T> {
    Err(to_py(Error::InvalidArgument(message.into())))
}

/// Adds the classes to the module, each with its `status` code and `status_name`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let classes = [
        (py.get_type::<class::Error>(), "Error", None),
        (py.get_type::<NullArgument>(), "NullArgument", Some(Status::NullArgument)),
        (py.get_type::<InvalidArgument>(), "InvalidArgument", Some(Status::InvalidArgument)),
        (py.get_type::<ShapeMismatch>(), "ShapeMismatch", Some(Status::ShapeMismatch)),
        (py.get_type::<UnsupportedDtype>(), "UnsupportedDtype", Some(Status::UnsupportedDtype)),
        (py.get_type::<DegenerateInput>(), "DegenerateInput", Some(Status::DegenerateInput)),
        (py.get_type::<NonFinite>(), "NonFinite", Some(Status::NonFinite)),
        (py.get_type::<IoError>(), "IoError", Some(Status::Io)),
        (py.get_type::<FormatError>(), "FormatError", Some(Status::Format)),
        (py.get_type::<NotFound>(), "NotFound", Some(Status::NotFound)),
        (py.get_type::<DeviceUnavailable>(), "DeviceUnavailable", Some(Status::DeviceUnavailable)),
        (py.get_type::<DeviceError>(), "DeviceError", Some(Status::Device)),
        (py.get_type::<CallbackError>(), "CallbackError", Some(Status::Callback)),
        (py.get_type::<InternalError>(), "InternalError", Some(Status::Panic)),
        (py.get_type::<OutOfMemory>(), "OutOfMemory", Some(Status::OutOfMemory)),
    ];
    for (class, name, status) in classes {
        if let Some(s) = status {
            class.setattr("status", s as i32)?;
            class.setattr("status_name", s.name())?;
        }
        m.add(name, class)?;
    }
    Ok(())
}
