//! Reading and writing named tensors in the safetensors format.

use crate::elements::{Elements, SharedBytes};
use crate::error::RuntimeError;
use crate::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensorError, View};
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Reads every tensor of the safetensors file at `path`.
///
/// F32 and F64 tensors are supported; any other element type is
/// [`RuntimeError::UnsupportedDType`]. A file that cannot be read is [`RuntimeError::Io`]; one
/// that is not a valid safetensors file (bad header, truncated, inconsistent offsets) is
/// [`RuntimeError::Malformed`]. No input makes this function panic.
///
/// The tensors view the file in place where they can (see [`read_safetensors_with_ints`]).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
    let bytes = FileBytes::open(path)?;
    let file = parse_safetensors(&bytes, path, false)?;
    debug_assert!(file.ints.is_empty());
    Ok(file.floats)
}

/// Reads every tensor of the safetensors file at `path`, the floating-point ones (F32, F64) and
/// the integer ones (I64, I32: token ids) separately. Other element types are
/// [`RuntimeError::UnsupportedDType`], naming the tensor.
///
/// The file is memory-mapped, and each F32/F64 tensor whose bytes are aligned for its element
/// type views the mapping in place ([`Elements`]): nothing is copied, and the mapping lives as
/// long as any tensor views it. A tensor whose bytes are not aligned (the safetensors format
/// does not require it) is copied and named in [`TensorFile::copied`]; so is every tensor of a
/// file that cannot be mapped (a pipe), and every tensor on a big-endian host. The file is
/// only ever read: a tensor written later copies its view first.
///
/// [`Elements`]: crate::Elements
pub fn read_safetensors_with_ints(path: &Path) -> Result<TensorFile, RuntimeError> {
    let bytes = FileBytes::open(path)?;
    parse_safetensors(&bytes, path, true)
}

/// A file's bytes: memory-mapped, or read into memory where it cannot be mapped (an empty
/// file, a pipe).
///
/// The tensors of a mapped file view it in place ([`Elements`]), sharing the map.
///
/// [`Elements`]: crate::Elements
enum FileBytes {
    Mapped(SharedBytes),
    Read(Vec<u8>),
}

impl FileBytes {
    fn open(path: &Path) -> Result<FileBytes, RuntimeError> {
        let io = |source| RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len > 0 {
            // SAFETY: the map is read-only and tttc never writes a file it reads (model folders
            // are not written by it at all). Another process truncating or rewriting the file
            // while tensors still view it would change their elements or fault on read, as it
            // would for any program that maps its weights (PyTorch's and safetensors' `mmap`
            // loaders included); the map is private to this process.
            if let Ok(map) = unsafe { memmap2::Mmap::map(&file) } {
                return Ok(FileBytes::Mapped(Arc::new(map)));
            }
        }
        // Not mappable (empty, a pipe, a special file): read it.
        std::fs::read(path).map(FileBytes::Read).map_err(io)
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => (**m).as_ref(),
            FileBytes::Read(v) => v,
        }
    }

    /// The elements at `raw` (a sub-slice of [`FileBytes::as_slice`]) viewed in place, or
    /// `None` where they must be copied (not mapped, unaligned, big-endian host).
    fn view<T: bytemuck::Pod>(&self, raw: &[u8]) -> Option<Elements<T>> {
        let FileBytes::Mapped(map) = self else {
            return None;
        };
        let start = (raw.as_ptr() as usize).checked_sub((**map).as_ref().as_ptr() as usize)?;
        Elements::mapped(map, start..start + raw.len())
    }
}

/// The little-endian elements stored in `raw` (whose length is a multiple of the element's
/// size), copied in one pass: on a little-endian host a plain copy of the bytes into the
/// vector (`bytemuck`: the stored bytes need not be aligned), else each element decoded.
fn le_elements<T: bytemuck::Pod>(raw: &[u8], decode: impl Fn(&[u8]) -> T) -> Vec<T> {
    if cfg!(target_endian = "little") {
        bytemuck::pod_collect_to_vec(raw)
    } else {
        raw.chunks_exact(std::mem::size_of::<T>())
            .map(decode)
            .collect()
    }
}

/// The tensors of one file by element kind (see [`read_safetensors_with_ints`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorFile {
    /// F32 and F64 tensors.
    pub floats: BTreeMap<String, Tensor>,
    /// I64 and I32 tensors.
    pub ints: BTreeMap<String, IntTensor>,
    /// The F32/F64 tensors copied out of the file instead of viewing it in place, in order:
    /// those whose bytes are not aligned for their element type, or every one where the file
    /// could not be mapped or the host is big-endian.
    pub copied: Vec<String>,
}

/// An integer tensor as stored (I64, or I32 widened exactly to `i64`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntTensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements in row-major order.
    pub values: Vec<i64>,
    /// The stored element type (`I64` or `I32`).
    pub dtype: &'static str,
}

/// Parses a safetensors file; `path` is only used in errors. Integer tensors are returned
/// separately when `ints` is set, else rejected like any unsupported type.
fn parse_safetensors(
    file: &FileBytes,
    path: &Path,
    ints: bool,
) -> Result<TensorFile, RuntimeError> {
    let bytes = file.as_slice();
    let malformed = |message: String| RuntimeError::Malformed {
        path: path.to_path_buf(),
        message,
    };
    precheck_offsets(bytes).map_err(malformed)?;
    // The pre-check removes the one panic we know of in the crate's parser (an overflow on
    // huge offsets); catching any other keeps the promise that no input bytes panic.
    let st = std::panic::catch_unwind(|| SafeTensors::deserialize(bytes))
        .map_err(|_| malformed("the safetensors parser rejected the header".into()))?
        .map_err(|e| malformed(describe(&e)))?;
    let mut views = st.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = BTreeMap::new();
    let mut int_out = BTreeMap::new();
    let mut copied = Vec::new();
    for (name, view) in views {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let int_values: Option<(Vec<i64>, &'static str)> = match view.dtype() {
            Dtype::I64 if ints => Some((
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
                "I64",
            )),
            Dtype::I32 if ints => Some((
                raw.chunks_exact(4)
                    .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
                "I32",
            )),
            _ => None,
        };
        if let Some((values, dtype)) = int_values {
            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if n != Some(values.len()) {
                return Err(malformed(format!(
                    "tensor `{name}`: {} value(s) for shape {shape:?}",
                    values.len()
                )));
            }
            int_out.insert(
                name,
                IntTensor {
                    shape,
                    values,
                    dtype,
                },
            );
            continue;
        }
        let data = match view.dtype() {
            Dtype::F32 => TensorData::F32(file.view(raw).unwrap_or_else(|| {
                copied.push(name.clone());
                le_elements(raw, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).into()
            })),
            Dtype::F64 => TensorData::F64(file.view(raw).unwrap_or_else(|| {
                copied.push(name.clone());
                le_elements(raw, |c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                })
                .into()
            })),
            other => {
                return Err(RuntimeError::UnsupportedDType {
                    tensor: name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        let tensor =
            Tensor::new(shape, data).map_err(|e| malformed(format!("tensor `{name}`: {e}")))?;
        out.insert(name, tensor);
    }
    Ok(TensorFile {
        floats: out,
        ints: int_out,
        copied,
    })
}

/// Rejects headers whose data offsets point past the end of the file before the safetensors
/// crate sees them: with offsets near `usize::MAX` its final size check overflows (a panic in
/// debug builds).
fn precheck_offsets(bytes: &[u8]) -> Result<(), String> {
    let Some(len_bytes) = bytes.get(..8) else {
        return Ok(()); // the crate reports "header too small"
    };
    let mut arr = [0u8; 8];
    arr.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(arr);
    let Some(header) = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .and_then(|end| bytes.get(8..end))
    else {
        return Ok(()); // the crate reports the bad header length
    };
    let data_len = (bytes.len() - 8 - header.len()) as u64;
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(header)
    else {
        return Ok(()); // the crate reports the bad header
    };
    for (name, info) in &map {
        if name == "__metadata__" {
            continue;
        }
        let Some(offsets) = info.get("data_offsets").and_then(|o| o.as_array()) else {
            continue;
        };
        for o in offsets {
            if o.as_u64().is_some_and(|o| o > data_len) {
                return Err(format!(
                    "tensor `{name}` has data offsets beyond the end of the file ({data_len} data bytes)"
                ));
            }
        }
    }
    Ok(())
}

/// A readable description of a safetensors error.
fn describe(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => {
            "the file is shorter than the 8-byte header length".into()
        }
        SafeTensorError::HeaderTooLarge => "the declared header length is too large".into(),
        SafeTensorError::InvalidHeaderLength => {
            "the declared header length exceeds the file size (truncated file?)".into()
        }
        SafeTensorError::InvalidHeader => "the header is not valid UTF-8".into(),
        SafeTensorError::InvalidHeaderStart => "the header does not start with `{`".into(),
        SafeTensorError::InvalidHeaderDeserialization => {
            "the header is not a valid safetensors JSON header".into()
        }
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor `{name}` has invalid data offsets")
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's data offsets do not match its shape and element type".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "the tensor data does not exactly fill the rest of the file (truncated file?)".into()
        }
        SafeTensorError::ValidationOverflow => "a tensor's size overflows".into(),
        other => format!("{other:?}"),
    }
}

/// One tensor prepared for serialization: its little-endian bytes, borrowed from the tensor
/// where they are its elements as they lie (a little-endian host).
struct RawTensor<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Cow<'a, [u8]>,
}

/// The little-endian bytes of `v`: the elements themselves on a little-endian host (no copy;
/// a model's logits are a gigabyte), else each element encoded.
fn le_bytes<T: bytemuck::Pod, const N: usize>(v: &[T], encode: fn(&T) -> [u8; N]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(v))
    } else {
        Cow::Owned(v.iter().flat_map(encode).collect())
    }
}

impl View for &RawTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.bytes.as_ref())
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `tensors` to `path` in the safetensors format (little endian; each tensor F32 or F64
/// as stored), replacing any existing file.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<(), RuntimeError> {
    write_safetensors_with_ints(path, tensors, &BTreeMap::new())
}

/// Writes floating-point `tensors` and integer tensors `ints` (each I64 or I32 as its `dtype`
/// says; an I32 value out of range is an error) to `path`, replacing any existing file. A name
/// in both maps is an error.
pub fn write_safetensors_with_ints(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    ints: &BTreeMap<String, IntTensor>,
) -> Result<(), RuntimeError> {
    let write_error = |tensor: &str, message: String| RuntimeError::Write {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        message,
    };
    let mut raw = Vec::with_capacity(tensors.len() + ints.len());
    for (name, t) in ints {
        if tensors.contains_key(name) || name == "__metadata__" {
            return Err(write_error(name, "the name is taken".into()));
        }
        let (dtype, bytes) = match t.dtype {
            "I32" => {
                let mut bytes = Vec::with_capacity(4 * t.values.len());
                for &v in &t.values {
                    let v = i32::try_from(v)
                        .map_err(|_| write_error(name, format!("{v} does not fit in I32")))?;
                    bytes.extend(v.to_le_bytes());
                }
                (Dtype::I32, Cow::Owned(bytes))
            }
            _ => (Dtype::I64, le_bytes(&t.values, |x| x.to_le_bytes())),
        };
        raw.push((
            name.as_str(),
            RawTensor {
                dtype,
                shape: t.shape.clone(),
                bytes,
            },
        ));
    }
    for (name, t) in tensors {
        if name == "__metadata__" {
            return Err(RuntimeError::Write {
                path: path.to_path_buf(),
                tensor: name.clone(),
                message: "the name is reserved for the file's metadata".into(),
            });
        }
        let (dtype, bytes) = match t.data() {
            TensorData::F32(v) => (Dtype::F32, le_bytes(v, |x| x.to_le_bytes())),
            TensorData::F64(v) => (Dtype::F64, le_bytes(v, |x| x.to_le_bytes())),
        };
        raw.push((
            name.as_str(),
            RawTensor {
                dtype,
                shape: t.shape().to_vec(),
                bytes,
            },
        ));
    }
    // Streamed to the file tensor by tensor: no buffer of the whole file (a model's logits
    // alone are a gigabyte at L = 8192).
    safetensors::serialize_to_file(raw.iter().map(|(n, r)| (*n, r)), &None, path).map_err(|e| {
        match e {
            SafeTensorError::IoError(source) => RuntimeError::Io {
                path: path.to_path_buf(),
                source,
            },
            e => RuntimeError::Write {
                path: path.to_path_buf(),
                tensor: String::new(),
                message: describe(&e),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::ElemType;
    use proptest::prelude::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh path in the temporary directory (removed when dropped).
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            TempPath(std::env::temp_dir().join(format!(
                "tttc-runtime-test-{}-{tag}-{n}.safetensors",
                std::process::id()
            )))
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Parses `bytes` as a file that could not be mapped (every tensor copied).
    fn parse_safetensors(
        bytes: &[u8],
        path: &Path,
        ints: bool,
    ) -> Result<TensorFile, RuntimeError> {
        super::parse_safetensors(&FileBytes::Read(bytes.to_vec()), path, ints)
    }

    fn sample() -> BTreeMap<String, Tensor> {
        let mut m = BTreeMap::new();
        m.insert(
            "w".to_string(),
            Tensor::from_f32([2, 3], vec![1.0, -2.0, 3.5, f32::MIN_POSITIVE, 0.1, -0.0]).unwrap(),
        );
        m.insert(
            "b".to_string(),
            Tensor::from_f64([3], vec![std::f64::consts::PI, 1e-300, -7.0]).unwrap(),
        );
        m.insert(
            "s".to_string(),
            Tensor::from_f64(Vec::new(), vec![42.0]).unwrap(),
        );
        m.insert(
            "e".to_string(),
            Tensor::from_f32([0, 4], Vec::new()).unwrap(),
        );
        m
    }

    fn sample_bytes() -> Vec<u8> {
        let p = TempPath::new("bytes");
        write_safetensors(&p.0, &sample()).unwrap();
        std::fs::read(&p.0).unwrap()
    }

    #[test]
    fn round_trip_is_exact() {
        let p = TempPath::new("roundtrip");
        let m = sample();
        write_safetensors(&p.0, &m).unwrap();
        let back = read_safetensors(&p.0).unwrap();
        assert_eq!(back.len(), m.len());
        for (name, t) in &m {
            let b = &back[name];
            assert_eq!(b.shape(), t.shape(), "{name}");
            assert_eq!(b.elem_type(), t.elem_type(), "{name}");
            // bitwise equality (covers -0.0)
            let bits = |t: &Tensor| -> Vec<u64> {
                match t.data() {
                    TensorData::F32(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
                    TensorData::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
                }
            };
            assert_eq!(bits(b), bits(t), "{name}");
            // The writer pads the header to 8 bytes: every tensor is read in place.
            assert!(b.data().is_mapped(), "{name}");
        }
        let file = read_safetensors_with_ints(&p.0).unwrap();
        assert!(file.copied.is_empty(), "{:?}", file.copied);
        // Read as bytes that are not mapped, the same tensors are copied, every one named.
        let copied = parse_safetensors(&std::fs::read(&p.0).unwrap(), &p.0, true).unwrap();
        assert_eq!(copied.floats, back);
        assert_eq!(copied.copied, back.keys().cloned().collect::<Vec<_>>());
        assert!(copied.floats.values().all(|t| !t.data().is_mapped()));
    }

    #[test]
    fn unaligned_tensor_data_reads_exactly() {
        // Data starting at every offset modulo 8 from the file's start (the map is
        // page-aligned, so the tensors' bytes are not aligned for f32 or f64): the copy into
        // the tensor's storage must not assume alignment.
        let f32s = [1.5f32, -0.0, f32::MIN_POSITIVE];
        let f64s = [std::f64::consts::E, -1e-300];
        for pad in 0..8 {
            let header = format!(
                "{{\"a\":{{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}},\
                 \"b\":{{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[12,28]}}}}{}",
                " ".repeat(pad)
            );
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend(header.as_bytes());
            bytes.extend(f32s.iter().flat_map(|x| x.to_le_bytes()));
            bytes.extend(f64s.iter().flat_map(|x| x.to_le_bytes()));
            let p = TempPath::new(&format!("unaligned{pad}"));
            std::fs::write(&p.0, &bytes).unwrap();
            let back = read_safetensors(&p.0).unwrap();
            let a: Vec<u32> = back["a"]
                .as_f32()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            assert_eq!(a, f32s.map(f32::to_bits), "pad {pad}");
            match back["b"].data() {
                TensorData::F64(v) => {
                    let b: Vec<u64> = v.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(b, f64s.map(f64::to_bits), "pad {pad}");
                }
                other => panic!("pad {pad}: {other:?}"),
            }
        }
    }

    #[test]
    fn reads_files_written_by_the_safetensors_crate() {
        // A file written with the crate's own TensorView, not our writer.
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![1, 2], &data).unwrap();
        let bytes = safetensors::serialize([("x", view)], &None).unwrap();
        let m = parse_safetensors(&bytes, Path::new("mem"), false)
            .unwrap()
            .floats;
        assert_eq!(m["x"].shape(), &[1, 2]);
        assert_eq!(m["x"].as_f32().unwrap(), &[1.5, -2.0]);
    }

    #[test]
    fn missing_file_is_io_error() {
        let p = TempPath::new("missing");
        let err = read_safetensors(&p.0).unwrap_err();
        assert!(matches!(err, RuntimeError::Io { .. }), "{err}");
        assert!(err.to_string().contains("missing"));
    }

    #[test]
    fn unsupported_dtype_names_the_tensor() {
        let data = [0u8; 4];
        let view = safetensors::tensor::TensorView::new(Dtype::BF16, vec![2], &data).unwrap();
        let bytes = safetensors::serialize([("half", view)], &None).unwrap();
        let p = TempPath::new("bf16");
        std::fs::write(&p.0, bytes).unwrap();
        match read_safetensors(&p.0).unwrap_err() {
            RuntimeError::UnsupportedDType { tensor, dtype } => {
                assert_eq!(tensor, "half");
                assert_eq!(dtype, "BF16");
            }
            e => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn integer_tensors_round_trip_and_are_kept_apart() {
        let p = TempPath::new("ints");
        let floats = BTreeMap::from([(
            "w".to_string(),
            Tensor::from_f32([2], vec![0.5, 1.0]).unwrap(),
        )]);
        let ints = BTreeMap::from([
            (
                "ids".to_string(),
                IntTensor {
                    shape: vec![1, 3],
                    values: vec![0, -7, 1 << 40],
                    dtype: "I64",
                },
            ),
            (
                "small".to_string(),
                IntTensor {
                    shape: vec![2],
                    values: vec![5, -3],
                    dtype: "I32",
                },
            ),
        ]);
        write_safetensors_with_ints(&p.0, &floats, &ints).unwrap();
        let back = read_safetensors_with_ints(&p.0).unwrap();
        assert_eq!(back.floats, floats);
        assert_eq!(back.ints, ints);
        // The float-only reader rejects them, naming the tensor.
        match read_safetensors(&p.0).unwrap_err() {
            RuntimeError::UnsupportedDType { tensor, dtype } => {
                assert_eq!((tensor.as_str(), dtype.as_str()), ("ids", "I64"));
            }
            e => panic!("unexpected error {e}"),
        }
        // An I32 value out of range and a name in both maps are write errors.
        let mut bad = ints.clone();
        bad.get_mut("small").unwrap().values[0] = 1 << 40;
        assert!(write_safetensors_with_ints(&p.0, &floats, &bad).is_err());
        let mut clash = ints;
        clash.insert(
            "w".into(),
            IntTensor {
                shape: vec![],
                values: vec![1],
                dtype: "I64",
            },
        );
        assert!(write_safetensors_with_ints(&p.0, &floats, &clash).is_err());
    }

    #[test]
    fn the_integer_reader_still_rejects_other_types() {
        let data = [0u8; 4];
        let view = safetensors::tensor::TensorView::new(Dtype::U8, vec![4], &data).unwrap();
        let bytes = safetensors::serialize([("bytes", view)], &None).unwrap();
        let p = TempPath::new("u8");
        std::fs::write(&p.0, bytes).unwrap();
        let err = read_safetensors_with_ints(&p.0).unwrap_err();
        assert!(
            matches!(&err, RuntimeError::UnsupportedDType { tensor, .. } if tensor == "bytes"),
            "{err}"
        );
    }

    fn assert_malformed(bytes: &[u8]) {
        let p = TempPath::new("bad");
        std::fs::write(&p.0, bytes).unwrap();
        match read_safetensors(&p.0) {
            Err(RuntimeError::Malformed { path, message }) => {
                assert_eq!(path, p.0);
                assert!(!message.is_empty());
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_malformed() {
        assert_malformed(&[]);
    }

    #[test]
    fn garbage_is_malformed() {
        assert_malformed(b"this is not a safetensors file at all");
        assert_malformed(&[0xff; 64]);
        // a plausible length followed by non-JSON
        let mut b = 16u64.to_le_bytes().to_vec();
        b.extend_from_slice(&[0x80; 16]);
        assert_malformed(&b);
    }

    #[test]
    fn truncated_file_is_malformed() {
        let bytes = sample_bytes();
        for cut in [1, 7, 8, 9, bytes.len() / 2, bytes.len() - 1] {
            assert_malformed(&bytes[..cut]);
        }
        // one byte too many is also an error
        let mut longer = bytes.clone();
        longer.push(0);
        assert_malformed(&longer);
    }

    #[test]
    fn huge_offsets_do_not_overflow() {
        let big = u64::MAX - 3;
        let header =
            format!(r#"{{"x":{{"dtype":"U8","shape":[{big}],"data_offsets":[0,{big}]}}}}"#);
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        assert_malformed(&b);
        // shape overflow
        let header =
            format!(r#"{{"x":{{"dtype":"F64","shape":[{big},{big}],"data_offsets":[0,0]}}}}"#);
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        assert_malformed(&b);
    }

    #[test]
    fn reserved_name_is_rejected_on_write() {
        let p = TempPath::new("reserved");
        let mut m = BTreeMap::new();
        m.insert(
            "__metadata__".to_string(),
            Tensor::zeros([1], ElemType::F32),
        );
        let err = write_safetensors(&p.0, &m).unwrap_err();
        assert!(matches!(err, RuntimeError::Write { .. }), "{err}");
    }

    #[test]
    fn write_to_missing_directory_is_io_error() {
        let p = std::env::temp_dir().join("tttc-no-such-dir-7f3a/x.safetensors");
        let err = write_safetensors(&p, &sample()).unwrap_err();
        assert!(matches!(err, RuntimeError::Io { .. }), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_safetensors(&bytes, Path::new("fuzz"), true);
        }

        #[test]
        fn corrupted_valid_files_never_panic(
            pos in any::<proptest::sample::Index>(),
            val in any::<u8>(),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut bytes = sample_bytes();
            let i = pos.index(bytes.len());
            bytes[i] = val;
            let _ = parse_safetensors(&bytes, Path::new("fuzz"), true);
            let c = cut.index(bytes.len());
            let _ = parse_safetensors(&bytes[..c], Path::new("fuzz"), true);
            // a truncation of the intact file is always an error
            let intact = sample_bytes();
            let c = cut.index(intact.len());
            prop_assert!(parse_safetensors(&intact[..c], Path::new("fuzz"), true).is_err());
        }

        #[test]
        fn arbitrary_headers_never_panic(
            dtype in prop_oneof![Just("F32"), Just("F64"), Just("U8"), Just("XX")],
            shape in proptest::collection::vec(prop_oneof![0u64..8, any::<u64>()], 0..3),
            a in prop_oneof![0u64..64, any::<u64>()],
            b in prop_oneof![0u64..64, any::<u64>()],
            extra in 0usize..64,
        ) {
            let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            let header = format!(
                r#"{{"t":{{"dtype":"{dtype}","shape":[{}],"data_offsets":[{a},{b}]}}}}"#,
                shape.join(",")
            );
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.resize(bytes.len() + extra, 0);
            let _ = parse_safetensors(&bytes, Path::new("fuzz"), true);
        }
    }
}
