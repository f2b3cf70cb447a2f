//! The C ABI tested from C: every `tests/c/*.c` is compiled with the system C compiler against
//! include/transferlens.h (C99, -Wall -Wextra -Werror -pedantic), linked to the cdylib that cargo
//! built for this test run, and run; it must exit 0. Where valgrind is installed each program
//! runs under it too and must report no memory errors and no definite leaks. The header is also
//! compiled as C++ with the same warnings.

mod scratch;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder holding libtransferlens.so for this profile (test binaries live in
/// `<dir>/deps`), after building it: `cargo test` builds the library as an rlib for the tests,
/// not necessarily the cdylib, which would otherwise be missing or stale.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
    let target = dir.parent().expect("target folder");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--lib", "--quiet", "--manifest-path"])
        .arg(root().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target);
    if dir.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    run_checked(&mut cargo, "cargo build --lib (for the cdylib)");
    assert!(
        dir.join("libtransferlens.so").exists(),
        "{} has no libtransferlens.so after cargo build --lib",
        dir.display()
    );
    dir
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run_checked(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn header_compiles_as_cpp() {
    let out_dir = scratch::Scratch::new("cpp-header");
    let tu = out_dir.join("header.cpp");
    std::fs::write(
        &tu,
        "#include \"transferlens.h\"\nint main() { return tl_abi_version() == TL_ABI_VERSION ? 0 : 1; }\n",
    )
    .unwrap();
    run_checked(
        Command::new("c++")
            .args(["-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-I"])
            .arg(root().join("include"))
            .arg(&tu),
        "c++ -fsyntax-only on include/transferlens.h",
    );
}

#[test]
fn c_programs_pass() {
    let lib = library_dir();
    let out_dir = scratch::Scratch::new("c-programs");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(root().join("tests/c"))
        .expect("tests/c exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    assert!(!sources.is_empty(), "tests/c holds no C programs");
    let valgrind = have("valgrind");
    if !valgrind {
        println!("valgrind not installed: the C programs run without it");
    }
    for src in &sources {
        let name = src.file_stem().unwrap().to_string_lossy().to_string();
        let exe = out_dir.join(&name);
        run_checked(
            Command::new("cc")
                .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-g", "-I"])
                .arg(root().join("include"))
                .arg(src)
                .arg("-o")
                .arg(&exe)
                .arg(format!("-L{}", lib.display()))
                .arg(format!("-Wl,-rpath,{}", lib.display()))
                .args(["-ltransferlens", "-lpthread", "-lm"]),
            &format!("compiling tests/c/{name}.c"),
        );
        let text = run_checked(&mut Command::new(&exe), &format!("tests/c/{name}"));
        println!("tests/c/{name}: passed\n{text}");
        if valgrind {
            run_checked(
                Command::new("valgrind")
                    .args(["--quiet", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite"])
                    .arg(&exe)
                    .env("TL_UNDER_VALGRIND", "1"),
                &format!("tests/c/{name} under valgrind"),
            );
            println!("tests/c/{name}: valgrind clean");
        }
    }
}

#[test]
fn the_c_api_page_quotes_the_cnn_example_that_the_tests_run() {
    let page = std::fs::read_to_string(root().join("docs/c-api.md")).unwrap();
    let example = std::fs::read_to_string(root().join("tests/c/cnn_example.c")).unwrap();
    let body = example.split_once('\n').map(|(_, rest)| rest).unwrap(); // the first line is a note for readers of the file
    assert!(page.contains(body), "docs/c-api.md must quote tests/c/cnn_example.c (from its second line) verbatim");
}
