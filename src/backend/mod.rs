//! Where the arithmetic runs: the CPU backend, or CUDA when a driver and a device are present.
//!
//! A [`Context`] is made once and passed to every analysis. It resolves
//! [`BackendChoice::Auto`] to a concrete [`Backend`] at creation, so an analysis never guesses.
//! Analyses hold the math; backends offer the primitives (centering, Gram and cross products,
//! reductions) that the math is built from.

pub mod cpu;
pub mod cuda;

use crate::error::{fail, Result};

/// The backend a caller asks for. The discriminants are the C ABI's `tl_backend` values.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// CUDA when a driver and a device are present, else the CPU.
    Auto = 0,
    Cpu = 1,
    Cuda = 2,
}

impl BackendChoice {
    /// The choice for a C ABI value, or an error naming `what`.
    pub fn from_raw(raw: u32, what: &str) -> Result<Self> {
        Ok(match raw {
            0 => BackendChoice::Auto,
            1 => BackendChoice::Cpu,
            2 => BackendChoice::Cuda,
            _ => fail!(InvalidArgument, "{what}: unknown backend value {raw} (expected 0 = AUTO, 1 = CPU, 2 = CUDA)"),
        })
    }
}

/// A resolved backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Cpu,
    Cuda,
}

/// Everything an analysis needs to know about where to run.
///
/// Thread safety: a `Context` is `Send + Sync`; the CPU backend serves concurrent calls from
/// several threads. Use one context per thread where the backend is CUDA, so that each thread
/// has its own stream.
#[derive(Debug, Clone)]
pub struct Context {
    backend: Backend,
    device: i32,
}

impl Context {
    /// A context on the CPU backend.
    pub fn cpu() -> Self {
        Context { backend: Backend::Cpu, device: -1 }
    }

    /// A context for `choice`. `device` is the CUDA device ordinal (ignored for the CPU).
    /// `Auto` resolves to CUDA when a driver and a device are usable, else to the CPU; CUDA asked
    /// for explicitly without one is [`crate::Error::DeviceUnavailable`], saying what is missing.
    pub fn new(choice: BackendChoice, device: i32) -> Result<Self> {
        match choice {
            BackendChoice::Cpu => Ok(Self::cpu()),
            BackendChoice::Cuda => {
                if device < 0 {
                    fail!(InvalidArgument, "device: CUDA device ordinal must be >= 0, got {device}");
                }
                cuda::check_available(device)?;
                Ok(Context { backend: Backend::Cuda, device })
            }
            BackendChoice::Auto => match cuda::check_available(device.max(0)) {
                Ok(()) => Ok(Context { backend: Backend::Cuda, device: device.max(0) }),
                Err(_) => Ok(Self::cpu()),
            },
        }
    }

    /// The resolved backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The CUDA device ordinal, or -1 on the CPU.
    pub fn device(&self) -> i32 {
        self.device
    }
}
