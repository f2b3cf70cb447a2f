//! Compiles every CUDA kernel through NVRTC; needs libnvrtc, not a GPU.
//!
//! Without libnvrtc the test prints why it skipped and passes, unless `TL_REQUIRE_NVRTC=1`.
//! Optional checks driven by the environment:
//! - `TL_PTX_DIR=dir`: write the PTX of each file and architecture there;
//! - `TL_PTXAS=path/to/ptxas`: assemble the sm_90 PTX with `ptxas -v`, print its register and
//!   spill report and fail on any spill.

mod scratch;
use transferlens::backend::cuda::kernels;

fn required() -> bool {
    std::env::var("TL_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

#[test]
fn nvrtc_compiles_every_kernel() {
    if let Err(e) = kernels::check_nvrtc() {
        assert!(!required(), "TL_REQUIRE_NVRTC=1 but {e}");
        println!("skipped: {e}");
        return;
    }
    let (vmajor, vminor) = kernels::nvrtc_version().unwrap();
    println!("NVRTC {vmajor}.{vminor}");
    let expected = kernels::all_expected_kernels();
    for (major, minor) in [(8, 0), (9, 0)] {
        // Machine code, as the runtime loads it: NVRTC runs the assembler itself, so this
        // catches anything ptxas rejects even where no ptxas is installed.
        let cubins = kernels::compile_all(major, minor, kernels::Output::Cubin)
            .unwrap_or_else(|e| panic!("sm_{major}{minor} CUBIN: {e}"));
        for f in &cubins {
            assert!(f.code.starts_with(b"\x7fELF"), "{}: CUBIN is not an ELF image", f.file);
        }
        let files = kernels::compile_all(major, minor, kernels::Output::Ptx)
            .unwrap_or_else(|e| panic!("compute_{major}{minor} PTX: {e}"));
        let mut got: Vec<String> = files.iter().flat_map(|f| f.kernels.clone()).collect();
        let n = got.len();
        got.sort();
        let mut want = expected.clone();
        want.sort();
        assert_eq!(got, want, "kernels compiled for sm_{major}{minor}");
        // Count the .entry lines directly too, independent of the parsed names.
        let entries: usize = files.iter().map(|f| f.ptx().unwrap().matches(".visible .entry ").count()).sum();
        assert_eq!(entries, n);
        println!("compiled {n} kernels for sm_{major}{minor}");

        if let Ok(dir) = std::env::var("TL_PTX_DIR") {
            std::fs::create_dir_all(&dir).unwrap();
            for f in &files {
                let path = format!("{dir}/{}.sm_{major}{minor}.ptx", f.file);
                std::fs::write(&path, &f.code).unwrap();
            }
        }
        if major == 9 {
            if let Ok(ptxas) = std::env::var("TL_PTXAS") {
                ptxas_report(&ptxas, &files);
            }
        }
    }
}

/// Assembles each PTX for sm_90 with `ptxas -v`, prints one line per kernel and fails on spills.
fn ptxas_report(ptxas: &str, files: &[kernels::CompiledFile]) {
    let dir = scratch::Scratch::new("ptxas");
    let mut spills = Vec::new();
    for f in files {
        let input = dir.join(format!("{}.ptx", f.file));
        std::fs::write(&input, &f.code).unwrap();
        let out = std::process::Command::new(ptxas)
            .args(["-arch=sm_90", "-v", "-o"])
            .arg(dir.join(format!("{}.cubin", f.file)))
            .arg(&input)
            .output()
            .unwrap_or_else(|e| panic!("running {ptxas}: {e}"));
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "ptxas failed on {}:\n{log}", f.file);
        // ptxas -v prints, per kernel: "Compiling entry function 'name' for 'sm_90'",
        // "... bytes stack frame, N bytes spill stores, M bytes spill loads",
        // "Used R registers, ...".
        let mut kernel = String::new();
        let mut frame = String::new();
        for line in log.lines() {
            if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                kernel = rest.split('\'').next().unwrap_or("").to_string();
            } else if line.contains("spill stores") {
                frame = line.split("info    : ").last().unwrap_or(line).trim().to_string();
                let stores = number_before(line, "bytes spill stores");
                let loads = number_before(line, "bytes spill loads");
                if stores != 0 || loads != 0 {
                    spills.push(format!("{kernel}: {frame}"));
                }
            } else if let Some(rest) = line.split("Used ").nth(1) {
                println!("ptxas sm_90 {:<28} used {rest}; {frame}", kernel);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(spills.is_empty(), "register spills: {spills:#?}");
    println!("ptxas sm_90: no spills");
}

fn number_before(line: &str, what: &str) -> u64 {
    let head = line.split(what).next().unwrap_or("");
    head.split_whitespace().last().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
}
