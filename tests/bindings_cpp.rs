//! The C++ binding (bindings/cpp/transferlens.hpp) tested from C++: its test program is compiled
//! with g++ -std=c++17 -Wall -Wextra -Werror -fsanitize=address,undefined and run; the example
//! (bindings/cpp/examples/training_loop.cpp) is built directly, and against the package that
//! scripts/install.sh installs (CMake find_package and pkg-config, set up as install.sh's
//! closing instructions say), and its printed CKA values are checked against an f64 reference
//! written here. The installed shared library is checked for its SONAME, its symlinks and the
//! absence of debug info.

mod bindings_common;
mod common;
mod scratch;

use bindings_common::{
    check_cnn_example_output, check_params_example_output, have, library_dir, root, run_checked, scratch,
};
use common::{assert_close, reference_cka_feature, Dense};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `libtransferlens.so.<major>`, the SONAME of the shared library.
const SONAME: &str = concat!("libtransferlens.so.", env!("CARGO_PKG_VERSION_MAJOR"));
/// `libtransferlens.so.<version>`, the file install.sh installs the shared library as.
const SO_FILE: &str = concat!("libtransferlens.so.", env!("CARGO_PKG_VERSION"));

/// g++ with the warnings and sanitizers of the C++ tests, the header folders and the library.
fn gxx(lib: &Path, source: &Path, exe: &Path) -> Command {
    let mut cmd = Command::new("g++");
    cmd.args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g", "-O1"])
        .args(["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"])
        .arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("bindings/cpp"))
        .arg(source)
        .arg("-o")
        .arg(exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-ltransferlens");
    cmd
}

/// Runs a sanitized program: leaks and undefined behaviour fail it.
fn run_sanitized(exe: &Path, what: &str) -> String {
    run_checked(
        Command::new(exe)
            .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:exitcode=97")
            .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1"),
        what,
    )
}

#[test]
fn cpp_tests_pass_under_sanitizers() {
    let lib = library_dir();
    let dir = scratch("cpp-tests");
    let exe = dir.join("test_transferlens");
    run_checked(
        &mut gxx(&lib, &root().join("bindings/cpp/tests/test_transferlens.cpp"), &exe),
        "compiling bindings/cpp/tests/test_transferlens.cpp",
    );
    let out = run_sanitized(&exe, "bindings/cpp/tests/test_transferlens");
    print!("{out}");
    assert!(out.contains("all C++ binding tests passed"), "the C++ tests did not finish:\n{out}");
}

/// The example's toy model in f64, rounded to f32 as the example stores it: (hidden, outputs).
fn toy_forward(phase: f64) -> (Dense, Dense) {
    const N: usize = 100;
    const D: usize = 8;
    const H: usize = 6;
    const K: usize = 4;
    let mut h1 = vec![0.0; N * H];
    let mut h2 = vec![0.0; N * K];
    for s in 0..N {
        let sf = s as f64;
        for j in 0..H {
            let mut a = 0.0;
            for d in 0..D {
                let df = d as f64;
                let x = (0.5 * sf + 1.3 * df).sin() + (0.31 * sf * (df + 1.0)).cos();
                a += x * (1.1 * df + 0.7 * j as f64 + phase).cos();
            }
            h1[s * H + j] = a.tanh();
        }
        for k in 0..K {
            let mut a = 0.0;
            for j in 0..H {
                a += h1[s * H + j] * (0.9 * j as f64 - 0.4 * k as f64 + phase).sin();
            }
            h2[s * K + k] = a.tanh();
        }
    }
    let f32ed = |v: Vec<f64>| v.into_iter().map(|x| x as f32 as f64).collect::<Vec<_>>();
    (Dense { rows: N, cols: H, data: f32ed(h1) }, Dense { rows: N, cols: K, data: f32ed(h2) })
}

/// Checks the example's output: 4 epochs, each with CKA(P layer i, T layer j), debiased.
fn check_example_output(out: &str, what: &str) {
    let (p1, p2) = toy_forward(0.0);
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(lines.len(), 4, "{what}: expected 4 epochs in:\n{out}");
    for (epoch, line) in lines.iter().enumerate() {
        let (t1, t2) = toy_forward(0.25 * epoch as f64);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[1], format!("{epoch}:"), "{what}: {line}");
        let mut k = 2;
        for (i, p) in [&p1, &p2].into_iter().enumerate() {
            for (j, t) in [&t1, &t2].into_iter().enumerate() {
                assert_eq!(fields[k], format!("P{}-T{}", i + 1, j + 1), "{what}: {line}");
                let got: f64 = fields[k + 1].parse().unwrap_or_else(|_| panic!("{what}: a number in {line}"));
                let want = reference_cka_feature(p, t, true);
                assert_close(got, want, 1e-6, &format!("{what}: epoch {epoch} P{}-T{}", i + 1, j + 1));
                k += 2;
            }
        }
    }
}

#[test]
fn example_training_loop_matches_the_reference() {
    let lib = library_dir();
    let dir = scratch("cpp-example");
    let exe = dir.join("training_loop");
    run_checked(
        &mut gxx(&lib, &root().join("bindings/cpp/examples/training_loop.cpp"), &exe),
        "compiling bindings/cpp/examples/training_loop.cpp",
    );
    let out = run_sanitized(&exe, "training_loop");
    print!("{out}");
    check_example_output(&out, "training_loop");
}

#[test]
fn example_rewind_matches_the_reference() {
    let lib = library_dir();
    let dir = scratch("cpp-example-rewind");
    let exe = dir.join("rewind");
    run_checked(
        &mut gxx(&lib, &root().join("bindings/cpp/examples/rewind.cpp"), &exe),
        "compiling bindings/cpp/examples/rewind.cpp",
    );
    let out = run_sanitized(&exe, "rewind");
    print!("{out}");
    check_params_example_output(&out, "rewind.cpp");
}

#[test]
fn example_cnn_matches_the_rust_api() {
    let lib = library_dir();
    let dir = scratch("cpp-example-cnn");
    let exe = dir.join("cnn");
    run_checked(
        &mut gxx(&lib, &root().join("bindings/cpp/examples/cnn.cpp"), &exe),
        "compiling bindings/cpp/examples/cnn.cpp",
    );
    let out = run_sanitized(&exe, "cnn");
    print!("{out}");
    check_cnn_example_output(&out, "cnn.cpp");
}

#[test]
fn installed_package_builds_the_example_with_cmake_and_pkg_config() {
    // The libraries of this profile, fresh; install.sh would otherwise build release itself.
    let lib = library_dir();
    let dir = scratch("cpp-install");
    let prefix = dir.join("prefix");
    let printed = run_checked(
        Command::new("bash")
            .arg(root().join("scripts/install.sh"))
            .arg("--prefix")
            .arg(&prefix)
            .arg("--lib-dir")
            .arg(&lib),
        "scripts/install.sh --prefix",
    );
    print!("{printed}");
    for file in [
        &format!("lib/{SO_FILE}"),
        &format!("lib/.debug/{SO_FILE}.debug"),
        "lib/libtransferlens.a",
        "include/transferlens.h",
        "include/transferlens.hpp",
        "lib/pkgconfig/transferlens.pc",
        "lib/cmake/transferlens/transferlensConfig.cmake",
        "lib/cmake/transferlens/transferlensConfigVersion.cmake",
    ] {
        assert!(prefix.join(file).is_file(), "install.sh did not install {file}");
    }
    check_installed_libraries(&prefix.join("lib"));
    let settings = printed_settings(&printed, &prefix);
    let example = root().join("bindings/cpp/examples");

    if have("cmake") {
        let build = dir.join("cmake-build");
        run_checked(
            Command::new("cmake")
                .arg("-S")
                .arg(&example)
                .arg("-B")
                .arg(&build)
                .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
                .arg("-DCMAKE_BUILD_TYPE=Release"),
            "cmake configure of bindings/cpp/examples (find_package(transferlens))",
        );
        run_checked(Command::new("cmake").arg("--build").arg(&build), "cmake --build");
        assert_eq!(needed(&build.join("training_loop")), [SONAME], "training_loop built with CMake");
        let out = run_checked(&mut Command::new(build.join("training_loop")), "training_loop built with CMake");
        check_example_output(&out, "training_loop (CMake)");
        println!("CMake find_package(transferlens): built and checked");

        // A version the package cannot satisfy is refused.
        let bad = dir.join("cmake-bad");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(
            bad.join("CMakeLists.txt"),
            "cmake_minimum_required(VERSION 3.14)\nproject(bad CXX)\nfind_package(transferlens 7.0 REQUIRED)\n",
        )
        .unwrap();
        let refused = Command::new("cmake")
            .arg("-S")
            .arg(&bad)
            .arg("-B")
            .arg(bad.join("build"))
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
            .output()
            .unwrap();
        assert!(!refused.status.success(), "find_package(transferlens 7.0) should fail against 0.x");
    } else {
        println!("cmake not installed: the CMake package check was skipped");
    }

    if have("pkg-config") {
        let pc_path = prefix.join("lib/pkgconfig");
        // The flags as a new user gets them: PKG_CONFIG_PATH from install.sh's printed settings.
        let flags = run_checked(
            Command::new("bash")
                .arg("-c")
                .arg(format!("{settings}\npkg-config --cflags --libs transferlens"))
                .env_remove("PKG_CONFIG_PATH")
                .env_remove("LD_LIBRARY_PATH"),
            "pkg-config --cflags --libs transferlens after install.sh's settings",
        );
        let exe = dir.join("training_loop_pc");
        let mut cmd = Command::new("g++");
        cmd.args(["-std=c++17", "-Wall", "-Wextra", "-Werror"])
            .arg(example.join("training_loop.cpp"))
            .arg("-o")
            .arg(&exe)
            .args(flags.split_whitespace());
        run_checked(&mut cmd, "g++ with pkg-config's flags");
        assert_eq!(needed(&exe), [SONAME], "training_loop linked through pkg-config");
        // Run as the settings say (LD_LIBRARY_PATH, no rpath): the loader must pick the installed
        // libtransferlens.so.<major>.
        let traced = run_checked(
            Command::new("bash")
                .arg("-c")
                .arg(format!("{settings}\nLD_TRACE_LOADED_OBJECTS=1 \"$0\""))
                .arg(&exe)
                .env_remove("LD_LIBRARY_PATH"),
            "the loader's choice of libtransferlens for training_loop_pc",
        );
        let installed = prefix.join("lib").join(SONAME);
        assert!(
            traced.lines().any(|l| l.trim().starts_with(&format!("{SONAME} => {}", installed.display()))),
            "training_loop_pc does not load {}:\n{traced}",
            installed.display()
        );
        let out = run_checked(
            Command::new("bash").arg("-c").arg(format!("{settings}\n\"$0\"")).arg(&exe).env_remove("LD_LIBRARY_PATH"),
            "training_loop built with pkg-config",
        );
        check_example_output(&out, "training_loop (pkg-config)");
        println!("pkg-config transferlens: built and checked");

        // The static archive links too, with the private libraries pkg-config lists.
        let static_flags = run_checked(
            Command::new("pkg-config")
                .args(["--static", "--cflags", "--libs", "transferlens"])
                .env("PKG_CONFIG_PATH", &pc_path),
            "pkg-config --static",
        );
        let exe = dir.join("training_loop_static");
        let lib_a = prefix.join("lib/libtransferlens.a");
        let mut cmd = Command::new("g++");
        cmd.args(["-std=c++17"])
            .arg(example.join("training_loop.cpp"))
            .arg("-o")
            .arg(&exe)
            .args(static_flags.split_whitespace().filter(|f| *f != "-ltransferlens"))
            .arg(&lib_a)
            .args(static_flags.split_whitespace().filter(|f| f.starts_with("-l") && *f != "-ltransferlens"));
        run_checked(&mut cmd, "g++ with libtransferlens.a");
        let out = run_checked(&mut Command::new(&exe), "training_loop linked statically");
        check_example_output(&out, "training_loop (static)");
    } else {
        println!("pkg-config not installed: the pkg-config check was skipped");
    }
}

/// Checks the installed libraries: the versioned shared library with its SONAME, the two
/// symlinks, and no debug info in the .so or the .a (the .so's is in lib/.debug).
fn check_installed_libraries(lib: &Path) {
    for (link, target) in [(SONAME, SO_FILE), ("libtransferlens.so", SONAME)] {
        let got = std::fs::read_link(lib.join(link)).unwrap_or_else(|e| panic!("lib/{link} is not a symlink: {e}"));
        assert_eq!(got, PathBuf::from(target), "lib/{link} points at {}", got.display());
    }
    let so = lib.join(SO_FILE);
    let dynamic = run_checked(Command::new("readelf").arg("-d").arg(&so), "readelf -d");
    assert!(
        dynamic.lines().any(|l| l.contains("(SONAME)") && l.contains(&format!("[{SONAME}]"))),
        "{SO_FILE} has no SONAME {SONAME}:\n{dynamic}"
    );
    for file in [so.clone(), lib.join("libtransferlens.a")] {
        let sections = run_checked(Command::new("readelf").args(["-S", "-W"]).arg(&file), "readelf -S");
        assert!(!sections.contains(".debug_info"), "{} is not stripped: it has .debug_info", file.display());
    }
    let sections = run_checked(Command::new("readelf").args(["-S", "-W"]).arg(&so), "readelf -S");
    assert!(sections.contains(".gnu_debuglink"), "{SO_FILE} does not name its debug file");
}

/// The `export` lines that install.sh prints at its end, checked for the prefix, as one script.
fn printed_settings(printed: &str, prefix: &Path) -> String {
    let exports: Vec<&str> = printed.lines().map(str::trim).filter(|l| l.starts_with("export ")).collect();
    let p = prefix.display();
    for want in [
        format!("export PKG_CONFIG_PATH=\"{p}/lib/pkgconfig${{PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}}\""),
        format!("export CMAKE_PREFIX_PATH=\"{p}${{CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}}\""),
        format!("export LD_LIBRARY_PATH=\"{p}/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\""),
    ] {
        assert!(exports.contains(&want.as_str()), "install.sh did not print\n  {want}\nin:\n{printed}");
    }
    exports.join("\n")
}

/// The NEEDED entries of an executable that name libtransferlens.
fn needed(exe: &Path) -> Vec<String> {
    let dynamic = run_checked(Command::new("readelf").arg("-d").arg(exe), "readelf -d");
    dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)") && l.contains("libtransferlens"))
        .filter_map(|l| Some(l[l.find('[')? + 1..l.rfind(']')?].to_string()))
        .collect()
}

/// bindings/README.md shows the examples the tests run, verbatim: the C++ example and its
/// CMake project (built above), the Go examples (tests/bindings_go.rs) and the Julia examples
/// (run by the package's test/runtests.jl).
#[test]
fn bindings_readme_quotes_the_examples_the_tests_run() {
    let readme = std::fs::read_to_string(root().join("bindings/README.md")).expect("bindings/README.md");
    for example in [
        "bindings/cpp/examples/training_loop.cpp",
        "bindings/cpp/examples/CMakeLists.txt",
        "bindings/cpp/examples/rewind.cpp",
        "bindings/cpp/examples/cnn.cpp",
        "bindings/go/examples/cnn/main.go",
        "bindings/julia/TransferLens/examples/cnn.jl",
        "bindings/go/examples/cka/main.go",
        "bindings/go/examples/params/main.go",
        "bindings/julia/TransferLens/examples/cka.jl",
        "bindings/julia/TransferLens/examples/params.jl",
    ] {
        let text = std::fs::read_to_string(root().join(example)).unwrap();
        assert!(readme.contains(&text), "bindings/README.md must quote {example} verbatim");
    }
}
