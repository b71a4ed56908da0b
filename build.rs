//! Build script: with feature `cuda`, compile `kernels/*.cu` to PTX with nvcc (sm_90 unless
//! CUDA_COMPUTE_CAP says otherwise); the default CPU build needs no CUDA toolkit at all.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for src in sources {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let ptx = out.join(format!("{stem}.ptx"));
        let status = Command::new(&nvcc)
            // No --use_fast_math: approximate sqrt/div/rsqrt would make the kernels differ from
            // their CPU twins by more than rounding, and these kernels are memory-bound, so the
            // IEEE versions cost little.
            .args(["-ptx", "-O3", &format!("-arch=sm_{cap}")])
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| panic!("feature `cuda` needs nvcc ({nvcc}): {e}. See README (GPU build)."));
        assert!(status.success(), "nvcc failed on {}", src.display());
    }
}
