//! Ctrl-C during training: the first SIGINT (or SIGTERM, what job schedulers send before they
//! kill) asks the loop to stop after the step in flight and write a checkpoint (so `--resume`
//! loses nothing); a second one exits at once.
//!
//! The flag is process-wide, so only the command-line program installs the handler; library
//! users (and tests, which train in parallel threads) never see it set.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// Whether a stop was requested (by SIGINT or [`request_stop`]).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Ask a running training loop to stop after its current step, with a checkpoint.
pub fn request_stop() {
    STOP.store(true, Ordering::Relaxed);
}

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    // Only async-signal-safe calls here: an atomic swap, write(2) and _exit(2).
    if STOP.swap(true, Ordering::Relaxed) {
        // SAFETY: _exit is async-signal-safe; 130 = 128 + SIGINT, the shell's convention.
        unsafe { libc::_exit(130) };
    }
    let msg = b"\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again quits at once)\n";
    // SAFETY: write(2) on stderr with a valid buffer is async-signal-safe; a failure is ignored.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Route SIGINT and SIGTERM to [`request_stop`] (Unix; elsewhere Ctrl-C keeps its default and a
/// run resumes from its last periodic checkpoint).
pub fn install_signal_handlers() {
    #[cfg(unix)]
    // SAFETY: the handler only touches an atomic and calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}
