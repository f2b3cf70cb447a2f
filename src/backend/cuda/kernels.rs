//! The kernel sources (`kernels/`, embedded at build time) and their compilation by NVRTC.
//!
//! NVRTC gets one program per `.cu` file with its `#include "..."` headers pasted in, so no
//! include path is needed and the files stay valid input for nvcc too. [`compile_all`] compiles
//! every file for one compute capability, either to machine code (CUBIN) for the real
//! architecture `sm_XY` or to PTX for the virtual architecture `compute_XY`, which the driver
//! turns into machine code when the module is loaded.
//!
//! The device (`device.rs`) asks for CUBIN first and falls back to PTX: NVRTC's PTX targets the
//! ISA of its own CUDA release, which a driver older than that libnvrtc cannot load, while the
//! CUBIN of any CUDA 13 libnvrtc loads on any CUDA 13 driver. The PTX build also checks that
//! each file defines exactly the kernels of [`expected_kernels`].

use crate::error::{fail, Error, Result};

/// Headers that the `.cu` files include, by the name used in `#include "..."`.
const HEADERS: [(&str, &str); 2] = [
    ("common.cuh", include_str!("../../../kernels/common.cuh")),
    ("philox.cuh", include_str!("../../../kernels/philox.cuh")),
];

/// The kernel files: each is compiled as one NVRTC program and loaded as one module.
pub const SOURCES: [(&str, &str); 4] = [
    ("weights.cu", include_str!("../../../kernels/weights.cu")),
    ("cka.cu", include_str!("../../../kernels/cka.cu")),
    ("mlp.cu", include_str!("../../../kernels/mlp.cu")),
    ("cnn.cu", include_str!("../../../kernels/cnn.cu")),
];

/// Kernel name suffixes of the four storage types, in `DType` order.
pub const DTYPE_SUFFIXES: [&str; 4] = ["f32", "f64", "f16", "bf16"];

/// The kernels each file must define, in the order of the file's instantiations. The tests
/// compare this list with the `.entry` lines of the PTX, so a kernel added to a file without
/// being added here (or the reverse) is caught.
pub fn expected_kernels(file: &str) -> Vec<String> {
    let mut names = Vec::new();
    match file {
        "weights.cu" => {
            for t in DTYPE_SUFFIXES {
                for op in ["lerp", "segment_sumsq"] {
                    names.push(format!("{op}_{t}"));
                }
            }
            names.push("normals_f32".into());
            names.push("normals_f64".into());
            for s in DTYPE_SUFFIXES {
                for d in DTYPE_SUFFIXES {
                    if s != d {
                        names.push(format!("convert_{s}_to_{d}"));
                    }
                }
            }
        }
        "cka.cu" => {
            for t in DTYPE_SUFFIXES {
                names.push(format!("row_sqnorms_{t}"));
                names.push(format!("sumsq_{t}"));
                names.push(format!("colstats_{t}"));
                names.push(format!("shift_{t}_to_f32"));
                names.push(format!("shift_{t}_to_f64"));
            }
            names.push("sym_inner_f32".into());
            names.push("sym_inner_f64".into());
        }
        "mlp.cu" => {
            names.push("bias_act_f32".into());
            names.push("softmax_xent_f32".into());
            for t in DTYPE_SUFFIXES {
                names.push(format!("noisy_copies_{t}"));
            }
        }
        "cnn.cu" => {
            for op in ["im2col", "channel_bias_relu", "groupnorm", "avgpool", "global_avgpool", "repeat_images"] {
                names.push(format!("{op}_f32"));
            }
        }
        _ => {}
    }
    names
}

/// Every kernel of every file.
pub fn all_expected_kernels() -> Vec<String> {
    SOURCES.iter().flat_map(|(file, _)| expected_kernels(file)).collect()
}

/// The source of `file` with each `#include "header"` replaced by the header's text, each
/// header pasted once (the headers use `#pragma once`; pasting makes that explicit).
pub fn expand(file: &str) -> Result<String> {
    let text = SOURCES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, text)| *text)
        .ok_or_else(|| Error::NotFound(format!("kernel file {file} is not embedded")))?;
    let mut done = Vec::new();
    let mut out = String::new();
    paste(file, text, &mut done, &mut out)?;
    Ok(out)
}

fn paste(name: &str, text: &str, done: &mut Vec<String>, out: &mut String) -> Result<()> {
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed == "#pragma once" {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("#include") {
            let header = rest.trim().trim_matches('"');
            if done.iter().any(|h| h == header) {
                continue;
            }
            let Some((_, body)) = HEADERS.iter().find(|(h, _)| *h == header) else {
                fail!(NotFound, "{name} includes {header}, which is not an embedded kernel header");
            };
            done.push(header.to_string());
            out.push_str(&format!("// ---- {header} ----\n"));
            paste(header, body, done, out)?;
            out.push_str(&format!("// ---- end of {header} ----\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(())
}

/// What NVRTC is asked to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    /// PTX for the virtual architecture `compute_XY`, turned into machine code by the driver
    /// when loaded. The driver must understand the PTX ISA version of the NVRTC release.
    Ptx,
    /// Machine code (CUBIN) for the real architecture `sm_XY`. Loads on drivers of the same
    /// CUDA major version as NVRTC, even older minor versions, and needs no JIT.
    Cubin,
}

/// One kernel file compiled by NVRTC.
#[derive(Debug, Clone)]
pub struct CompiledFile {
    /// The source file, e.g. `"weights.cu"`.
    pub file: &'static str,
    pub output: Output,
    /// The PTX text or the CUBIN image.
    pub code: Vec<u8>,
    /// The kernels it defines: from the PTX `.entry` lines, or for a CUBIN the expected list
    /// (the PTX build checks that list).
    pub kernels: Vec<String>,
}

impl CompiledFile {
    /// The PTX text, for [`Output::Ptx`].
    pub fn ptx(&self) -> Option<&str> {
        match self.output {
            Output::Ptx => std::str::from_utf8(&self.code).ok(),
            Output::Cubin => None,
        }
    }
}

/// The names of the `.entry` (kernel) functions of a PTX text.
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix(".visible .entry ")?;
            let end = rest.find('(').unwrap_or(rest.len());
            Some(rest[..end].trim().to_string())
        })
        .collect()
}

/// Ok when libnvrtc can be loaded; otherwise an error that says what to install. cudarc panics
/// when a library it needs is missing, so this is checked before any NVRTC call.
pub fn check_nvrtc() -> Result<()> {
    // SAFETY: only tries to open the shared library; calls nothing in it.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        fail!(
            DeviceUnavailable,
            "NVRTC unavailable: libnvrtc.so.13 was not found on the library search path (it comes with the CUDA 13 toolkit or the pip package nvidia-cuda-nvrtc)"
        );
    }
    Ok(())
}

/// The version of the loaded libnvrtc, (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    check_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; nvrtcVersion writes two ints.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Device(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

/// An NVRTC program, destroyed on drop.
struct Program(cudarc::nvrtc::sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by create_program, destroyed once. A failure here leaks the program.
        let _ = unsafe { cudarc::nvrtc::result::destroy_program(self.0) };
    }
}

fn nvrtc_err(call: &str, file: &str, e: cudarc::nvrtc::result::NvrtcError) -> Error {
    Error::Device(format!("{call} failed for {file}: {:?}", e.0))
}

/// Compiles one expanded source with NVRTC and returns the PTX or the CUBIN.
fn compile_source(file: &str, src: &str, options: &[String], output: Output) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    let csrc =
        std::ffi::CString::new(src).map_err(|_| Error::Panic(format!("kernel source {file} contains a NUL byte")))?;
    let cname = std::ffi::CString::new(file)
        .map_err(|_| Error::Panic(format!("kernel file name {file} contains a NUL byte")))?;
    let prog =
        Program(result::create_program(&csrc, Some(&cname)).map_err(|e| nvrtc_err("nvrtcCreateProgram", file, e))?);
    // SAFETY: prog is a live program; options are plain strings.
    if let Err(e) = unsafe { result::compile_program(prog.0, options) } {
        // SAFETY: as above; the log is a NUL-terminated string.
        let log = unsafe { result::get_program_log(prog.0) }
            .map(|raw| {
                let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        fail!(Device, "NVRTC failed to compile {file} with {options:?}: {:?}\n{log}", e.0);
    }
    match output {
        Output::Ptx => {
            // SAFETY: the program compiled.
            let raw = unsafe { result::get_ptx(prog.0) }.map_err(|e| nvrtc_err("nvrtcGetPTX", file, e))?;
            Ok(raw.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect())
        }
        Output::Cubin => {
            let mut size = 0usize;
            // SAFETY: the program compiled for a real architecture; the buffer has `size` bytes.
            unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }
                .result()
                .map_err(|e| nvrtc_err("nvrtcGetCUBINSize", file, e))?;
            let mut image = vec![0u8; size];
            // SAFETY: as above; image has the `size` bytes nvrtcGetCUBINSize reported.
            unsafe { sys::nvrtcGetCUBIN(prog.0, image.as_mut_ptr().cast()) }
                .result()
                .map_err(|e| nvrtc_err("nvrtcGetCUBIN", file, e))?;
            Ok(image)
        }
    }
}

/// Compiles every kernel file for compute capability `major.minor`: PTX for `compute_XY` or
/// CUBIN for `sm_XY`. For PTX, checks that each file defines exactly the kernels of
/// [`expected_kernels`].
pub fn compile_all(major: i32, minor: i32, output: Output) -> Result<Vec<CompiledFile>> {
    check_nvrtc()?;
    if !(5..=20).contains(&major) || !(0..=9).contains(&minor) {
        fail!(InvalidArgument, "compute capability {major}.{minor} is not one NVRTC can target");
    }
    let arch = match output {
        Output::Ptx => format!("--gpu-architecture=compute_{major}{minor}"),
        Output::Cubin => format!("--gpu-architecture=sm_{major}{minor}"),
    };
    let options = [arch, "--std=c++17".to_string()];
    SOURCES
        .iter()
        .map(|(file, _)| {
            let src = expand(file)?;
            let code = compile_source(file, &src, &options, output)?;
            let kernels = match output {
                Output::Ptx => {
                    let got = ptx_entries(&String::from_utf8_lossy(&code));
                    let (mut want, mut sorted) = (expected_kernels(file), got.clone());
                    want.sort();
                    sorted.sort();
                    if want != sorted {
                        fail!(Device, "{file}: the PTX defines kernels {sorted:?}, expected {want:?}");
                    }
                    got
                }
                Output::Cubin => expected_kernels(file),
            };
            Ok(CompiledFile { file, output, code, kernels })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_expands_without_includes() {
        for (file, _) in SOURCES {
            let src = expand(file).unwrap();
            assert!(!src.contains("#include"), "{file} still has an #include");
            assert_eq!(src.matches("struct tl_f16 {").count(), 1, "{file}");
        }
    }

    #[test]
    fn expected_kernel_names_are_unique_and_defined_in_their_file() {
        let all = all_expected_kernels();
        assert_eq!(all.len(), 56);
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "duplicate kernel names");
        // Without NVRTC: each name's op is spelled in its file, as `op_##NAME` (or, for
        // `op_<s>_to_<d>`, `op_##NAME##_to_<d>` or `op_##SN##_to_##DN`) in a macro, or literally
        // (the PTX check of tests/nvrtc.rs is the exact one).
        for (file, text) in SOURCES {
            for name in expected_kernels(file) {
                let spelled = match name.rsplit_once("_to_") {
                    Some((head, dst)) => {
                        let op = head.rsplit_once('_').map_or(head, |(op, _src)| op);
                        text.contains(&format!("{op}_##NAME##_to_{dst}"))
                            || text.contains(&format!("{op}_##SN##_to_##DN"))
                    }
                    None => {
                        let suffix = DTYPE_SUFFIXES.iter().find(|t| name.ends_with(&format!("_{t}"))).unwrap();
                        let op = &name[..name.len() - suffix.len() - 1];
                        text.contains(&format!("void {name}(")) || text.contains(&format!("{op}_##NAME"))
                    }
                };
                assert!(spelled, "{name} is not defined in {file}");
            }
        }
    }

    #[test]
    fn ptx_entry_lines_are_parsed() {
        let ptx = "\n.visible .entry lerp_f32(\n\t.param .u64 a\n)\n.visible .entry sumsq_bf16()\n.func x(\n";
        assert_eq!(ptx_entries(ptx), ["lerp_f32", "sumsq_bf16"]);
    }
}

/// A line-by-line port of the f16 / bf16 conversions of `kernels/common.cuh`, checked here
/// against the `half` crate on every f16 and a dense sweep of f32 and f64 values. It tests the
/// bit manipulation without a GPU; `tests/cuda.rs` checks the compiled kernels themselves.
#[cfg(test)]
mod conversion_mirror {
    use half::{bf16, f16};

    fn f16_to_f32(h: u16) -> f32 {
        let sign = ((h & 0x8000) as u32) << 16;
        let exp = ((h >> 10) & 0x1f) as u32;
        let man = (h & 0x3ff) as u32;
        if exp == 0x1f {
            let nan = if man != 0 { 0x400000 | (man << 13) } else { 0 };
            return f32::from_bits(sign | 0x7f800000 | nan);
        }
        if exp == 0 {
            return f32::from_bits(sign | (man as f32 * 5.960_464_5e-8).to_bits());
        }
        f32::from_bits(sign | ((exp + 112) << 23) | (man << 13))
    }

    fn f32_to_f16(f: f32) -> u16 {
        let x = f.to_bits();
        let sign = (x >> 16) & 0x8000;
        let ax = x & 0x7fffffff;
        if ax > 0x7f800000 {
            return (sign | 0x7e00 | ((ax >> 13) & 0x3ff)) as u16;
        }
        if ax >= 0x477ff000 {
            return (sign | 0x7c00) as u16;
        }
        if ax >= 0x38800000 {
            let r = ax - 0x38000000;
            return (sign | ((r + 0xfff + ((r >> 13) & 1)) >> 13)) as u16;
        }
        if ax < 0x33000000 {
            return sign as u16;
        }
        let e = ax >> 23;
        let m = (ax & 0x7fffff) | 0x800000;
        let s = 126 - e;
        let mut q = m >> s;
        let rem = m & ((1 << s) - 1);
        let half = 1 << (s - 1);
        if rem > half || (rem == half && q & 1 == 1) {
            q += 1;
        }
        (sign | q) as u16
    }

    fn f32_to_bf16(f: f32) -> u16 {
        let x = f.to_bits();
        if x & 0x7fffffff > 0x7f800000 {
            return ((x >> 16) | 0x40) as u16;
        }
        ((x + 0x7fff + ((x >> 16) & 1)) >> 16) as u16
    }

    /// `__double2float_rz`, then the sticky bit.
    fn f64_to_f32_odd(d: f64) -> f32 {
        let mut t = d as f32; // nearest
        if d.is_finite() && (t as f64).abs() > d.abs() {
            // Nearest rounded away from zero (or overflowed): step one ulp toward zero.
            t = f32::from_bits(t.to_bits() - 1);
        }
        if t as f64 == d {
            t
        } else {
            f32::from_bits(t.to_bits() | 1)
        }
    }

    fn same(a: u16, b: u16, nan: bool) -> bool {
        a == b || nan
    }

    #[test]
    fn every_f16_widens_like_half() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got:e} vs {want:e}"
            );
        }
    }

    /// f32 bit patterns: a stride through all 2^32, plus every pattern near the rounding
    /// boundaries of f16 (overflow, normal / subnormal, underflow) and of bf16.
    fn f32_sweep() -> impl Iterator<Item = u32> {
        let stride = (0..=u32::MAX).step_by(4099);
        let near = [
            0x477fe000u32,
            0x477ff000,
            0x47800000,
            0x38800000,
            0x387fc000,
            0x33000000,
            0x33800000,
            0x7f7f8000,
            0x7f800000,
            0x00000000,
            0x00008000,
        ]
        .into_iter()
        .flat_map(|b| (b.saturating_sub(4096)..=b.saturating_add(4096)).flat_map(|x| [x, x | 0x8000_0000]));
        stride.chain(near)
    }

    #[test]
    fn f32_narrows_like_half() {
        for x in f32_sweep() {
            let f = f32::from_bits(x);
            let nan = f.is_nan();
            let (got, want) = (f32_to_f16(f), f16::from_f32(f).to_bits());
            assert!(
                same(got, want, nan && f16::from_bits(got).is_nan()),
                "f16 of {x:#010x}: {got:#06x} vs {want:#06x}"
            );
            let (got, want) = (f32_to_bf16(f), bf16::from_f32(f).to_bits());
            assert!(
                same(got, want, nan && bf16::from_bits(got).is_nan()),
                "bf16 of {x:#010x}: {got:#06x} vs {want:#06x}"
            );
        }
    }

    /// The correctly rounded (nearest, ties to even) 16-bit encoding of `d`, found by bisection
    /// over the positive finite encodings and an exact comparison with the midpoint. Written
    /// independently of the kernels' bit tricks. The `half` crate is no reference here: on x86
    /// with F16C its f64 -> f16 goes through f32 (rounding twice), and its f64 -> bf16 drops the
    /// low 32 bits of the f64 significand.
    fn nearest(d: f64, inf_bits: u16, inf_value: f64, value: impl Fn(u16) -> f64) -> u16 {
        let sign = if d.is_sign_negative() { 0x8000 } else { 0 };
        let m = d.abs();
        let val = |b: u16| if b == inf_bits { inf_value } else { value(b) };
        if m >= inf_value {
            return sign | inf_bits;
        }
        // Largest encoding whose value is <= m.
        let (mut lo, mut hi) = (0u16, inf_bits);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if val(mid) <= m {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let midpoint = 0.5 * (val(lo) + val(lo + 1)); // exact: few significant bits
        let pick = if m < midpoint || (m == midpoint && lo % 2 == 0) { lo } else { lo + 1 };
        sign | pick
    }

    fn f16_nearest(d: f64) -> u16 {
        nearest(d, 0x7c00, 65536.0, |b| f16::from_bits(b).to_f64())
    }

    fn bf16_nearest(d: f64) -> u16 {
        nearest(d, 0x7f80, 2f64.powi(128), |b| bf16::from_bits(b).to_f64())
    }

    #[test]
    fn f64_narrows_through_round_to_odd_correctly() {
        // Every f16 / bf16 value, the midpoints to the next one and points just beside them
        // (where rounding twice, f64 -> f32 -> f16, goes wrong), and random points between.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut points = Vec::new();
        for h in 0..0x7fffu16 {
            for (lo, hi) in [
                (f16::from_bits(h).to_f64(), f16::from_bits(h + 1).to_f64()),
                (bf16::from_bits(h).to_f64(), bf16::from_bits(h + 1).to_f64()),
            ] {
                if !lo.is_finite() || !hi.is_finite() {
                    continue;
                }
                let mid = 0.5 * (lo + hi);
                let tiny = (hi - lo) * 1e-12;
                let jitter = (next() >> 11) as f64 / (1u64 << 53) as f64;
                points.extend([lo, mid, mid + tiny, mid - tiny, lo + (hi - lo) * jitter]);
            }
        }
        points.extend([1e300, f64::INFINITY, 1e-300, 0.0, 65519.99, 65520.0, 3.3961e38, 3.3962e38]);
        let mut half_differs = 0;
        for p in points {
            for d in [p, -p] {
                let t = f64_to_f32_odd(d);
                assert_eq!(f32_to_f16(t), f16_nearest(d), "f16 of {d:e}");
                assert_eq!(f32_to_bf16(t), bf16_nearest(d), "bf16 of {d:e}");
                half_differs += (f16::from_f64(d).to_bits() != f16_nearest(d)) as usize
                    + (bf16::from_f64(d).to_bits() != bf16_nearest(d)) as usize;
            }
        }
        println!("the half crate rounds {half_differs} of these f64 values differently");
    }
}
