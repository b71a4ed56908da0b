//! Atomic file writes: write to a temporary file beside the target, fsync, then rename.
//!
//! A crash or Ctrl-C in the middle of a write leaves either the old file or the new one,
//! never a truncated mix; checkpoints and outputs all go through here.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A temporary name beside `path`, unique per process and per call, so that threads writing the
/// same target (batch reconstruction with duplicate stems) never share a temporary file.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = format!(".{name}.tmp-{}-{n}", std::process::id());
    path.with_file_name(tmp)
}

/// Make a rename in `dir` durable (the directory entry itself). Unix only; elsewhere, and on
/// file systems that refuse to open directories, the rename is atomic but its durability is
/// the OS's, so a failure here is not an error.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Create the folder `dir` and its parents. When a path component is an existing file the error
/// says so, instead of the OS's "File exists" / "Not a directory".
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| match dir.ancestors().find(|a| !a.as_os_str().is_empty() && a.is_file()) {
        Some(file) => Error::invalid(format!(
            "cannot create the folder {}: {} is a file, not a folder",
            dir.display(),
            file.display()
        )),
        None => Error::io(dir, e),
    })
}

/// Write `path` atomically with the bytes produced by `fill`.
///
/// The parent directory is created if missing. On any error the temporary file is removed and
/// the previous contents of `path` (if any) are untouched.
pub fn write_atomic<F>(path: impl AsRef<Path>, fill: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let mut group = WriteGroup::new();
    group.stage(path, fill)?;
    group.commit()
}

/// Write a byte slice to `path` atomically.
pub fn write_atomic_bytes(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Files that belong together (a mesh with its parameter record and overlay; a model with its
/// mesh), written all or none: each is staged to a temporary file beside its target, and only
/// once every one is staged are they renamed into place. A failure while staging (a bad path,
/// a full disk) leaves every target as it was; dropping an uncommitted group removes its
/// temporary files.
#[derive(Default)]
pub struct WriteGroup {
    /// (temporary file, target), in staging order.
    staged: Vec<(PathBuf, PathBuf)>,
}

impl WriteGroup {
    pub fn new() -> Self {
        WriteGroup::default()
    }

    /// Write `path`'s new contents to a temporary file beside it (creating the folder).
    pub fn stage<F>(&mut self, path: impl AsRef<Path>, fill: F) -> Result<()>
    where
        F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
    {
        let path = path.as_ref();
        if path.is_dir() {
            return Err(Error::invalid(format!("{}: is a folder, not a file", path.display())));
        }
        // Two files of one group at one path: the later would silently replace the earlier.
        let key = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        if self.staged.iter().any(|(_, t)| key(t) == key(path)) {
            return Err(Error::invalid(format!(
                "{}: given for two outputs at once; choose different paths",
                path.display()
            )));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dir(parent)?;
        }
        let tmp = temp_path(path);
        // The OS's message for a failed create names no file and can mislead ("No such file or
        // directory" for a folder that exists but takes no new files, as /proc), so say what failed.
        let file = File::create(&tmp).map_err(|e| {
            Error::invalid(format!("{}: cannot create a file in {}: {e}", path.display(), folder_of(path).display()))
        })?;
        let result = (|| -> std::io::Result<()> {
            let mut w = BufWriter::new(file);
            fill(&mut w)?;
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(path, e));
        }
        self.staged.push((tmp, path.to_path_buf()));
        Ok(())
    }

    /// Stage a byte slice as `path`'s new contents.
    pub fn stage_bytes(&mut self, path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
        self.stage(path, |w| w.write_all(bytes))
    }

    /// Rename every staged file into place, in staging order. (A rename itself failing midway,
    /// which staging beside the target makes unlikely, leaves the files before it replaced.)
    pub fn commit(mut self) -> Result<()> {
        let staged = std::mem::take(&mut self.staged);
        for (i, (tmp, path)) in staged.iter().enumerate() {
            if let Err(e) = std::fs::rename(tmp, path) {
                for (t, _) in &staged[i..] {
                    let _ = std::fs::remove_file(t);
                }
                return Err(Error::io(path, e));
            }
            sync_dir(folder_of(path));
        }
        Ok(())
    }
}

impl Drop for WriteGroup {
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// The folder a file path lies in ("." for a bare file name).
fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Check, before long work, that `path` can be written at its end: it is not a folder and a file
/// can be created beside it (the folder is created if missing, as the write would). Nothing is
/// left behind but that folder.
pub fn probe_writable(path: &Path) -> Result<()> {
    // Dropped uncommitted: the temporary file goes, the target is untouched.
    WriteGroup::new().stage_bytes(path, b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_keeps_old_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic_bytes(&p, b"old").unwrap();
        let err = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        // No temporary file is left behind.
        let n = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_group_is_written_all_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.obj"), dir.path().join("b.json"));
        write_atomic_bytes(&a, b"old").unwrap();
        // The second file cannot be staged (its path is a folder): the first keeps its old contents.
        std::fs::create_dir(&b).unwrap();
        let mut g = WriteGroup::new();
        g.stage_bytes(&a, b"new").unwrap();
        let e = g.stage_bytes(&b, b"{}").unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        drop(g);
        assert_eq!(std::fs::read(&a).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "temporary files left");
        // One path twice in a group is refused.
        let mut g = WriteGroup::new();
        g.stage_bytes(&a, b"1").unwrap();
        let e = g.stage_bytes(dir.path().join("./a.obj"), b"2").unwrap_err().to_string();
        assert!(e.contains("two outputs"), "{e}");
        drop(g);
        assert_eq!(std::fs::read(&a).unwrap(), b"old");
        // Both stageable: both written.
        std::fs::remove_dir(&b).unwrap();
        let mut g = WriteGroup::new();
        g.stage_bytes(&a, b"new").unwrap();
        g.stage_bytes(&b, b"{}").unwrap();
        g.commit().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"new");
        assert_eq!(std::fs::read(&b).unwrap(), b"{}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn probing_a_path_leaves_nothing_and_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        probe_writable(&dir.path().join("sub/out.json")).unwrap();
        assert!(!dir.path().join("sub/out.json").exists());
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 0);
        let e = probe_writable(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        #[cfg(target_os = "linux")]
        {
            let e = probe_writable(Path::new("/proc/fml-probe.json")).unwrap_err().to_string();
            assert!(e.contains("cannot create a file in /proc"), "{e}");
        }
    }

    #[test]
    fn a_file_in_the_way_of_a_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "x").unwrap();
        let e = write_atomic_bytes(file.join("sub/out.obj"), b"v").unwrap_err().to_string();
        assert!(e.contains("config.toml is a file, not a folder"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn concurrent_writers_of_one_target_leave_one_whole_file() {
        // Each writer has its own temporary file, so the survivor is one writer's whole output.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("same.bin");
        std::thread::scope(|s| {
            for k in 0..8u8 {
                let p = &p;
                s.spawn(move || write_atomic_bytes(p, &vec![k; 1 << 16]).unwrap());
            }
        });
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 1 << 16);
        assert!(bytes.iter().all(|&b| b == bytes[0]), "mixed writers");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary files left");
    }
}
