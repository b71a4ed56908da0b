//! Loader throughput: writes a synthetic 240 px dataset to a temporary folder and prints the
//! images/s that `fml::data::bench_loader` measures (standard augmentation, shuffling,
//! prefetching). Run with `cargo bench --bench loader`.

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.fmlds");
    let count = 512;
    fml::data::dataset::write_synthetic(&path, count, 240, 1)?;
    println!("dataset: {count} synthetic faces of 240x240 in {}", path.display());
    println!("threads: {} (rayon)", rayon::current_num_threads());
    for batch in [5, 32] {
        let ips = fml::data::bench_loader(&path, batch)?;
        println!("batch {batch:>3}, standard augmentation: {ips:>8.0} images/s");
    }
    let ips = fml::data::loader::bench_loader_with(&path, 32, fml::data::Augment::none())?;
    println!("batch  32, no augmentation:       {ips:>8.0} images/s");
    Ok(())
}
