//! File output helpers shared by every command: atomic writes and mesh formats.

pub mod atomic;
pub mod mesh;

pub use atomic::{WriteGroup, create_dir, probe_writable, write_atomic, write_atomic_bytes};
