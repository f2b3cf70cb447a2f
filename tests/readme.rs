//! The README's examples are the programs the tests run: this checks that it quotes them
//! verbatim, and that its two set-up commands are the ones CI uses.

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn readme_quotes_the_c_example_that_the_tests_run() {
    let readme = read("README.md");
    let example = read("tests/c/readme_example.c");
    let body = example.split_once('\n').map(|(_, rest)| rest).unwrap(); // the first line is a note for readers of the file
    assert!(readme.contains(body), "README.md must quote tests/c/readme_example.c (from its second line) verbatim");
}

#[test]
fn readme_test_command_is_the_one_ci_runs() {
    let readme = read("README.md");
    let ci = read(".ci/run");
    assert!(readme.lines().any(|l| l.starts_with(".ci/run ")), "the README's test command is .ci/run");
    assert!(
        ci.lines().any(|l| l == "cargo test --release" || l.starts_with("cargo test --release 2>&1 | tee ")),
        ".ci/run runs cargo test --release (its output may be kept with tee for the closing count)"
    );
}
