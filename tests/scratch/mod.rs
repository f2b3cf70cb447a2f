//! A scratch folder per test: removed when the test passes, kept and named on stderr when it
//! fails, so that a failure's files can be looked at and a passing run leaves nothing behind.
#![allow(dead_code)]

use std::ops::Deref;
use std::path::{Path, PathBuf};

pub struct Scratch(PathBuf);

impl Scratch {
    /// A new empty folder in the system's temporary folder, its name starting `tl-{tag}-`.
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("tl-{tag}-")).tempdir().expect("a scratch folder");
        Scratch(dir.keep())
    }
}

impl Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the failed test's files are kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
