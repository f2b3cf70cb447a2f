//! A CUDA device: its primary context, a stream of our own, the kernels compiled for it, its
//! buffers, and [`CudaDevice::launch`], the one way the crate launches a kernel. The kernels'
//! host code lives beside their files' names: `weights.rs` (`kernels/weights.cu`), `cka.rs`
//! (`kernels/cka.cu`), `mlp.rs` (`kernels/mlp.cu`).
//!
//! The primary context is the one the CUDA runtime uses, so memory allocated by PyTorch,
//! libtorch, CUDA.jl or Go code on the same device is valid here. All work is queued on the
//! device's own stream in call order; results are read back by [`CudaDevice::download`], which
//! waits for the stream. Launches are checked as they are queued; an error inside a kernel
//! surfaces at the next synchronisation (set `TL_CUDA_SYNC=1` to synchronise after every launch
//! and get the failing kernel's name).
//!
//! Kernels are compiled by NVRTC at the first launch into machine code (CUBIN) for the device's
//! compute capability, and cached for the process, keyed by capability. CUBIN rather than PTX:
//! a CUDA 13.x libnvrtc writes PTX of its own ISA version, which an older CUDA 13 driver cannot
//! load, while its CUBIN loads on any CUDA 13 driver. Where NVRTC cannot target the device's
//! architecture as machine code, PTX for it is tried next.

use super::kernels;
use crate::error::{fail, Error, Result};
use crate::tensor::{DType, Element, HostSlice};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, DriverError, LaunchArgs,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use half::{bf16, f16};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, OnceLock};

/// Threads per block of the 1-D kernels (a multiple of 32, as the block reductions need).
pub(crate) const BLOCK: u32 = 256;
/// Resident blocks aimed for per multiprocessor by grid-stride kernels.
pub(crate) const BLOCKS_PER_SM: u32 = 8;

/// `"call: CUDA_ERROR_NAME: message"` for a failed driver call.
pub(crate) fn describe(call: &str, e: &DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| "no description".into());
    format!("{call} failed: {name}: {text}")
}

/// Maps a driver error of `call` to [`Error::Device`].
pub(crate) fn device_err(call: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| Error::Device(describe(call, &e))
}

/// A storage type the kernels accept: f32, f64, f16, bf16.
///
/// f16 and bf16 travel as their 16-bit patterns (`Bits = u16`); `Arith` is the arithmetic type
/// of the kernels (`tl_elem<T>::acc`: f32, or f64 for f64 data).
pub trait DeviceElement: Element {
    type Bits: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + 'static;
    type Arith: DeviceRepr + Copy;
    /// The kernel name suffix: `"f32"`, `"f64"`, `"f16"`, `"bf16"`.
    const SUFFIX: &'static str;
    fn as_bits(data: &[Self]) -> &[Self::Bits];
    fn from_bits(bits: Vec<Self::Bits>) -> Vec<Self>;
    /// `v` rounded to the arithmetic type.
    fn arith(v: f64) -> Self::Arith;
}

impl DeviceElement for f32 {
    type Bits = f32;
    type Arith = f32;
    const SUFFIX: &'static str = "f32";
    fn as_bits(data: &[Self]) -> &[f32] {
        data
    }
    fn from_bits(bits: Vec<f32>) -> Vec<Self> {
        bits
    }
    fn arith(v: f64) -> f32 {
        v as f32
    }
}

impl DeviceElement for f64 {
    type Bits = f64;
    type Arith = f64;
    const SUFFIX: &'static str = "f64";
    fn as_bits(data: &[Self]) -> &[f64] {
        data
    }
    fn from_bits(bits: Vec<f64>) -> Vec<Self> {
        bits
    }
    fn arith(v: f64) -> f64 {
        v
    }
}

impl DeviceElement for f16 {
    type Bits = u16;
    type Arith = f32;
    const SUFFIX: &'static str = "f16";
    fn as_bits(data: &[Self]) -> &[u16] {
        half::slice::HalfFloatSliceExt::reinterpret_cast(data)
    }
    fn from_bits(bits: Vec<u16>) -> Vec<Self> {
        bits.into_iter().map(f16::from_bits).collect()
    }
    fn arith(v: f64) -> f32 {
        v as f32
    }
}

impl DeviceElement for bf16 {
    type Bits = u16;
    type Arith = f32;
    const SUFFIX: &'static str = "bf16";
    fn as_bits(data: &[Self]) -> &[u16] {
        half::slice::HalfFloatSliceExt::reinterpret_cast(data)
    }
    fn from_bits(bits: Vec<u16>) -> Vec<Self> {
        bits.into_iter().map(bf16::from_bits).collect()
    }
    fn arith(v: f64) -> f32 {
        v as f32
    }
}

/// Elements of type `T` in the memory of one [`CudaDevice`]: either allocated here (freed on
/// drop) or borrowed from another library with [`CudaDevice::wrap_device_ptr`] (left alone on
/// drop).
pub struct DeviceBuffer<T: DeviceElement> {
    pub(crate) slice: ManuallyDrop<CudaSlice<T::Bits>>,
    borrowed: bool,
    _t: PhantomData<T>,
}

impl<T: DeviceElement> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: the slice is taken exactly once, here.
        let slice = unsafe { ManuallyDrop::take(&mut self.slice) };
        if self.borrowed {
            // Not ours to free: release cudarc's bookkeeping only.
            let _ = slice.leak();
        } else {
            drop(slice);
        }
    }
}

impl<T: DeviceElement> DeviceBuffer<T> {
    fn owned(slice: CudaSlice<T::Bits>) -> Self {
        DeviceBuffer { slice: ManuallyDrop::new(slice), borrowed: false, _t: PhantomData }
    }
    /// The device address of the first element, for handing the buffer to other CUDA code.
    pub fn device_ptr(&self) -> u64 {
        let (ptr, _sync) = self.slice.device_ptr(self.slice.stream());
        ptr
    }
    /// Whether the memory belongs to another library (see [`CudaDevice::wrap_device_ptr`]).
    pub fn is_borrowed(&self) -> bool {
        self.borrowed
    }
    pub fn len(&self) -> usize {
        self.slice.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }
    pub fn dtype(&self) -> DType {
        T::DTYPE
    }
}

impl<T: DeviceElement> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer<{}>[{}]", T::SUFFIX, self.len())
    }
}

/// A device buffer of any storage dtype: what keeps data a kernel reads alive for a call
/// (uploaded, or the caller's memory wrapped in place).
pub(crate) enum AnyBuffer {
    F32(DeviceBuffer<f32>),
    F64(DeviceBuffer<f64>),
    F16(DeviceBuffer<f16>),
    BF16(DeviceBuffer<bf16>),
}

impl AnyBuffer {
    /// Copies host data to the device, keeping its dtype.
    pub(crate) fn upload(dev: &CudaDevice, data: HostSlice<'_>) -> Result<AnyBuffer> {
        Ok(match data {
            HostSlice::F32(d) => AnyBuffer::F32(dev.upload(d)?),
            HostSlice::F64(d) => AnyBuffer::F64(dev.upload(d)?),
            HostSlice::F16(d) => AnyBuffer::F16(dev.upload(d)?),
            HostSlice::BF16(d) => AnyBuffer::BF16(dev.upload(d)?),
        })
    }

    /// `len` elements of `dtype` at device address `ptr`, in place (see
    /// [`CudaDevice::wrap_device_ptr`], whose checks and contract apply).
    ///
    /// # Safety
    /// As [`CudaDevice::wrap_device_ptr`].
    pub(crate) unsafe fn wrap(dev: &CudaDevice, ptr: u64, dtype: DType, len: usize) -> Result<AnyBuffer> {
        // SAFETY: the caller's contract.
        unsafe {
            Ok(match dtype {
                DType::F32 => AnyBuffer::F32(dev.wrap_device_ptr(ptr, len)?),
                DType::F64 => AnyBuffer::F64(dev.wrap_device_ptr(ptr, len)?),
                DType::F16 => AnyBuffer::F16(dev.wrap_device_ptr(ptr, len)?),
                DType::BF16 => AnyBuffer::BF16(dev.wrap_device_ptr(ptr, len)?),
            })
        }
    }

    pub(crate) fn device_ptr(&self) -> u64 {
        match self {
            AnyBuffer::F32(b) => b.device_ptr(),
            AnyBuffer::F64(b) => b.device_ptr(),
            AnyBuffer::F16(b) => b.device_ptr(),
            AnyBuffer::BF16(b) => b.device_ptr(),
        }
    }

    pub(crate) fn dtype(&self) -> DType {
        match self {
            AnyBuffer::F32(_) => DType::F32,
            AnyBuffer::F64(_) => DType::F64,
            AnyBuffer::F16(_) => DType::F16,
            AnyBuffer::BF16(_) => DType::BF16,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            AnyBuffer::F32(b) => b.len(),
            AnyBuffer::F64(b) => b.len(),
            AnyBuffer::F16(b) => b.len(),
            AnyBuffer::BF16(b) => b.len(),
        }
    }
}

/// Shape of a row-major matrix in a device buffer: `rows` x `cols`, rows `stride` elements
/// apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixShape {
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl MatrixShape {
    /// A contiguous `rows` x `cols` shape.
    pub fn contiguous(rows: usize, cols: usize) -> Self {
        MatrixShape { rows, cols, stride: cols }
    }

    /// Checks the shape against a buffer of `len` elements; `what` names the argument.
    pub(crate) fn check(&self, len: usize, what: &str) -> Result<()> {
        if self.cols == 0 || self.rows == 0 {
            fail!(InvalidArgument, "{what}: a matrix of {} x {} has no elements", self.rows, self.cols);
        }
        if self.stride < self.cols {
            fail!(InvalidArgument, "{what}: row stride {} is smaller than cols {}", self.stride, self.cols);
        }
        let span = (self.rows - 1).checked_mul(self.stride).and_then(|s| s.checked_add(self.cols));
        match span {
            Some(n) if n <= len => Ok(()),
            _ => fail!(
                ShapeMismatch,
                "{what}: a {} x {} matrix with row stride {} needs {} elements, the buffer holds {len}",
                self.rows,
                self.cols,
                self.stride,
                span.map_or("too many".to_string(), |n| n.to_string())
            ),
        }
    }
}

/// Compiled kernel files per compute capability.
type CodeCache = Mutex<HashMap<(i32, i32), Arc<Vec<kernels::CompiledFile>>>>;

/// Compiled kernels per compute capability, shared by every device of the process.
fn code_cache() -> &'static CodeCache {
    static CACHE: OnceLock<CodeCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn compiled_for(capability: (i32, i32)) -> Result<Arc<Vec<kernels::CompiledFile>>> {
    // A poisoned lock only means another thread panicked while compiling; the map is intact.
    let mut cache = code_cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(files) = cache.get(&capability) {
        return Ok(files.clone());
    }
    let (major, minor) = capability;
    let files = kernels::compile_all(major, minor, kernels::Output::Cubin).or_else(|cubin_err| {
        kernels::compile_all(major, minor, kernels::Output::Ptx).map_err(|ptx_err| {
            Error::Device(format!(
                "kernels could not be compiled for sm_{major}{minor}: as CUBIN: {cubin_err}; as PTX: {ptx_err}"
            ))
        })
    })?;
    let files = Arc::new(files);
    cache.insert(capability, files.clone());
    Ok(files)
}

/// The arguments of one kernel launch, in the order of the kernel's parameters: a tuple of
/// plain values (device addresses as `u64`, sizes, scalars), each passed as its own type.
pub(crate) trait KernelArgs {
    /// Pushes each argument onto `launch`, which keeps a reference to it until the launch.
    fn push<'a>(&'a self, launch: &mut LaunchArgs<'a>);
}

macro_rules! kernel_args_for_tuples {
    ($(($($t:ident . $i:tt),+))+) => {$(
        impl<$($t: DeviceRepr),+> KernelArgs for ($($t,)+) {
            fn push<'a>(&'a self, launch: &mut LaunchArgs<'a>) {
                $(launch.arg(&self.$i);)+
            }
        }
    )+};
}

kernel_args_for_tuples! {
    (A.0, B.1, C.2)
    (A.0, B.1, C.2, D.3)
    (A.0, B.1, C.2, D.3, E.4)
    (A.0, B.1, C.2, D.3, E.4, F.5)
    (A.0, B.1, C.2, D.3, E.4, F.5, G.6)
    (A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7)
    (A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7, I.8)
}

/// One CUDA device, on its primary context, with its own stream.
///
/// Thread safety: `Send + Sync`; calls from several threads are queued on the one stream in an
/// unspecified order. Use one `CudaDevice` per thread for independent work.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ordinal: usize,
    name: String,
    capability: (i32, i32),
    sm_count: u32,
    functions: OnceLock<Result<HashMap<String, CudaFunction>>>,
    /// The cuBLAS handle on `stream`, made at first use; the lock keeps one host thread at a
    /// time issuing products through it.
    blas: OnceLock<Result<Mutex<CudaBlas>>>,
    sync_launches: bool,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("capability", &self.capability)
            .field("sm_count", &self.sm_count)
            .finish()
    }
}

impl CudaDevice {
    /// Device `ordinal` on its primary context. [`Error::DeviceUnavailable`] when there is no
    /// driver or no such device.
    pub fn new(ordinal: i32) -> Result<Self> {
        super::check_device(ordinal)?;
        let ordinal = ordinal as usize;
        let ctx = CudaContext::new(ordinal).map_err(device_err("cuDevicePrimaryCtxRetain"))?;
        let stream = ctx.new_stream().map_err(device_err("cuStreamCreate"))?;
        let name = ctx.name().map_err(device_err("cuDeviceGetName"))?;
        let capability = ctx.compute_capability().map_err(device_err("cuDeviceGetAttribute(compute capability)"))?;
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(device_err("cuDeviceGetAttribute(multiprocessor count)"))?
            .max(1) as u32;
        if ctx.has_async_alloc() {
            keep_pool_memory(&ctx);
        }
        Ok(CudaDevice {
            ctx,
            stream,
            ordinal,
            name,
            capability,
            sm_count,
            functions: OnceLock::new(),
            blas: OnceLock::new(),
            sync_launches: std::env::var("TL_CUDA_SYNC").is_ok_and(|v| v == "1"),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// The device's name, e.g. `"NVIDIA H100 80GB HBM3"`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Compute capability (major, minor).
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// Compiles (or takes from the process cache) and loads every kernel. Called by the first
    /// launch; call it earlier to move the compile time out of a measurement.
    pub fn load_kernels(&self) -> Result<()> {
        self.functions_map().map(|_| ())
    }

    fn functions_map(&self) -> Result<&HashMap<String, CudaFunction>> {
        self.functions
            .get_or_init(|| {
                let files = compiled_for(self.capability)?;
                let mut map = HashMap::new();
                for file in files.iter() {
                    let image = match file.output {
                        kernels::Output::Cubin => cudarc::nvrtc::Ptx::from_binary(file.code.clone()),
                        kernels::Output::Ptx => {
                            cudarc::nvrtc::Ptx::from_src(String::from_utf8_lossy(&file.code).into_owned())
                        }
                    };
                    let module = self
                        .ctx
                        .load_module(image)
                        .map_err(|e| Error::Device(describe(&format!("cuModuleLoadData({})", file.file), &e)))?;
                    for k in &file.kernels {
                        let f = module
                            .load_function(k)
                            .map_err(|e| Error::Device(describe(&format!("cuModuleGetFunction({k})"), &e)))?;
                        map.insert(k.clone(), f);
                    }
                }
                Ok(map)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The device's cuBLAS handle, on the device's stream, with the math mode set to
    /// `CUBLAS_DEFAULT_MATH`: f32 products in full f32 (no TF32 tensor cores), f64 in f64.
    /// [`Error::DeviceUnavailable`] when libcublas is not found.
    pub(crate) fn blas(&self) -> Result<std::sync::MutexGuard<'_, CudaBlas>> {
        let blas = self
            .blas
            .get_or_init(|| {
                // SAFETY: only tries to open the shared library.
                if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                    fail!(
                        DeviceUnavailable,
                        "CUDA backend unavailable: the cuBLAS library (libcublas.so.13) was not found; install CUDA 13's cuBLAS (the toolkit, or the pip package nvidia-cublas) or use the CPU backend"
                    );
                }
                self.ctx.bind_to_thread().map_err(device_err("cuCtxSetCurrent"))?;
                let blas = CudaBlas::new(self.stream.clone())
                    .map_err(|e| Error::Device(format!("cublasCreate failed: {e}")))?;
                // SAFETY: a valid handle; the mode is one of the enum's values.
                unsafe {
                    cudarc::cublas::sys::cublasSetMathMode(
                        *blas.handle(),
                        cudarc::cublas::sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
                    )
                }
                .result()
                .map_err(|e| Error::Device(format!("cublasSetMathMode failed: {e}")))?;
                Ok(Mutex::new(blas))
            })
            .as_ref()
            .map_err(Clone::clone)?;
        Ok(blas.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The context, for binding it to the calling thread.
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The device's stream: all of its work is queued there.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions_map()?
            .get(name)
            .ok_or_else(|| Error::Panic(format!("kernel {name} is not among the compiled kernels")))
    }

    /// Launches kernel `kernel` with `cfg` and `args` (the kernel's parameters, in order) on the
    /// device's stream, and checks the launch; with `TL_CUDA_SYNC=1` also waits for it, so that
    /// a fault inside the kernel is reported with the kernel's name. Errors name the kernel.
    ///
    /// # Safety
    /// `args` matches the kernel's parameter list in number, order and type (device addresses
    /// as `u64` for pointers, `tl_u64` as `u64`, `tl_u32` as `u32`, `acc` as `T::Arith`), and
    /// every address points at live device memory of this device as large as the kernel reads
    /// or writes for those arguments and `cfg`.
    pub(crate) unsafe fn launch(&self, kernel: &str, cfg: LaunchConfig, args: impl KernelArgs) -> Result<()> {
        let f = self.function(kernel)?;
        let mut builder = self.stream.launch_builder(f);
        args.push(&mut builder);
        // SAFETY: the arguments match the kernel's parameters and address memory it may use (the
        // caller's contract); the builder holds references to them until the launch is queued.
        let queued = unsafe { builder.launch(cfg) };
        queued.map_err(|e| Error::Device(describe(&format!("launch of {kernel}"), &e)))?;
        if self.sync_launches {
            self.stream.synchronize().map_err(|e| Error::Device(describe(&format!("kernel {kernel}"), &e)))?;
        }
        Ok(())
    }

    /// Waits for all queued work; reports an error raised by any kernel since the last wait.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(device_err("cuStreamSynchronize"))
    }

    /// A grid for `work` independent items of a grid-stride kernel with 1-D blocks.
    pub(crate) fn grid_1d(&self, work: u64) -> LaunchConfig {
        let cap = (self.sm_count * BLOCKS_PER_SM) as u64;
        let blocks = work.div_ceil(BLOCK as u64).clamp(1, cap) as u32;
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }

    /// As [`Self::grid_1d`], capped at the blocks of `f` that are resident at once (its
    /// occupancy, at most `BLOCKS_PER_SM` per multiprocessor), so that a grid-stride kernel
    /// using more registers runs as one full wave rather than a full wave and a partial one.
    pub(crate) fn grid_1d_for(&self, f: &CudaFunction, work: u64) -> LaunchConfig {
        let cap = self.resident_blocks(f) as u64;
        let blocks = work.div_ceil(BLOCK as u64).clamp(1, cap) as u32;
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }

    /// Blocks of `BLOCK` threads of `f` resident on the whole device at once.
    pub(crate) fn resident_blocks(&self, f: &CudaFunction) -> u32 {
        let per_sm = f.occupancy_max_active_blocks_per_multiprocessor(BLOCK, 0, None).unwrap_or(BLOCKS_PER_SM);
        self.sm_count * per_sm.clamp(1, BLOCKS_PER_SM)
    }

    /// A grid for a row-by-column grid-stride kernel (x over columns, y over rows).
    pub(crate) fn grid_2d(&self, shape: MatrixShape) -> LaunchConfig {
        let target = (self.sm_count * BLOCKS_PER_SM) as u64;
        let gx = (shape.cols as u64).div_ceil(BLOCK as u64).clamp(1, target);
        let gy = (target / gx).clamp(1, 65_535).min(shape.rows as u64).max(1);
        LaunchConfig { grid_dim: (gx as u32, gy as u32, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
    }

    // ---- memory -------------------------------------------------------------------------------

    /// Copies host data to a new device buffer.
    pub fn upload<T: DeviceElement>(&self, data: &[T]) -> Result<DeviceBuffer<T>> {
        let slice = self.stream.clone_htod(T::as_bits(data)).map_err(device_err("cuMemcpyHtoDAsync"))?;
        Ok(DeviceBuffer::owned(slice))
    }

    /// A new device buffer of `len` zeros.
    pub fn zeros<T: DeviceElement>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let slice = self.stream.alloc_zeros::<T::Bits>(len).map_err(device_err("cuMemAlloc/cuMemsetD8Async"))?;
        Ok(DeviceBuffer::owned(slice))
    }

    /// Uses `len` elements of `T` at device address `ptr`, allocated by other code (PyTorch,
    /// libtorch, CUDA.jl, ...) on this device, in place: no copy, and the memory is not freed
    /// when the buffer is dropped. The address must belong to this device (checked with
    /// cuPointerGetAttribute) and be aligned for `T`.
    ///
    /// # Safety
    /// `ptr` must address at least `len` elements of `T`, stay allocated while the buffer
    /// lives, and not be written by other streams while this device's stream uses it: finish
    /// (synchronise) the producer's work before the call.
    pub unsafe fn wrap_device_ptr<T: DeviceElement>(&self, ptr: u64, len: usize) -> Result<DeviceBuffer<T>> {
        if ptr == 0 {
            fail!(NullArgument, "ptr: device address is NULL");
        }
        let align = std::mem::align_of::<T::Bits>() as u64;
        if !ptr.is_multiple_of(align) {
            fail!(InvalidArgument, "ptr: device address {ptr:#x} is not aligned to {align} bytes for {}", T::SUFFIX);
        }
        if len.checked_mul(std::mem::size_of::<T::Bits>()).is_none() {
            fail!(InvalidArgument, "len: {len} elements overflow the address space");
        }
        self.ctx.bind_to_thread().map_err(device_err("cuCtxSetCurrent"))?;
        let mut ordinal: i32 = -1;
        // SAFETY: DEVICE_ORDINAL writes one int; any address may be queried.
        unsafe {
            cudarc::driver::sys::cuPointerGetAttribute(
                (&mut ordinal as *mut i32).cast(),
                cudarc::driver::sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                ptr,
            )
        }
        .result()
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "ptr: {ptr:#x} is not CUDA memory ({})",
                describe("cuPointerGetAttribute", &e)
            ))
        })?;
        if ordinal != self.ordinal as i32 {
            fail!(InvalidArgument, "ptr: {ptr:#x} is memory of CUDA device {ordinal}, this is device {}", self.ordinal);
        }
        // SAFETY: the caller guarantees the allocation; Drop leaks it instead of freeing.
        let slice = unsafe { self.stream.upgrade_device_ptr::<T::Bits>(ptr, len) };
        Ok(DeviceBuffer { slice: ManuallyDrop::new(slice), borrowed: true, _t: PhantomData })
    }

    /// Copies a device buffer to the host (waits for the queued work it depends on).
    pub fn download<T: DeviceElement>(&self, buf: &DeviceBuffer<T>) -> Result<Vec<T>> {
        let bits = self.stream.clone_dtoh(&*buf.slice).map_err(device_err("cuMemcpyDtoHAsync"))?;
        self.synchronize()?;
        Ok(T::from_bits(bits))
    }
}

// ---- helpers of the primitive modules (cka, mlp) --------------------------------------------

/// The device of a CUDA context.
pub(crate) fn device_of(ctx: &crate::Context) -> Result<&CudaDevice> {
    let dev = ctx.cuda_device().ok_or_else(|| Error::Panic("a CUDA context without a device".into()))?;
    dev.context().bind_to_thread().map_err(device_err("cuCtxSetCurrent"))?;
    Ok(dev)
}

pub(crate) fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
    dev: &CudaDevice,
    n: usize,
    what: &str,
) -> Result<CudaSlice<T>> {
    dev.stream().alloc_zeros::<T>(n.max(1)).map_err(|e| Error::Device(describe(&format!("cuMemAlloc({what})"), &e)))
}

pub(crate) fn addr<T>(dev: &CudaDevice, s: &CudaSlice<T>) -> u64 {
    let (p, _sync) = s.device_ptr(dev.stream());
    p
}

pub(crate) fn addr_mut<T>(dev: &CudaDevice, s: &mut CudaSlice<T>) -> u64 {
    let (p, _sync) = s.device_ptr_mut(dev.stream());
    p
}

pub(crate) fn download<T: DeviceRepr + Default + Clone>(
    dev: &CudaDevice,
    s: &CudaSlice<T>,
    len: usize,
    what: &str,
) -> Result<Vec<T>> {
    let mut out = vec![T::default(); len];
    if len > 0 {
        dev.stream()
            .memcpy_dtoh(&s.slice(..len), &mut out)
            .map_err(|e| Error::Device(describe(&format!("cuMemcpyDtoHAsync({what})"), &e)))?;
    }
    Ok(out)
}

/// Memory that the device's default pool (which serves the stream-ordered allocations of this
/// crate) keeps mapped after it is freed, instead of returning it to the driver at the next
/// synchronisation (the default threshold is 0). CKA allocates its shifted copies (1 GiB for a
/// 65536 x 2048 f32 pair) per call; with threshold 0 each call maps them afresh.
pub(crate) const POOL_KEEP_BYTES: u64 = 4 << 30;

/// Raises the release threshold of the device's default memory pool to [`POOL_KEEP_BYTES`]
/// (never lowers it). Best effort: a failure leaves the driver's default.
fn keep_pool_memory(ctx: &CudaContext) {
    use cudarc::driver::{result, sys};
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
    // SAFETY: the device handle comes from a live context; the attribute's value is a u64.
    unsafe {
        let Ok(pool) = result::device::get_default_mem_pool(ctx.cu_device()) else {
            return;
        };
        let mut current: u64 = 0;
        if result::mem_pool::get_attribute(pool, attr, &mut current as *mut u64 as *mut core::ffi::c_void).is_err() {
            return;
        }
        if current < POOL_KEEP_BYTES {
            let mut v: u64 = POOL_KEEP_BYTES;
            let _ = result::mem_pool::set_attribute(pool, attr, &mut v as *mut u64 as *mut core::ffi::c_void);
        }
    }
}

/// ShapeMismatch unless every named length equals the first.
pub(crate) fn same_len(lens: &[(&str, usize)]) -> Result<()> {
    let (first, n) = lens[0];
    for &(name, len) in &lens[1..] {
        if len != n {
            fail!(ShapeMismatch, "{name} has {len} elements but {first} has {n}");
        }
    }
    Ok(())
}

/// ShapeMismatch unless a present vector has `want` elements.
pub(crate) fn check_vec(len: Option<usize>, want: usize, what: &str) -> Result<()> {
    match len {
        Some(n) if n != want => fail!(ShapeMismatch, "{what}: needs {want} elements, the buffer holds {n}"),
        _ => Ok(()),
    }
}
