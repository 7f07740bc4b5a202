//! Files that results depend on, written so that no failure leaves one that looks complete.
//!
//! A result file or directory is built under its `.partial` name, every file in it is flushed and
//! synced, and only then is it renamed to its final name (and the directory holding it synced, so
//! that the rename itself survives a crash of the node). A full disk, a kill or an I/O error
//! therefore leaves at most a `.partial`, never a final name over partial contents. Errors name
//! the file and carry the OS error ("No space left on device"); they are environment failures
//! (exit 1), except where the caller decides that the path was the user's mistake.
//!
//! Run directories are owned by one writer at a time through [`Lock`], an advisory `flock` that
//! the kernel releases when the holder exits, however it exits: a kill never leaves a stale lock.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The name a file or directory has until it is complete: `kernels.h5` -> `kernels.h5.partial`.
pub fn partial_path(path: &Path) -> PathBuf {
    with_suffix(path, ".partial")
}

/// `path` with `suffix` appended to its last component: `k.h5` -> `k.h5.lock`.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes `bytes` to `path` through its `.partial` name: written, synced, renamed, directory
/// synced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = partial_path(path);
    let written = (|| -> std::io::Result<()> {
        let mut file = File::create(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e).with_context(|| format!("writing {}", partial.display()));
    }
    rename_synced(&partial, path)
}

/// Renames a complete, synced `partial` file or directory to `path` and syncs the directory that
/// holds them; an existing directory at `path` is replaced.
pub fn rename_synced(partial: &Path, path: &Path) -> Result<()> {
    if path.is_dir() && partial.is_dir() {
        std::fs::remove_dir_all(path).with_context(|| format!("replacing {}", path.display()))?;
    }
    std::fs::rename(partial, path)
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    sync_parent(path)
}

/// Syncs every file under `dir` and `dir` itself (before a rename makes it final).
pub fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync_file(&path)?;
        }
    }
    sync_file(dir)
}

/// fsync of one file or directory.
pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", path.display()))
}

/// fsync of the directory that holds `path`, which makes a rename or creation in it durable.
pub fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_file(parent),
        _ => sync_file(Path::new(".")),
    }
}

/// Checks, before any work, that an output named by the user (`what`, e.g. `--out FILE`) can be
/// written: its directory exists and is writable, and a file output is not a directory. Problems
/// with the path are the user's to fix (an [`crate::error::InputError`]); a disk that fills up later is not.
pub fn check_output(what: &str, path: &Path, is_dir: bool) -> Result<(), crate::error::InputError> {
    let bad = |why: String| crate::error::InputError(format!("{what} {}: {why}", path.display()));
    if !is_dir && path.is_dir() {
        return Err(bad("is a directory".into()));
    }
    if is_dir && path.exists() && !path.is_dir() {
        return Err(bad("exists and is not a directory".into()));
    }
    // The nearest existing ancestor is where the output (and any missing directories) go.
    let mut parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    while !parent.exists() {
        match parent.parent() {
            Some(p) if !p.as_os_str().is_empty() => parent = p,
            _ => {
                parent = Path::new(".");
                break;
            }
        }
    }
    if !parent.is_dir() {
        return Err(bad(format!("{} is not a directory", parent.display())));
    }
    if !is_dir && path.parent().is_some_and(|p| !p.as_os_str().is_empty() && !p.exists()) {
        return Err(bad(format!("directory {} does not exist", path.parent().unwrap_or(parent).display())));
    }
    let writable_dir = if is_dir && path.is_dir() { path } else { parent };
    let c = std::ffi::CString::new(writable_dir.as_os_str().as_encoded_bytes())
        .map_err(|e| bad(e.to_string()))?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(bad(format!("{} is not writable ({e})", writable_dir.display())));
    }
    Ok(())
}

/// Bytes free to unprivileged writers on the file system holding `path` (or its directory).
pub fn free_space(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer of the struct's size.
    if unsafe { libc::statvfs(c.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded and filled it.
    let stats = unsafe { stats.assume_init() };
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// The process's file-size limit (RLIMIT_FSIZE, `ulimit -f`), if it has one.
pub fn file_size_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(limit.rlim_cur)
}

/// An exclusive advisory lock on a file (created if missing), held until dropped or until the
/// process ends.
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
    remove_on_drop: bool,
}

impl Lock {
    /// Takes the lock without waiting; `Ok(None)` when another process holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<Lock>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
        // Who holds it, for the message another writer gets and for people looking.
        let _ = file.set_len(0);
        let _ = writeln!(&file, "{}", std::process::id());
        Ok(Some(Lock { file, path: path.to_owned(), remove_on_drop: false }))
    }

    /// Removes the lock file when the lock is released (for locks beside a result file rather
    /// than inside a run directory).
    pub fn removed_on_release(mut self) -> Lock {
        self.remove_on_drop = true;
        self
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = std::fs::remove_file(&self.path);
        }
        // SAFETY: unlocking the descriptor this lock owns.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_leave_no_partial() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        write_atomic(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        assert!(!partial_path(&path).exists());
        let missing = dir.path().join("no/such/dir/results.json");
        let e = write_atomic(&missing, b"{}").unwrap_err();
        assert!(format!("{e:#}").contains("no/such/dir/results.json.partial"), "{e:#}");
    }

    #[test]
    fn a_lock_excludes_a_second_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let first = Lock::try_acquire(&path).unwrap().expect("free");
        assert!(Lock::try_acquire(&path).unwrap().is_none());
        drop(first);
        let again = Lock::try_acquire(&path).unwrap().expect("released").removed_on_release();
        drop(again);
        assert!(!path.exists());
    }
}
