//! Files written atomically: a reader sees the old file or the whole new one, never a part.

use crate::error::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `path` atomically: `fill` writes the contents into a temporary file in the same folder,
/// which is flushed to disk and renamed over `path`. On failure the temporary file is removed and
/// `path` is left as it was. Errors name `path`.
pub(crate) fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let what = path.display();
    let file_name = path.file_name().ok_or_else(|| Error::InvalidArgument(format!("{what}: not a file path")))?;
    // The same folder, so that the rename stays on one file system.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Unique per process and call: concurrent writers of one path never share a temporary file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let write_and_rename = || -> std::io::Result<()> {
        let mut writer = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        fill(&mut writer)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write_and_rename().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io(format!("{what}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = std::env::temp_dir().join(format!("tl-atomic-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.txt");
        write_atomic(&path, |w| w.write_all(b"first")).unwrap();
        let e = write_atomic(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(matches!(&e, Error::Io(m) if m.contains("out.txt") && m.contains("disk full")), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write_atomic(&path, |w| w.write_all(b"second")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["out.txt"], "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
