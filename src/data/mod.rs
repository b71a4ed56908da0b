//! Training data: landmark files, image reading, face crops, the packed dataset file written by
//! `fml prepare`, and the batch loader the trainer reads it with.
//!
//! Flow: [`prepare::prepare`] reads images + landmarks ([`landmarks`], in the schemes of [`scheme`], [`image`]), crops faces
//! ([`crop`]) and writes one `.fmlds` file ([`dataset`]); [`loader::Loader`] serves
//! augmented ([`augment`]) batches from it. Nothing here depends on candle except
//! [`loader::Batch::to_tensors`].

pub mod augment;
pub mod crop;
pub mod dataset;
pub mod image;
pub mod landmarks;
pub mod loader;
pub mod prepare;
pub mod scheme;

pub use augment::Augment;
pub use dataset::{Dataset, Split};
pub use landmarks::{LandMap, Landmarks68, read_land, read_landmark_file, read_manifest, read_pts, write_pts};
pub use loader::{Batch, BatchIter, Loader, LoaderConfig, Position, bench_loader};
pub use prepare::{PrepareConfig, PrepareReport, SkipReason, prepare};
