//! Hugging Face style model folders (`--model DIR`): `config.json`, the weights in
//! `model.safetensors` or sharded as `model-0000i-of-0000n.safetensors` with
//! `model.safetensors.index.json` (whose `weight_map` says which shard holds each tensor), and
//! optionally `tokenizer.json`. The folder is only read, never written.

use crate::inputs::{convert_inputs, InputError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tttc_ir::Program;
use tttc_runtime::{ElemType, Tensor, TensorFile};

/// The single-file weights' name.
pub const WEIGHTS: &str = "model.safetensors";
/// The index of sharded weights.
pub const INDEX: &str = "model.safetensors.index.json";
/// The config's name.
pub const CONFIG: &str = "config.json";
/// The tokenizer's name.
pub const TOKENIZER: &str = "tokenizer.json";

/// Why a model folder cannot be used (every one the user's to fix; each names the file).
#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    /// The folder does not exist or is not a directory.
    #[error("model folder {0}: not a directory")]
    NotADirectory(String),
    /// No `config.json`.
    #[error("model folder {dir}: missing {path}")]
    NoConfig {
        /// The folder.
        dir: String,
        /// The config's path.
        path: String,
    },
    /// Neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("model folder {0}: no weights (expected {WEIGHTS}, or {INDEX} and its shards)")]
    NoWeights(String),
    /// The index cannot be read or does not parse.
    #[error("{path}: {message}")]
    Index {
        /// The index file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A shard the index names is not there.
    #[error("{index} names the shard {shard}, which does not exist")]
    MissingShard {
        /// The index file.
        index: String,
        /// The shard's path.
        shard: String,
    },
    /// A shard lacks a tensor the index puts in it.
    #[error("{index} says {shard} holds `{tensor}`, but it does not")]
    MissingTensor {
        /// The index file.
        index: String,
        /// The shard's path.
        shard: String,
        /// The tensor.
        tensor: String,
    },
    /// A weights file cannot be read or its tensors do not fit the program.
    #[error(transparent)]
    Weights(#[from] InputError),
}

/// A model folder's files, found and checked to exist (nothing read yet).
#[derive(Clone, Debug)]
pub struct ModelDir {
    /// The folder.
    pub dir: PathBuf,
    /// Its `config.json`.
    pub config: PathBuf,
    /// Its `tokenizer.json`, when there is one.
    pub tokenizer: Option<PathBuf>,
    weights: Weights,
}

#[derive(Clone, Debug)]
enum Weights {
    Single(PathBuf),
    Sharded(PathBuf),
}

impl ModelDir {
    /// Finds the files of the model folder `dir`.
    pub fn open(dir: &Path) -> Result<ModelDir, ModelDirError> {
        if !dir.is_dir() {
            return Err(ModelDirError::NotADirectory(dir.display().to_string()));
        }
        let config = dir.join(CONFIG);
        if !config.is_file() {
            return Err(ModelDirError::NoConfig {
                dir: dir.display().to_string(),
                path: config.display().to_string(),
            });
        }
        let single = dir.join(WEIGHTS);
        let index = dir.join(INDEX);
        let weights = if single.is_file() {
            Weights::Single(single)
        } else if index.is_file() {
            Weights::Sharded(index)
        } else {
            return Err(ModelDirError::NoWeights(dir.display().to_string()));
        };
        let tokenizer = Some(dir.join(TOKENIZER)).filter(|t| t.is_file());
        Ok(ModelDir {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            weights,
        })
    }

    /// The weights files: the single file, or the index and then every shard it names.
    pub fn weight_files(&self) -> Result<Vec<PathBuf>, ModelDirError> {
        match &self.weights {
            Weights::Single(p) => Ok(vec![p.clone()]),
            Weights::Sharded(index) => {
                let mut files = vec![index.clone()];
                files.extend(read_index(index)?.into_keys().map(|s| self.dir.join(s)));
                Ok(files)
            }
        }
    }

    /// Reads every weight for `program` (integer tensors converted to `elem`, as
    /// [`crate::read_inputs`] does), calling `progress(done, total)` after each file.
    ///
    /// The floating-point weights view the memory-mapped files in place (nothing is copied;
    /// the files are only read). Also returns the names of the weights that had to be copied
    /// instead (their bytes are not aligned for their element type in the file), in order.
    pub fn read_weights(
        &self,
        program: &Program,
        elem: ElemType,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(BTreeMap<String, Tensor>, Vec<String>), ModelDirError> {
        let file = match &self.weights {
            Weights::Single(path) => {
                let file = tttc_runtime::read_safetensors_with_ints(path)
                    .map_err(|e| ModelDirError::Weights(e.into()))?;
                progress(1, 1);
                file
            }
            Weights::Sharded(index) => self.read_shards(index, progress)?,
        };
        let copied = file.copied.clone();
        Ok((convert_inputs(program, file, elem)?, copied))
    }

    /// The tensors of every shard `index` names, each checked to hold what the index says.
    fn read_shards(
        &self,
        index: &Path,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<TensorFile, ModelDirError> {
        let shards = read_index(index)?;
        // Every shard must be there before any is read.
        for shard in shards.keys() {
            let path = self.dir.join(shard);
            if !path.is_file() {
                return Err(ModelDirError::MissingShard {
                    index: index.display().to_string(),
                    shard: path.display().to_string(),
                });
            }
        }
        let total = shards.len();
        let mut all = TensorFile::default();
        for (done, (shard, tensors)) in shards.into_iter().enumerate() {
            let path = self.dir.join(&shard);
            let mut file = tttc_runtime::read_safetensors_with_ints(&path)
                .map_err(|e| ModelDirError::Weights(e.into()))?;
            all.copied
                .extend(file.copied.iter().filter(|n| tensors.contains(n)).cloned());
            for tensor in tensors {
                if let Some(t) = file.floats.remove(&tensor) {
                    all.floats.insert(tensor, t);
                } else if let Some(t) = file.ints.remove(&tensor) {
                    all.ints.insert(tensor, t);
                } else {
                    return Err(ModelDirError::MissingTensor {
                        index: index.display().to_string(),
                        shard: path.display().to_string(),
                        tensor,
                    });
                }
            }
            progress(done + 1, total);
        }
        Ok(all)
    }
}

/// The index's `weight_map` grouped by shard: shard file name → tensors, both in order. A shard
/// must be a plain file name in the folder (no path separators, not `..`).
fn read_index(index: &Path) -> Result<BTreeMap<String, Vec<String>>, ModelDirError> {
    let fail = |message: String| ModelDirError::Index {
        path: index.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(index).map_err(|e| fail(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| fail("no `weight_map` object".into()))?;
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| fail(format!("`weight_map.{tensor}` is not a file name")))?;
        let plain = !shard.is_empty()
            && shard != "."
            && shard != ".."
            && !shard.contains(['/', '\\'])
            && Path::new(shard).file_name() == Some(std::ffi::OsStr::new(shard));
        if !plain {
            return Err(fail(format!(
                "`weight_map.{tensor}` is {shard:?}: a shard must be a file name in the folder"
            )));
        }
        shards
            .entry(shard.to_string())
            .or_default()
            .push(tensor.clone());
    }
    if shards.is_empty() {
        return Err(fail("the `weight_map` is empty".into()));
    }
    Ok(shards)
}
