//! The `fml` command-line program: parses arguments and reports errors with their cause chain.

use std::io::Write;
use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    // candle's element-wise CPU ops use a spin-barrier pool of their own beside rayon (which gemm
    // and our kernels use); two pools oversubscribe small machines and the spinning dominates.
    // One candle worker unless the user chose otherwise (see .cargo/config.toml).
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: first statement of main, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let args = <cli::Cli as clap::Parser>::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Print the full cause chain, skipping causes already quoted by their parent.
            let mut shown = e.to_string();
            let _ = writeln!(std::io::stderr(), "error: {shown}");
            for cause in e.chain().skip(1) {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    let _ = writeln!(std::io::stderr(), "  caused by: {text}");
                }
                shown = text;
            }
            ExitCode::FAILURE
        }
    }
}
