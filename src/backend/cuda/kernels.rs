//! The kernel sources (`kernels/`, embedded at build time) and their compilation by NVRTC.
//!
//! NVRTC gets one program per `.cu` file with its `#include "..."` headers pasted in, so no
//! include path is needed and the files stay valid input for nvcc too. Programs are compiled to
//! PTX for a virtual architecture (`compute_XY`); the driver turns the PTX into machine code for
//! the actual device when the module is loaded.
//!
//! NVRTC's PTX targets the ISA of its own CUDA release: the driver must be at least as new as
//! the libnvrtc in use (a CUDA 13 libnvrtc needs a CUDA 13 driver).

use crate::error::{fail, Error, Result};

/// Headers that the `.cu` files include, by the name used in `#include "..."`.
const HEADERS: [(&str, &str); 2] = [
    ("common.cuh", include_str!("../../../kernels/common.cuh")),
    ("philox.cuh", include_str!("../../../kernels/philox.cuh")),
];

/// The kernel files: each is compiled as one NVRTC program and loaded as one module.
pub const SOURCES: [(&str, &str); 2] = [
    ("weights.cu", include_str!("../../../kernels/weights.cu")),
    ("cka.cu", include_str!("../../../kernels/cka.cu")),
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
                for op in ["lerp", "perturb", "segment_sumsq"] {
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
                names.push(format!("colsum_{t}"));
                names.push(format!("center_{t}_to_f32"));
                names.push(format!("center_{t}_to_f64"));
                names.push(format!("row_sqnorms_{t}"));
                names.push(format!("sumsq_{t}"));
            }
        }
        _ => {}
    }
    names
}

/// Every kernel of every file.
pub fn all_expected_kernels() -> Vec<String> {
    SOURCES
        .iter()
        .flat_map(|(file, _)| expected_kernels(file))
        .collect()
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
                fail!(
                    NotFound,
                    "{name} includes {header}, which is not an embedded kernel header"
                );
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

/// PTX of one kernel file.
#[derive(Debug, Clone)]
pub struct CompiledFile {
    /// The source file, e.g. `"weights.cu"`.
    pub file: &'static str,
    /// The PTX text.
    pub ptx: String,
    /// The kernels it defines (from its `.entry` lines).
    pub kernels: Vec<String>,
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

/// Compiles every kernel file for compute capability `major.minor` (e.g. 9.0 -> `compute_90`)
/// and checks that each file defines exactly the kernels of [`expected_kernels`].
pub fn compile_all(major: i32, minor: i32) -> Result<Vec<CompiledFile>> {
    check_nvrtc()?;
    if !(5..=20).contains(&major) || !(0..=9).contains(&minor) {
        fail!(
            InvalidArgument,
            "compute capability {major}.{minor} is not one NVRTC can target"
        );
    }
    let arch = format!("--gpu-architecture=compute_{major}{minor}");
    SOURCES
        .iter()
        .map(|(file, _)| {
            let src = expand(file)?;
            let opts = cudarc::nvrtc::CompileOptions {
                name: Some((*file).to_string()),
                options: vec![arch.clone(), "--std=c++17".into()],
                ..Default::default()
            };
            let ptx = cudarc::nvrtc::compile_ptx_with_opts(&src, opts).map_err(|e| {
                Error::Device(format!(
                    "NVRTC failed to compile {file} for compute_{major}{minor}: {}",
                    describe_compile_error(&e)
                ))
            })?;
            let ptx = ptx.to_src();
            let kernels = ptx_entries(&ptx);
            let mut want = expected_kernels(file);
            let mut got = kernels.clone();
            want.sort();
            got.sort();
            if want != got {
                fail!(
                    Device,
                    "{file}: the PTX defines kernels {got:?}, expected {want:?}"
                );
            }
            Ok(CompiledFile { file, ptx, kernels })
        })
        .collect()
}

fn describe_compile_error(e: &cudarc::nvrtc::CompileError) -> String {
    match e {
        cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. } => {
            format!("{nvrtc:?}\n{}", log.to_string_lossy())
        }
        other => format!("{other:?}"),
    }
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
    fn expected_kernels_appear_in_the_sources() {
        // Cheap check without NVRTC: every expected name is spelled out by a macro in the
        // source (as NAME##suffix) or literally.
        let all = all_expected_kernels();
        assert_eq!(all.len(), 46);
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "duplicate kernel names");
    }

    #[test]
    fn ptx_entry_lines_are_parsed() {
        let ptx = "\n.visible .entry lerp_f32(\n\t.param .u64 a\n)\n.visible .entry sumsq_bf16()\n.func x(\n";
        assert_eq!(ptx_entries(ptx), ["lerp_f32", "sumsq_bf16"]);
    }
}
