//! `GgufWriter`: writes GGUF v3 files the way gguf-py and ggml's `gguf_write_to_buf` do.
//!
//! Layout: header, kv pairs and tensor infos in insertion order, zero padding to the
//! alignment (32 unless [`GgufWriter::set_alignment`] says otherwise, in which case the
//! `general.alignment` key is written), then each tensor's data followed by zero padding to
//! the alignment. Tensor offsets are therefore aligned, and the output is a pure function of
//! the calls made: no hash-map iteration order leaks into it.
//!
//! Tensor data can be given up front ([`GgufWriter::add_tensor`]) or produced on demand while
//! writing ([`GgufWriter::add_tensor_with`]), so a multi-gigabyte model never has to sit in
//! memory whole.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::error::GgufError;
use super::reader::{tensor_layout, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC};
use super::types::GgmlType;
use super::value::{GgufArray, GgufValue};

/// Version written by [`GgufWriter`].
pub const GGUF_WRITE_VERSION: u32 = 3;

type Producer<'a> = Box<dyn FnOnce() -> Vec<u8> + 'a>;

enum TensorSource<'a> {
    Bytes(Vec<u8>),
    Lazy(Producer<'a>),
}

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    size: u64,
    source: TensorSource<'a>,
}

/// Builds a GGUF v3 file from metadata and tensors, in insertion order.
pub struct GgufWriter<'a> {
    kvs: Vec<(String, GgufValue)>,
    keys: HashSet<String>,
    tensors: Vec<PendingTensor<'a>>,
    names: HashSet<String>,
    alignment: u64,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        GgufWriter::new()
    }
}

impl<'a> GgufWriter<'a> {
    /// An empty writer with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter {
            kvs: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            alignment: GGUF_DEFAULT_ALIGNMENT,
        }
    }

    /// Uses `alignment` (a power of two) and records it as the `general.alignment` key.
    pub fn set_alignment(&mut self, alignment: u32) -> Result<(), GgufError> {
        if !alignment.is_power_of_two() {
            return Err(GgufError::BadAlignment {
                value: u64::from(alignment),
            });
        }
        self.add_kv("general.alignment", GgufValue::U32(alignment))?;
        self.alignment = u64::from(alignment);
        Ok(())
    }

    /// Adds a metadata pair; a key may appear once.
    pub fn add_kv(
        &mut self,
        key: impl Into<String>,
        value: impl Into<GgufValue>,
    ) -> Result<(), GgufError> {
        let key = key.into();
        if !self.keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey(key));
        }
        self.kvs.push((key, value.into()));
        Ok(())
    }

    /// Adds a `u32` pair.
    pub fn add_u32(&mut self, key: &str, v: u32) -> Result<(), GgufError> {
        self.add_kv(key, GgufValue::U32(v))
    }

    /// Adds an `f32` pair.
    pub fn add_f32(&mut self, key: &str, v: f32) -> Result<(), GgufError> {
        self.add_kv(key, GgufValue::F32(v))
    }

    /// Adds a `bool` pair.
    pub fn add_bool(&mut self, key: &str, v: bool) -> Result<(), GgufError> {
        self.add_kv(key, GgufValue::Bool(v))
    }

    /// Adds a string pair.
    pub fn add_str(&mut self, key: &str, v: &str) -> Result<(), GgufError> {
        self.add_kv(key, GgufValue::Str(v.to_string()))
    }

    /// Adds an array pair.
    pub fn add_arr(&mut self, key: &str, v: impl Into<GgufArray>) -> Result<(), GgufError> {
        self.add_kv(key, GgufValue::Array(v.into()))
    }

    fn check_tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
        let (_, size) = tensor_layout(name, dims, ty)?;
        if !self.names.insert(name.to_string()) {
            return Err(GgufError::DuplicateTensor(name.to_string()));
        }
        Ok(size)
    }

    /// Adds a tensor with its data. `dims` are in ggml order (ne0, the row length, first);
    /// `data.len()` must be what `ggml_nbytes` gives for that shape and type.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<(), GgufError> {
        let size = self.check_tensor(name, dims, ty)?;
        if data.len() as u64 != size {
            self.names.remove(name);
            return Err(GgufError::WrongDataSize {
                tensor: name.to_string(),
                shape: dims.to_vec(),
                ty: ty.name(),
                expected: size,
                got: data.len() as u64,
            });
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            size,
            source: TensorSource::Bytes(data),
        });
        Ok(())
    }

    /// Adds a tensor whose data `produce` returns while the file is written (one tensor in
    /// memory at a time). A wrong-sized result fails the write.
    pub fn add_tensor_with(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        produce: impl FnOnce() -> Vec<u8> + 'a,
    ) -> Result<(), GgufError> {
        let size = self.check_tensor(name, dims, ty)?;
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            size,
            source: TensorSource::Lazy(Box::new(produce)),
        });
        Ok(())
    }

    /// Writes the file to `w`; returns the number of bytes written.
    pub fn write_to(self, w: &mut impl Write) -> Result<u64, GgufError> {
        let mut out = Counting { inner: w, n: 0 };
        self.write_inner(&mut out)?;
        Ok(out.n)
    }

    /// Writes the file to `path` (created or truncated).
    pub fn write_file(self, path: &Path) -> Result<u64, GgufError> {
        let file = File::create(path).map_err(|source| GgufError::Io {
            action: "create",
            path: path.to_path_buf(),
            source,
        })?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let n = self.write_to(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| GgufError::Write(e.into_error()))?;
        file.sync_all().map_err(GgufError::Write)?;
        Ok(n)
    }

    /// The file image in memory.
    pub fn into_bytes(self) -> Result<Vec<u8>, GgufError> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    fn write_inner<W: Write>(self, out: &mut Counting<W>) -> Result<(), GgufError> {
        let align = self.alignment;
        let mut h = Vec::new();
        h.extend_from_slice(&GGUF_MAGIC);
        h.extend_from_slice(&GGUF_WRITE_VERSION.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut h, k);
            h.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut h, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset += t.size.div_ceil(align) * align;
        }
        let pad = (h.len() as u64).div_ceil(align) * align - h.len() as u64;
        h.resize(h.len() + pad as usize, 0);
        out.write_all(&h).map_err(GgufError::Write)?;
        drop(h);

        let zeros = vec![0u8; align as usize];
        for t in self.tensors {
            let data = match t.source {
                TensorSource::Bytes(b) => b,
                TensorSource::Lazy(f) => f(),
            };
            if data.len() as u64 != t.size {
                return Err(GgufError::WrongDataSize {
                    tensor: t.name,
                    shape: t.dims,
                    ty: t.ty.name(),
                    expected: t.size,
                    got: data.len() as u64,
                });
            }
            out.write_all(&data).map_err(GgufError::Write)?;
            let pad = t.size.div_ceil(align) * align - t.size;
            out.write_all(&zeros[..pad as usize])
                .map_err(GgufError::Write)?;
        }
        out.flush().map_err(GgufError::Write)?;
        Ok(())
    }
}

struct Counting<'w, W: Write> {
    inner: &'w mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_value(h: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => h.push(*x),
        GgufValue::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => h.push(u8::from(*x)),
        GgufValue::Str(s) => put_str(h, s),
        GgufValue::Array(a) => put_array(h, a),
        GgufValue::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(h: &mut Vec<u8>, a: &GgufArray) {
    h.extend_from_slice(&a.elem_type().id().to_le_bytes());
    h.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                h.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        GgufArray::U8(v) => h.extend_from_slice(v),
        GgufArray::I8(v) => le!(v),
        GgufArray::U16(v) => le!(v),
        GgufArray::I16(v) => le!(v),
        GgufArray::U32(v) => le!(v),
        GgufArray::I32(v) => le!(v),
        GgufArray::F32(v) => le!(v),
        GgufArray::Bool(v) => h.extend(v.iter().map(|&b| u8::from(b))),
        GgufArray::Str(v) => {
            for s in v {
                put_str(h, s);
            }
        }
        GgufArray::Array(v) => {
            for inner in v {
                put_array(h, inner);
            }
        }
        GgufArray::U64(v) => le!(v),
        GgufArray::I64(v) => le!(v),
        GgufArray::F64(v) => le!(v),
    }
}
