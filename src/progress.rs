//! Progress of long work on stderr, shared by every command: an indicatif bar on a terminal,
//! plain log lines (about every 5 %) when stderr is a file or a pipe, nothing when switched off.
//!
//! indicatif hides its bar when stderr is not a terminal, so without the plain lines a job run
//! under nohup, CI or a cluster scheduler would print nothing for hours.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

enum Kind {
    Off,
    Bar(indicatif::ProgressBar),
    /// Plain lines; holds the count printed last.
    Lines(Mutex<usize>),
}

/// Progress of `total` units of work, updated from any thread.
pub struct Progress {
    label: String,
    unit: String,
    total: usize,
    done: AtomicUsize,
    failed: AtomicUsize,
    kind: Kind,
}

impl Progress {
    /// A progress report `label: done/total unit` (nothing at all when `show` is false).
    pub fn new(label: &str, unit: &str, total: usize, show: bool) -> Self {
        let kind = if !show {
            Kind::Off
        } else if std::io::stderr().is_terminal() {
            let bar =
                indicatif::ProgressBar::with_draw_target(Some(total as u64), indicatif::ProgressDrawTarget::stderr());
            let template = format!("{label} [{{bar:40}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}} {{msg}}");
            if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            Kind::Bar(bar)
        } else {
            Kind::Lines(Mutex::new(0))
        };
        Progress {
            label: label.into(),
            unit: unit.into(),
            total,
            done: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            kind,
        }
    }

    /// `n` more units done.
    pub fn inc(&self, n: usize) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        self.show(done);
    }

    /// `n` more units failed (counted in the report; call [`inc`](Self::inc) for them too).
    pub fn fail(&self, n: usize) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }

    fn show(&self, done: usize) {
        let failed = self.failed.load(Ordering::Relaxed);
        match &self.kind {
            Kind::Off => {}
            Kind::Bar(bar) => {
                bar.set_position(done as u64);
                if failed > 0 {
                    bar.set_message(format!("{failed} failed"));
                }
            }
            Kind::Lines(last) => {
                let step = (self.total / 20).max(1);
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                if done / step > *last / step || (done >= self.total && *last < self.total) {
                    *last = done;
                    let failed = if failed > 0 { format!(", {failed} failed") } else { String::new() };
                    // Not eprintln!: a closed stderr must not stop the work it reports on.
                    let _ = writeln!(std::io::stderr(), "{}: {done}/{} {}{failed}", self.label, self.total, self.unit);
                }
            }
        }
    }

    /// Remove the bar (the plain lines stay in the log).
    pub fn finish(&self) {
        if let Kind::Bar(bar) = &self.kind {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads() {
        let p = Progress::new("test", "items", 1000, false);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..250).for_each(|_| p.inc(1)));
            }
        });
        p.fail(3);
        assert_eq!(p.done.load(Ordering::Relaxed), 1000);
        assert_eq!(p.failed.load(Ordering::Relaxed), 3);
        p.finish();
    }
}
