//! Hugging Face weight files: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`, memory-mapped and copied tensor by tensor straight to the
//! target device and dtype; and the same layout written back.

use crate::error::InputError;
use anyhow::{Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<i64>,
    start: usize,
    end: usize,
}

/// The tensors of a checkpoint directory, not yet read.
pub struct Weights {
    files: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
}

impl Weights {
    /// Opens `dir/model.safetensors` or the shards of `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Weights, InputError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let json = super::read_json(&index)?;
            let map = json["weight_map"]
                .as_object()
                .ok_or_else(|| InputError(format!("{}: no weight_map", index.display())))?;
            let mut shards: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            return Err(InputError(format!(
                "{}: no model.safetensors or model.safetensors.index.json (PyTorch .bin checkpoints: convert them \
                 with transformers' save_pretrained(safe_serialization=True))",
                dir.display()
            )));
        };
        Weights::open_files(files)
    }

    /// No tensors at all (a model of random weights reads none).
    pub fn none() -> Weights {
        Weights { files: Vec::new(), entries: HashMap::new() }
    }

    /// Opens one safetensors file (an adapter).
    pub fn open_file(path: &Path) -> Result<Weights, InputError> {
        Weights::open_files(vec![path.to_owned()])
    }

    fn open_files(files: Vec<PathBuf>) -> Result<Weights, InputError> {
        let mut weights = Weights { files: Vec::new(), entries: HashMap::new() };
        for path in files {
            let file =
                std::fs::File::open(&path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
            // SAFETY: the file is only read; a concurrent writer would be a user error we cannot prevent.
            let mmap =
                unsafe { Mmap::map(&file) }.map_err(|e| InputError(format!("{}: {e}", path.display())))?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| InputError(format!("{}: not a safetensors file: {e}", path.display())))?;
            let base = mmap.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let start = view.data().as_ptr() as usize - base;
                weights.entries.insert(
                    name,
                    Entry {
                        file: weights.files.len(),
                        dtype: view.dtype(),
                        shape: view.shape().iter().map(|&d| d as i64).collect(),
                        start,
                        end: start + view.data().len(),
                    },
                );
            }
            drop(st);
            weights.files.push((path, mmap));
        }
        Ok(weights)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[i64]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Reads `name` as a new tensor of `kind` on `device`: one copy, straight from the mapped file
    /// to the device (and dtype), never aliasing the file.
    pub fn load(&self, name: &str, device: Device, kind: Kind) -> Result<Tensor, String> {
        let e = self.entries.get(name).ok_or_else(|| format!("missing tensor {name}"))?;
        let stored =
            kind_of(e.dtype).ok_or_else(|| format!("tensor {name} has unsupported dtype {:?}", e.dtype))?;
        let (path, mmap) = &self.files[e.file];
        let bytes = &mmap[e.start..e.end];
        let expected = e.shape.iter().product::<i64>() as usize * stored.elt_size_in_bytes();
        if bytes.len() != expected {
            return Err(format!(
                "tensor {name} in {}: {} bytes for shape {:?}",
                path.display(),
                bytes.len(),
                e.shape
            ));
        }
        // SAFETY: `bytes` holds the tensor's data (checked above) and outlives `view`, which is
        // only read, by the copy below, before this function returns.
        let view = unsafe { Tensor::f_from_blob(bytes.as_ptr(), &e.shape, &[], stored, Device::Cpu) }
            .map_err(|err| format!("tensor {name} in {}: {err}", path.display()))?;
        let copy = view
            .f_to_device_(device, kind, false, true)
            .map_err(|err| format!("tensor {name} in {}: {err}", path.display()))?;
        Ok(copy)
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Bool => Dtype::BOOL,
        other => anyhow::bail!("cannot save tensors of kind {other:?}"),
    })
}

/// A tensor copied to host memory, as safetensors writes it.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl HostTensor {
    fn new(t: &Tensor) -> Result<HostTensor> {
        let t = t.detach().to_device(Device::Cpu).contiguous();
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        Ok(HostTensor {
            dtype: dtype_of(t.kind())?,
            shape: t.size().iter().map(|&d| d as usize).collect(),
            data,
        })
    }
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `tensors` into one safetensors file.
pub fn save_file(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let host: Vec<(String, HostTensor)> = tensors
        .iter()
        .map(|(n, t)| {
            Ok((n.clone(), HostTensor::new(t).with_context(|| format!("copying tensor {n} to host memory"))?))
        })
        .collect::<Result<_>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(host.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata), path)
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes `tensors` into `dir` as `model.safetensors`, or as `model-0000i-of-0000n.safetensors`
/// shards plus `model.safetensors.index.json` when they exceed `max_shard_bytes`.
pub fn save(dir: &Path, tensors: &[(String, Tensor)], max_shard_bytes: usize) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut shards: Vec<Vec<(String, HostTensor)>> = vec![Vec::new()];
    let mut shard_bytes = 0;
    let mut total = 0;
    for (name, t) in tensors {
        let host = HostTensor::new(t).with_context(|| format!("copying tensor {name} to host memory"))?;
        if shard_bytes > 0 && shard_bytes + host.data.len() > max_shard_bytes {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shard_bytes += host.data.len();
        total += host.data.len();
        shards.last_mut().expect("never empty").push((name.clone(), host));
    }
    if shards.len() == 1 {
        let path = dir.join("model.safetensors");
        let data = shards[0].iter().map(|(n, t)| (n.as_str(), t));
        return safetensors::serialize_to_file(data, Some(metadata), &path)
            .with_context(|| format!("writing {}", path.display()));
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let path = dir.join(&file);
        safetensors::serialize_to_file(
            shard.iter().map(|(n, t)| (n.as_str(), t)),
            Some(metadata.clone()),
            &path,
        )
        .with_context(|| format!("writing {}", path.display()))?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file.clone());
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    let path = dir.join("model.safetensors.index.json");
    std::fs::write(&path, serde_json::to_string_pretty(&index)?)
        .with_context(|| format!("writing {}", path.display()))
}
