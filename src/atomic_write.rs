//! Files written atomically: a reader sees the old file or the whole new one, never a part.
//!
//! A symlink at the output path is kept: the file it points to is replaced, and it keeps its
//! permission bits (a new file gets the usual 0666 less the umask). Another hard link to the old
//! file keeps the old contents. A temporary file `.NAME.tmp-PID-N` is written next to the target
//! and renamed over it; temporaries of writes in progress are registered, so that a process
//! interrupted by a signal can remove them ([`abandon_unfinished_writes`]), and temporaries of
//! the same target left by processes that no longer exist are removed by the next write.

use crate::error::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Temporary files of this process's writes in progress.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn pending() -> MutexGuard<'static, Vec<PathBuf>> {
    // A panic while the list was held leaves it valid: entries are pushed and removed whole.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the temporary files of every write in progress and keeps new writes from starting:
/// for a process about to end on a signal (the `tlens` command line calls it on SIGINT and
/// SIGTERM). A write that is running stops at its next step; nothing in the process can write
/// a file atomically afterwards, so call this only on the way out.
pub fn abandon_unfinished_writes() {
    let list = pending();
    for tmp in list.iter() {
        let _ = std::fs::remove_file(tmp);
    }
    // Held until the process ends: no temporary can be created after this sweep.
    std::mem::forget(list);
}

/// The file that `path` names, following symlinks (relative targets are relative to the
/// link's folder). A path that does not exist yet is its own target.
fn resolve_symlinks(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p).map_err(|e| Error::Io(format!("{}: {e}", p.display())))?;
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(Error::Io(format!("{}: too many levels of symbolic links", path.display())))
}

/// Removes `.NAME.tmp-PID-N` files in `dir` whose process no longer exists: what a process
/// killed during a write of the same target left behind.
fn sweep_stale(dir: &Path, file_name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefix = format!(".{file_name}.tmp-");
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let Some((pid, n)) = rest.split_once('-') else { continue };
        let (Ok(pid), true) = (pid.parse::<u32>(), !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let Ok(pid_t) = libc::pid_t::try_from(pid) else { continue };
        if pid == me || pid_t <= 0 {
            continue;
        }
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid_t, 0) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes `path` atomically: `fill` writes the contents into a temporary file in the same folder,
/// which is flushed to disk and renamed over `path`. On failure the temporary file is removed and
/// `path` is left as it was. Errors name `path`.
pub(crate) fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let what = path.display();
    let target = resolve_symlinks(path)?;
    let file_name = target.file_name().ok_or_else(|| Error::InvalidArgument(format!("{what}: not a file path")))?;
    // The same folder, so that the rename stays on one file system.
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = file_name.to_string_lossy();
    sweep_stale(&dir, &file_name);
    // The replaced file's permission bits carry over to the new one.
    let keep_mode = std::fs::metadata(&target).ok().filter(|m| m.is_file()).map(|m| m.permissions());
    // Unique per process and call: concurrent writers of one path never share a temporary file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let forget = |tmp: &Path| pending().retain(|p| p != tmp);
    let write_and_rename = || -> std::io::Result<()> {
        let file = {
            // Created and registered under the lock: a signal's sweep sees every temporary.
            let mut list = pending();
            let file = std::fs::File::create(&tmp)?;
            list.push(tmp.clone());
            file
        };
        if let Some(mode) = keep_mode {
            file.set_permissions(mode)?;
        }
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        fill(&mut writer)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &target)?;
        forget(&tmp);
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write_and_rename().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        forget(&tmp);
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

    #[test]
    fn a_symlink_is_kept_and_the_replaced_file_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tl-atomic-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let target = dir.join("real/out.txt");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("link.txt");
        std::os::unix::fs::symlink("real/out.txt", &link).unwrap();
        write_atomic(&link, |w| w.write_all(b"new")).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink is kept");
        assert_eq!(std::fs::read(&target).unwrap(), b"new", "its target is replaced");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777, 0o600, "mode kept");
        // A dangling symlink: the file it names is created.
        std::os::unix::fs::symlink(dir.join("real/fresh.txt"), dir.join("dangling")).unwrap();
        write_atomic(&dir.join("dangling"), |w| w.write_all(b"fresh")).unwrap();
        assert_eq!(std::fs::read(dir.join("real/fresh.txt")).unwrap(), b"fresh");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temporaries_of_dead_processes_are_swept_and_live_ones_kept() {
        let dir = std::env::temp_dir().join(format!("tl-atomic-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A process that has ended: a child we ran and reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = dir.join(format!(".out.bin.tmp-{dead}-3"));
        let live = dir.join(".out.bin.tmp-1-0"); // pid 1 always exists
        let other = dir.join(format!(".other.bin.tmp-{dead}-0")); // another target's
        for p in [&stale, &live, &other] {
            std::fs::write(p, b"partial").unwrap();
        }
        write_atomic(&dir.join("out.bin"), |w| w.write_all(b"whole")).unwrap();
        assert!(!stale.exists(), "the dead process's temporary is removed");
        assert!(live.exists() && other.exists(), "a live process's and another target's are kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
