//! File helpers shared by every command: atomic writes, text reading, path identity (outputs never over inputs) and mesh formats.

pub mod atomic;
pub mod mesh;

pub use atomic::{WriteGroup, create_dir, probe_writable, write_atomic, write_atomic_bytes};

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A path made comparable with others that name the same file: absolute, `.` and `..` resolved,
/// symbolic links followed for the part that exists.
pub fn same_file_key(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    // Not there yet (an output): canonicalise its folder.
    match (p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).canonicalize(), p.file_name()) {
        (Ok(d), Some(n)) => d.join(n),
        _ => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
    }
}

/// A text file as a string: UTF-8 (an error naming the file and the first bad byte otherwise),
/// a leading byte-order mark dropped (Windows editors write one; parsers would read it as part
/// of the first token).
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut text = String::from_utf8(bytes)
        .map_err(|e| Error::format(path, format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to())))?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// Refuses an output that names the same file as one of `inputs` (an atomic write would
/// replace the input after it was read, losing it silently). `what` names the output in the
/// message ("output", "mesh").
pub fn refuse_overwrite<'a>(what: &str, output: &Path, inputs: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    let key = same_file_key(output);
    for input in inputs {
        if same_file_key(input) == key {
            return Err(Error::invalid(format!(
                "{what} {} would overwrite the input {}: choose another output path",
                output.display(),
                input.display()
            )));
        }
    }
    Ok(())
}
