//! Gives the shared library the SONAME `libtransferlens.so.<major>`: programs linked against it
//! record that name, so the dynamic loader finds any later build of the same major version
//! through the `libtransferlens.so.<major>` symlink that `scripts/install.sh` makes.
//!
//! A program linked against the build tree's `target/<profile>/libtransferlens.so` asks for that
//! name too, so the same symlink is made next to it.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "blas")]
    link_openblas();
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets CARGO_PKG_VERSION_MAJOR");
    let family = std::env::var("CARGO_CFG_TARGET_FAMILY").unwrap_or_default();
    let vendor = std::env::var("CARGO_CFG_TARGET_VENDOR").unwrap_or_default();
    // ELF platforms only: Apple's linker names a dylib by its install name instead.
    if !family.split(',').any(|f| f == "unix") || vendor == "apple" {
        return;
    }
    let soname = format!("libtransferlens.so.{major}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    link_soname_in_profile_dir(Path::new(&out_dir), &soname);
}

/// Makes `<profile>/<soname> -> libtransferlens.so`, where `out_dir` is
/// `<profile>/build/<package>-<hash>/out` and the linked library lands in `<profile>`. The link
/// dangles until the library is linked. A layout other than this one is left alone.
fn link_soname_in_profile_dir(out_dir: &Path, soname: &str) {
    let Some(build) = out_dir.parent().and_then(Path::parent) else { return };
    let Some(profile) = build.parent().filter(|_| build.file_name().is_some_and(|n| n == "build")) else {
        return;
    };
    let link = profile.join(soname);
    if std::fs::read_link(&link).is_ok_and(|target| target == Path::new("libtransferlens.so")) {
        return;
    }
    let _ = std::fs::remove_file(&link);
    #[cfg(unix)]
    if let Err(e) = std::os::unix::fs::symlink("libtransferlens.so", &link) {
        println!("cargo:warning=could not make {}: {e}", link.display());
    }
}

/// The `blas` feature's CBLAS symbols from the system's OpenBLAS, located by its pkg-config file
/// (Debian: libopenblas-dev), with a build error that says what to install when it is missing.
#[cfg(feature = "blas")]
fn link_openblas() {
    if let Err(e) = pkg_config::Config::new().atleast_version("0.3").probe("openblas") {
        panic!(
            "the `blas` feature links the system's OpenBLAS, which pkg-config did not find \
             (Debian/Ubuntu: apt install libopenblas-dev; or set PKG_CONFIG_PATH to its openblas.pc): {e}"
        );
    }
}
