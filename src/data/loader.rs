//! The training batch loader: deterministic epochs over a dataset file, augmentation, parallel
//! batch assembly and a prefetching background thread.
//!
//! Everything random is a function of `(seed, epoch, record)`: the order of epoch e is a
//! shuffle drawn from `Rng::for_item(seed, e)`, and the augmentation of record r in epoch e from
//! its own stream. So the batch at a [`Position`] is the same whether it is reached by running
//! from the start or by resuming there: a trainer checkpoints `batch.next` and later calls
//! [`Loader::iter_from`] with it.
//!
//! ```text
//! let cfg = LoaderConfig { batch_size: 5, seed, augment: Augment::standard(), ..Default::default() };
//! let loader = Loader::new("faces.fmlds", cfg)?;
//! for batch in loader.iter_from(resume_position).take(iterations) {
//!     let batch = batch?;                       // images [B,3,S,S], landmarks [B,68,2], confidence [B,68]
//!     let t = batch.to_tensors(&device)?;
//!     ...; checkpoint.position = batch.next;
//! }
//! let val = Loader::new("faces.fmlds", LoaderConfig { split: Some(Split::Val), shuffle: false,
//!                                                     drop_last: false, ..Default::default() })?;
//! for batch in val.iter_epoch(0) { ... }
//! ```

use super::augment::{Augment, apply};
use super::dataset::{Dataset, Record, Split};
use super::landmarks::N_LANDMARKS;
use crate::error::{Error, Result};
use crate::rng::Rng;
use rayon::prelude::*;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Loader settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoaderConfig {
    /// Faces per batch (the paper, Sec. 7: 5).
    pub batch_size: usize,
    /// Shuffle the order every epoch (otherwise record order).
    pub shuffle: bool,
    pub seed: u64,
    pub augment: Augment,
    /// Drop the last, incomplete batch of an epoch (every batch then has `batch_size` faces).
    pub drop_last: bool,
    /// Which records: `Some(Train)`, `Some(Val)`, or `None` for all.
    pub split: Option<Split>,
    /// Batches the background thread prepares ahead (bounded channel).
    pub prefetch: usize,
}

/// The training loader (`fml train`, `fml bench train`): shuffled, full batches of the train
/// split, batch 5 (Sec. 7), no augmentation.
impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 5,
            shuffle: true,
            seed: 0,
            augment: Augment::none(),
            drop_last: true,
            split: Some(Split::Train),
            prefetch: 3,
        }
    }
}

/// Where the loader is (stored in checkpoints, hence defined there).
pub use crate::checkpoint::Position;

/// One batch, as plain vectors (candle-free; see [`Batch::to_tensors`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[B, 3, S, S]` RGB in [0, 1].
    pub images: Vec<f32>,
    /// `[B, 68, 2]` landmarks (u, v) in crop pixel coordinates (after augmentation).
    pub landmarks: Vec<f32>,
    /// `[B, 68]` landmark confidence (0 = missing).
    pub confidence: Vec<f32>,
    /// `[B]` record index in the dataset file of each face.
    pub indices: Vec<usize>,
    /// Crop side S.
    pub size: usize,
    /// Where this batch starts.
    pub position: Position,
    /// Where the next batch starts (save this to resume).
    pub next: Position,
}

/// A batch as candle tensors on one device.
#[derive(Clone, Debug)]
pub struct BatchTensors {
    /// `[B, 3, S, S]` f32.
    pub images: candle_core::Tensor,
    /// `[B, 68, 2]` f32.
    pub landmarks: candle_core::Tensor,
    /// `[B, 68]` f32.
    pub confidence: candle_core::Tensor,
}

impl Batch {
    /// Number of faces B.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Copy to tensors on `device`.
    ///
    /// # Shapes
    /// images `[B, 3, S, S]`, landmarks `[B, 68, 2]`, confidence `[B, 68]`.
    pub fn to_tensors(&self, device: &candle_core::Device) -> Result<BatchTensors> {
        use candle_core::Tensor;
        let (b, s) = (self.len(), self.size);
        Ok(BatchTensors {
            images: Tensor::from_slice(&self.images, (b, 3, s, s), device)?,
            landmarks: Tensor::from_slice(&self.landmarks, (b, N_LANDMARKS, 2), device)?,
            confidence: Tensor::from_slice(&self.confidence, (b, N_LANDMARKS), device)?,
        })
    }
}

struct Inner {
    ds: Dataset,
    cfg: LoaderConfig,
    /// Record indices of the chosen split, ascending.
    items: Vec<usize>,
}

/// Batches from a dataset file. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Loader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("path", &self.inner.ds.path())
            .field("records", &self.inner.items.len())
            .field("config", &self.inner.cfg)
            .finish()
    }
}

/// Salt separating the augmentation streams from the shuffle streams.
const AUGMENT_SALT: u64 = 0x6A09_E667_F3BC_C908;

impl Loader {
    /// Open `path` and check the configuration against it.
    pub fn new(path: impl AsRef<Path>, cfg: LoaderConfig) -> Result<Self> {
        let path = path.as_ref();
        if cfg.batch_size == 0 {
            return Err(Error::invalid("batch_size must be at least 1"));
        }
        cfg.augment.validate()?;
        let ds = Dataset::open(path)?;
        let items = ds.indices(cfg.split);
        if items.is_empty() {
            return Err(Error::invalid(format!(
                "{}: no records in the {} split",
                path.display(),
                split_name(cfg.split)
            )));
        }
        if cfg.drop_last && items.len() < cfg.batch_size {
            return Err(Error::invalid(format!(
                "{}: {} records in the {} split, fewer than the batch size {}: no full batch (lower train.batch \
                 or prepare more faces)",
                path.display(),
                items.len(),
                split_name(cfg.split),
                cfg.batch_size
            )));
        }
        Ok(Loader { inner: Arc::new(Inner { ds, cfg, items }) })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.inner.cfg
    }

    pub fn dataset(&self) -> &Dataset {
        &self.inner.ds
    }

    /// Faces per epoch (records in the split).
    pub fn len(&self) -> usize {
        self.inner.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.items.is_empty()
    }

    /// Crop side S.
    pub fn image_size(&self) -> usize {
        self.inner.ds.size() as usize
    }

    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.len(), self.inner.cfg.batch_size);
        if self.inner.cfg.drop_last { n / b } else { n.div_ceil(b) }
    }

    /// Record indices in the order epoch `epoch` visits them.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order = self.inner.items.clone();
        if self.inner.cfg.shuffle {
            Rng::for_item(self.inner.cfg.seed, epoch).shuffle(&mut order);
        }
        order
    }

    /// The position a batch actually starts at: past the end of an epoch (or, with
    /// `drop_last`, where no full batch fits) it is the start of the next epoch.
    pub fn normalize(&self, pos: Position) -> Position {
        let (n, b) = (self.len(), self.inner.cfg.batch_size);
        let fits = if self.inner.cfg.drop_last { pos.index + b <= n } else { pos.index < n };
        if fits { pos } else { Position { epoch: pos.epoch + 1, index: 0 } }
    }

    /// Assemble the batch at `pos` (normalised first), faces in parallel.
    pub fn batch_at(&self, pos: Position) -> Result<Batch> {
        let pos = self.normalize(pos);
        self.batch_in(&self.epoch_order(pos.epoch), pos)
    }

    /// The batch at normalised `pos` given that epoch's order (the iterator caches the order:
    /// reshuffling a large split for every batch would cost more than the batch).
    fn batch_in(&self, order: &[usize], pos: Position) -> Result<Batch> {
        let end = (pos.index + self.inner.cfg.batch_size).min(order.len());
        self.assemble(&order[pos.index..end], pos, Position { epoch: pos.epoch, index: end })
    }

    fn assemble(&self, records: &[usize], position: Position, next: Position) -> Result<Batch> {
        let inner = &*self.inner;
        let s = self.image_size();
        let b = records.len();
        let mut batch = Batch {
            images: vec![0.0; b * 3 * s * s],
            landmarks: vec![0.0; b * N_LANDMARKS * 2],
            confidence: vec![0.0; b * N_LANDMARKS],
            indices: records.to_vec(),
            size: s,
            position,
            next: self.normalize(next),
        };
        let epoch_key = Rng::for_item(inner.cfg.seed ^ AUGMENT_SALT, position.epoch).next_u64();
        batch
            .images
            .par_chunks_mut(3 * s * s)
            .zip(batch.landmarks.par_chunks_mut(N_LANDMARKS * 2))
            .zip(batch.confidence.par_chunks_mut(N_LANDMARKS))
            .zip(records.par_iter())
            .try_for_each(|(((img, lm), conf), &r)| -> Result<()> {
                let rec: Record = inner.ds.read(r)?;
                let draw = inner.cfg.augment.draw(&mut Rng::for_item(epoch_key, r as u64));
                apply(&rec, s, &draw, img, lm, conf);
                Ok(())
            })?;
        Ok(batch)
    }

    /// Prefetching iterator over batches from `start` on, endlessly across epochs.
    pub fn iter_from(&self, start: Position) -> BatchIter {
        BatchIter::spawn(self.clone(), start, None)
    }

    /// Prefetching iterator over the batches of one epoch (e.g. a validation pass).
    pub fn iter_epoch(&self, epoch: u64) -> BatchIter {
        BatchIter::spawn(self.clone(), Position { epoch, index: 0 }, Some(epoch))
    }
}

/// Batches prepared on a background thread, `prefetch` ahead. Items are `Result`s: a damaged
/// record ends the stream with its error. Dropping the iterator stops the thread.
pub struct BatchIter {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
}

impl BatchIter {
    fn spawn(loader: Loader, start: Position, only_epoch: Option<u64>) -> BatchIter {
        let (tx, rx): (SyncSender<Result<Batch>>, _) = sync_channel(loader.inner.cfg.prefetch.max(1));
        let handle = std::thread::Builder::new()
            .name("fml-loader".into())
            .spawn(move || {
                let mut pos = loader.normalize(start);
                let mut order: (u64, Vec<usize>) = (pos.epoch, loader.epoch_order(pos.epoch));
                loop {
                    if only_epoch.is_some_and(|e| pos.epoch != e) {
                        break;
                    }
                    if order.0 != pos.epoch {
                        order = (pos.epoch, loader.epoch_order(pos.epoch));
                    }
                    let batch = loader.batch_in(&order.1, pos);
                    let (next, failed) = match &batch {
                        Ok(b) => (b.next, false),
                        Err(_) => (pos, true),
                    };
                    // A closed channel means the consumer is gone: stop.
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                    pos = next;
                }
            })
            .expect("spawning the loader thread");
        BatchIter { rx: Some(rx), handle: Some(handle) }
    }
}

impl Iterator for BatchIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail; it then exits after at most
        // the batch it is assembling.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Loader throughput in images per second for `path` with `batch_size`, standard augmentation
/// and shuffling, measured through the prefetching iterator for about two seconds after one
/// warm-up batch. For `fml bench` and the `loader` bench target.
pub fn bench_loader(path: impl AsRef<Path>, batch_size: usize) -> Result<f64> {
    bench_loader_with(path, batch_size, Augment::standard())
}

/// [`bench_loader`] with a chosen augmentation.
pub fn bench_loader_with(path: impl AsRef<Path>, batch_size: usize, augment: Augment) -> Result<f64> {
    let cfg = LoaderConfig { batch_size, augment, split: None, drop_last: false, ..LoaderConfig::default() };
    let loader = Loader::new(path, cfg)?;
    let mut it = loader.iter_from(Position::default());
    it.next().transpose()?;
    let start = std::time::Instant::now();
    let (mut images, mut batches) = (0usize, 0usize);
    while start.elapsed().as_secs_f64() < 2.0 || batches < 5 {
        match it.next() {
            Some(b) => {
                images += b?.len();
                batches += 1;
            }
            None => break,
        }
    }
    Ok(images as f64 / start.elapsed().as_secs_f64())
}

/// "train", "validation" or "whole" (no split) for messages.
fn split_name(split: Option<Split>) -> &'static str {
    match split {
        Some(Split::Train) => "train",
        Some(Split::Val) => "validation",
        None => "whole",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::write_synthetic;

    fn dataset(n: usize, size: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.fmlds");
        write_synthetic(&p, n, size, 11).unwrap();
        (dir, p)
    }

    fn cfg(batch_size: usize) -> LoaderConfig {
        LoaderConfig { batch_size, split: None, seed: 5, ..LoaderConfig::default() }
    }

    #[test]
    fn shuffles_are_deterministic_per_seed_and_epoch() {
        let (_d, p) = dataset(40, 8);
        let a = Loader::new(&p, cfg(4)).unwrap();
        let b = Loader::new(&p, cfg(4)).unwrap();
        assert_eq!(a.epoch_order(0), b.epoch_order(0));
        assert_ne!(a.epoch_order(0), a.epoch_order(1));
        let c = Loader::new(&p, LoaderConfig { seed: 6, ..cfg(4) }).unwrap();
        assert_ne!(a.epoch_order(0), c.epoch_order(0));
        let mut sorted = a.epoch_order(3);
        sorted.sort();
        assert_eq!(sorted, (0..40).collect::<Vec<_>>());
        let plain = Loader::new(&p, LoaderConfig { shuffle: false, ..cfg(4) }).unwrap();
        assert_eq!(plain.epoch_order(7), (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn epochs_cover_every_record_and_resume_is_exact() {
        let (_d, p) = dataset(23, 8);
        let aug = LoaderConfig { augment: Augment::standard(), prefetch: 2, ..cfg(5) };
        let loader = Loader::new(&p, aug.clone()).unwrap();
        assert_eq!(loader.batches_per_epoch(), 4);
        let run: Vec<Batch> = loader.iter_from(Position::default()).take(10).map(|b| b.unwrap()).collect();
        // Epoch 0: four full batches of distinct records, then epoch 1 starts.
        let mut seen: Vec<usize> = run[..4].iter().flat_map(|b| b.indices.clone()).collect();
        assert!(run.iter().all(|b| b.len() == 5));
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 20);
        assert_eq!(run[4].position, Position { epoch: 1, index: 0 });
        assert_eq!(run[3].next, Position { epoch: 1, index: 0 });
        // Resuming at batch 6's position from a fresh loader gives the same batches.
        let again = Loader::new(&p, aug).unwrap();
        let resumed: Vec<Batch> = again.iter_from(run[5].next).take(4).map(|b| b.unwrap()).collect();
        assert_eq!(resumed, run[6..10].to_vec());
        assert_eq!(again.batch_at(run[2].position).unwrap(), run[2]);

        // Without drop_last the epoch ends with a short batch.
        let keep = Loader::new(&p, LoaderConfig { drop_last: false, ..cfg(5) }).unwrap();
        let ep: Vec<Batch> = keep.iter_epoch(2).map(|b| b.unwrap()).collect();
        assert_eq!(ep.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![5, 5, 5, 5, 3]);
        assert_eq!(ep[4].next, Position { epoch: 3, index: 0 });
    }

    #[test]
    fn splits_and_bad_configs() {
        let (_d, p) = dataset(20, 8);
        let val = Loader::new(&p, LoaderConfig { split: Some(Split::Val), batch_size: 1, ..cfg(1) }).unwrap();
        assert_eq!(val.len(), 2);
        let train = Loader::new(&p, LoaderConfig { split: Some(Split::Train), ..cfg(1) }).unwrap();
        assert_eq!(train.len(), 18);
        assert!(Loader::new(&p, cfg(0)).is_err());
        let e = Loader::new(&p, LoaderConfig { split: Some(Split::Val), ..cfg(5) }).err().unwrap().to_string();
        assert!(e.contains("2 records in the validation split") && e.contains("no full batch"), "{e}");
        let bad_aug = LoaderConfig { augment: Augment { flip_prob: -1.0, ..Augment::none() }, ..cfg(2) };
        assert!(Loader::new(&p, bad_aug).is_err());
    }

    #[test]
    fn no_augmentation_returns_stored_data_and_tensors_have_shapes() {
        let (_d, p) = dataset(6, 8);
        let loader = Loader::new(&p, LoaderConfig { shuffle: false, ..cfg(3) }).unwrap();
        let b = loader.batch_at(Position { epoch: 0, index: 3 }).unwrap();
        assert_eq!(b.indices, vec![3, 4, 5]);
        let rec = loader.dataset().read(4).unwrap();
        assert_eq!(b.images[3 * 64 + 9], rec.image[9 * 3] as f32 / 255.0);
        assert_eq!(b.landmarks[136 + 2 * 7], rec.landmarks[7][0]);
        let t = b.to_tensors(&candle_core::Device::Cpu).unwrap();
        assert_eq!(t.images.dims(), &[3, 3, 8, 8]);
        assert_eq!(t.landmarks.dims(), &[3, 68, 2]);
        assert_eq!(t.confidence.dims(), &[3, 68]);
    }

    #[test]
    fn damaged_record_surfaces_as_an_error_item() {
        let (_d, p) = dataset(4, 8);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[8 + 5] ^= 0xFF; // record 0
        std::fs::write(&p, &bytes).unwrap();
        let loader = Loader::new(&p, LoaderConfig { shuffle: false, ..cfg(2) }).unwrap();
        let items: Vec<Result<Batch>> = loader.iter_from(Position::default()).collect();
        assert_eq!(items.len(), 1);
        let e = items[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("d.fmlds") && e.contains("record 0"), "{e}");
    }
}
