//! Checkpoints: every learned tensor (encoder weights, corrective bases), the optimiser state and
//! the bookkeeping a resumed run needs (step, loader position, RNG state), in one safetensors
//! file written atomically — a crash leaves the previous checkpoint intact.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// File name of a run's checkpoint.
pub const FILE: &str = "checkpoint.safetensors";
/// Metadata key holding [`Meta`] as JSON.
pub const META_KEY: &str = "fml_checkpoint";

/// The checkpoint layout this build writes and reads ([`Meta::format_version`]).
pub const FORMAT_VERSION: u32 = 1;

/// Bookkeeping stored beside the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format_version: u32,
    /// "pretrain" or "finetune".
    pub stage: String,
    /// Completed optimisation steps.
    pub step: u64,
    /// The loader position of the next batch.
    pub loader: Position,
    /// Seed of every random choice of the run. All randomness (shuffling, augmentation) is
    /// counter-based — a function of (seed, epoch, record) — so seed plus loader position is
    /// the complete RNG state.
    pub seed: u64,
    /// Sizes the weights were trained for, checked on load.
    pub num_vertices: usize,
    pub num_outputs: usize,
    pub correctives: usize,
    /// Identity, expression and reflectance modes of the base model the head regresses, checked
    /// when finetuning starts from this checkpoint (absent in checkpoints written before it was
    /// recorded: then only `num_outputs` is checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modes: Option<[usize; 3]>,
    /// Finetuning runs: the pretraining checkpoint they started from (`fml finetune --from`,
    /// made absolute), kept across `--resume`; what `fml eval --base-checkpoint` wants for Sec.
    /// 7's comparison of the levels. Absent for pretraining runs and older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetuned_from: Option<PathBuf>,
    /// Training runs: records in the dataset's train and validation splits, compared on
    /// `--resume` (the loader position means nothing in another dataset). Absent in exports and
    /// older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<[usize; 2]>,
}

/// Where a data loader is: `index` faces of epoch `epoch` have been delivered. Defined here,
/// beside the checkpoint that stores it, and used by `data::loader`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub index: usize,
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub meta: Meta,
    pub tensors: HashMap<String, Tensor>,
    /// The file it was read from (named by errors about its contents).
    pub path: PathBuf,
}

/// Save the variables of `varmap` plus `extra` tensors (optimiser state) and `meta`, atomically.
pub fn save(path: &Path, varmap: &VarMap, extra: &[(String, Tensor)], meta: &Meta) -> Result<()> {
    crate::io::write_atomic_bytes(path, &to_bytes(path, varmap, extra, meta)?)
}

/// The file [`save`] writes, as bytes (to stage it with other files); `path` names it in errors.
pub fn to_bytes(path: &Path, varmap: &VarMap, extra: &[(String, Tensor)], meta: &Meta) -> Result<Vec<u8>> {
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        tensors.insert(name.clone(), var.as_tensor().to_device(&Device::Cpu)?);
    }
    for (name, t) in extra {
        tensors.insert(name.clone(), t.to_device(&Device::Cpu)?);
    }
    let mut info = HashMap::new();
    info.insert(META_KEY.to_string(), serde_json::to_string(meta).expect("meta serialises"));
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(info))
        .map_err(|e| Error::format(path, format!("serialising the checkpoint: {e}")))?;
    Ok(bytes)
}

/// Load a checkpoint onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("not a checkpoint (bad safetensors header: {e})")))?;
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| Error::format(path, format!("no {META_KEY} metadata: not an fml checkpoint")))?;
    let meta: Meta =
        serde_json::from_str(meta_json).map_err(|e| Error::format(path, format!("bad {META_KEY} metadata: {e}")))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(Error::format(
            path,
            format!(
                "checkpoint format version {} (this fml reads version {FORMAT_VERSION}): written by another fml release",
                meta.format_version
            ),
        ));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| Error::format(path, format!("reading tensors: {e}")))?;
    for (name, t) in &tensors {
        // Every tensor fml writes (weights, bases, optimiser state) is f32; another dtype would
        // fail far from the file, inside an operation.
        if t.dtype() != candle_core::DType::F32 {
            return Err(Error::format(path, format!("tensor {name} is {:?}, expected F32", t.dtype())));
        }
        let s = t
            .to_dtype(candle_core::DType::F64)
            .and_then(|t| t.sum_all()?.to_scalar::<f64>())
            .map_err(|e| Error::format(path, format!("tensor {name}: {e}")))?;
        if !s.is_finite() {
            return Err(Error::format(path, format!("tensor {name} holds NaN or infinite values")));
        }
    }
    Ok(Checkpoint { meta, tensors, path: path.to_path_buf() })
}

/// Check that every variable of `varmap` under `prefixes` came from the checkpoint: a tensor
/// missing from the file would otherwise keep its fresh initial value without a word.
pub fn check_complete(ckpt: &Checkpoint, varmap: &VarMap, prefixes: &[&str]) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut missing: Vec<&String> =
        data.keys().filter(|k| prefixes.iter().any(|p| k.starts_with(p)) && !ckpt.tensors.contains_key(*k)).collect();
    missing.sort();
    match missing.as_slice() {
        [] => Ok(()),
        m => Err(Error::format(
            &ckpt.path,
            format!("missing tensor(s) {}", m.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
        )),
    }
}

/// Put the checkpoint's tensors whose names start with one of `prefixes` into `varmap`
/// (creating or overwriting variables).
pub fn restore_vars(ckpt: &Checkpoint, varmap: &VarMap, prefixes: &[&str]) -> Result<usize> {
    let mut data = varmap.data().lock().expect("varmap lock");
    let mut n = 0;
    for (name, t) in &ckpt.tensors {
        if prefixes.iter().any(|p| name.starts_with(p)) {
            match data.get(name) {
                Some(v) => {
                    if v.dims() != t.dims() {
                        return Err(Error::format(
                            &ckpt.path,
                            format!("tensor {name} has shape {:?}, the model has {:?}", t.dims(), v.dims()),
                        ));
                    }
                    v.set(t).map_err(|e| Error::format(&ckpt.path, format!("restoring {name}: {e}")))?;
                }
                None => {
                    let var = candle_core::Var::from_tensor(t)
                        .map_err(|e| Error::format(&ckpt.path, format!("restoring {name}: {e}")))?;
                    data.insert(name.clone(), var);
                }
            }
            n += 1;
        }
    }
    Ok(n)
}
