//! Errors of the Rust API and their mapping to the C ABI's `tl_status` codes.
//!
//! Every fallible function returns [`Result`]. Each [`Error`] variant corresponds to exactly
//! one [`Status`] code and carries a message for a person: it names the argument or tensor at
//! fault and says what was expected.

/// Result of every fallible transferlens call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with a message for a person.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A required pointer was NULL (only the C ABI produces this).
    #[error("{0}")]
    NullArgument(String),
    /// A value is outside its domain (an unknown enum value, a negative count, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// Sizes, shapes or tensor names do not agree.
    #[error("{0}")]
    ShapeMismatch(String),
    /// The element type is not one this operation accepts.
    #[error("{0}")]
    UnsupportedDtype(String),
    /// The input admits no meaningful answer: too few samples, zero variance.
    #[error("{0}")]
    DegenerateInput(String),
    /// NaN or Inf in the input.
    #[error("{0}")]
    NonFinite(String),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// A file is not valid (for example a malformed safetensors header).
    #[error("{0}")]
    Format(String),
    /// A named tensor or module does not exist.
    #[error("{0}")]
    NotFound(String),
    /// CUDA was asked for but no driver, library or device is present.
    #[error("{0}")]
    DeviceUnavailable(String),
    /// A CUDA call failed.
    #[error("{0}")]
    Device(String),
    /// The caller's evaluator failed: a host callback reported failure, or an evaluator broke its
    /// contract (for example, returned a different number of results than it was given sets).
    #[error("{0}")]
    Callback(String),
    /// A bug inside the library, never the caller's doing.
    #[error("internal error (please report): {0}")]
    Panic(String),
    /// Memory for a size the caller chose could not be had; the message says how much and what
    /// for.
    #[error("{0}")]
    OutOfMemory(String),
}

/// Status codes of the C ABI; `TL_STATUS_OK` is 0. The values are fixed forever.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok = 0,
    NullArgument = 1,
    InvalidArgument = 2,
    ShapeMismatch = 3,
    UnsupportedDtype = 4,
    DegenerateInput = 5,
    NonFinite = 6,
    Io = 7,
    Format = 8,
    NotFound = 9,
    DeviceUnavailable = 10,
    Device = 11,
    Callback = 12,
    Panic = 13,
    OutOfMemory = 14,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 15] = [
        Status::Ok,
        Status::NullArgument,
        Status::InvalidArgument,
        Status::ShapeMismatch,
        Status::UnsupportedDtype,
        Status::DegenerateInput,
        Status::NonFinite,
        Status::Io,
        Status::Format,
        Status::NotFound,
        Status::DeviceUnavailable,
        Status::Device,
        Status::Callback,
        Status::Panic,
        Status::OutOfMemory,
    ];

    /// The C name of the code, e.g. `"TL_STATUS_SHAPE_MISMATCH"`.
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "TL_STATUS_OK",
            Status::NullArgument => "TL_STATUS_NULL_ARGUMENT",
            Status::InvalidArgument => "TL_STATUS_INVALID_ARGUMENT",
            Status::ShapeMismatch => "TL_STATUS_SHAPE_MISMATCH",
            Status::UnsupportedDtype => "TL_STATUS_UNSUPPORTED_DTYPE",
            Status::DegenerateInput => "TL_STATUS_DEGENERATE_INPUT",
            Status::NonFinite => "TL_STATUS_NON_FINITE",
            Status::Io => "TL_STATUS_IO",
            Status::Format => "TL_STATUS_FORMAT",
            Status::NotFound => "TL_STATUS_NOT_FOUND",
            Status::DeviceUnavailable => "TL_STATUS_DEVICE_UNAVAILABLE",
            Status::Device => "TL_STATUS_DEVICE",
            Status::Callback => "TL_STATUS_CALLBACK",
            Status::Panic => "TL_STATUS_PANIC",
            Status::OutOfMemory => "TL_STATUS_OUT_OF_MEMORY",
        }
    }
}

impl Error {
    /// The C ABI code for this error.
    pub fn status(&self) -> Status {
        match self {
            Error::NullArgument(_) => Status::NullArgument,
            Error::InvalidArgument(_) => Status::InvalidArgument,
            Error::ShapeMismatch(_) => Status::ShapeMismatch,
            Error::UnsupportedDtype(_) => Status::UnsupportedDtype,
            Error::DegenerateInput(_) => Status::DegenerateInput,
            Error::NonFinite(_) => Status::NonFinite,
            Error::Io(_) => Status::Io,
            Error::Format(_) => Status::Format,
            Error::NotFound(_) => Status::NotFound,
            Error::DeviceUnavailable(_) => Status::DeviceUnavailable,
            Error::Device(_) => Status::Device,
            Error::Callback(_) => Status::Callback,
            Error::Panic(_) => Status::Panic,
            Error::OutOfMemory(_) => Status::OutOfMemory,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

/// A byte count for a person: "128 GiB", "3.5 MiB", "12 bytes".
pub(crate) fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{} {}", format!("{value:.1}").trim_end_matches(".0"), UNITS[unit])
}

/// The error for `count` elements of `T` that could not be allocated for `what`.
fn out_of_memory<T>(count: usize, what: &str) -> Error {
    let bytes = count as u128 * std::mem::size_of::<T>() as u128;
    Error::OutOfMemory(format!("{what}: could not allocate {} ({count} values)", human_bytes(bytes)))
}

/// An empty vector with room for `count` elements, for a size a caller controls: a failed
/// allocation (or a byte size past `isize::MAX`) is [`Error::OutOfMemory`] naming `what` and
/// the size, never an abort.
pub(crate) fn try_with_capacity<T>(count: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(count).map_err(|_| out_of_memory::<T>(count, what))?;
    Ok(v)
}

/// `count` copies of `value`, allocated as [`try_with_capacity`] does.
pub(crate) fn try_filled<T: Clone>(count: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = try_with_capacity(count, what)?;
    v.resize(count, value);
    Ok(v)
}

/// `Err(Error::$variant(format!(...)))`, for early returns with a formatted message.
macro_rules! fail {
    ($variant:ident, $($fmt:tt)+) => {
        return Err($crate::error::Error::$variant(format!($($fmt)+)))
    };
}
pub(crate) use fail;
