//! `GgufFile`: a validating GGUF v2/v3 reader with zero-copy tensor views.
//!
//! The layout follows `gguf_init_from_file` in the vendored ggml.c: magic `GGUF`, u32
//! version, u64 tensor count, u64 kv count, the kv pairs, the tensor infos, padding to
//! `general.alignment` (default 32), then the data section, in which each tensor's offset is
//! relative to the section start. Unlike ggml, this reader checks every length and count
//! against the bytes that remain *before* allocating or slicing, so malformed input yields a
//! [`GgufError`], never a panic or a huge allocation.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use super::error::GgufError;
use super::types::GgmlType;
use super::value::{GgufArray, GgufValue, GgufValueType};
use crate::hugepage::{self, HugeBuffer};

/// `GGUF` as the little-endian u32 the file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of tensor offsets when `general.alignment` is absent
/// (`GGUF_DEFAULT_ALIGNMENT` in ggml.h).
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const GGML_MAX_DIMS: u32 = 4;
/// Deepest array-of-array nesting accepted (real files use none; the limit keeps a malicious
/// file from exhausting the stack).
pub const MAX_ARRAY_NESTING: usize = 8;

/// Smallest possible kv pair: u64 key length, empty key, u32 type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest possible tensor info: u64 name length, u32 n_dims, u32 type, u64 offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// One tensor's header entry, validated against the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// GGUF name, e.g. `blk.3.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` (ne0) is the row length, the contiguous one.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Data bytes as `ggml_nbytes` counts them (I2_S: n/4 + 32).
    pub size: u64,
}

impl TensorInfo {
    /// Product of the dimensions.
    pub fn n_elements(&self) -> u64 {
        // Validated not to overflow when the file was read.
        self.dims.iter().product()
    }
}

enum Backing {
    Mmap(memmap2::Mmap),
    /// The file read into anonymous memory in huge pages ([`GgufFile::copy_into_huge_pages`]).
    Copied(HugeBuffer),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Copied(buf) => buf.bytes(),
            Backing::Owned(v) => v,
        }
    }
}

/// Least share of a model in huge pages that [`GgufFile::open_in_huge_pages`] accepts from
/// the file map before it re-reads the file (and, failing that, copies it). Measured on the
/// 2B-4T I2_S model, one thread: the map at 88% huge streamed the FFN matrices 10% slower
/// than at 100% (decode 2–3% slower in all); re-reading the 46–88% huge TQ1_0, TQ2_0 and
/// I2_S files through the advised map left each 99.8–99.97% huge, at 0.6–1.2 s once.
pub const HUGE_PAGE_SHARE: f64 = 0.95;

fn io_error(path: &Path, action: &'static str, source: std::io::Error) -> GgufError {
    GgufError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Opens `path` for reading and returns it with its length, after checking that it is a
/// regular file: opening a FIFO blocks until someone writes to it, and a folder opens fine
/// and only fails at the map ("No such device").
fn open_file(path: &Path) -> Result<(File, u64), GgufError> {
    if !std::fs::metadata(path)
        .map_err(|e| io_error(path, "open", e))?
        .is_file()
    {
        return Err(GgufError::NotAFile(path.to_path_buf()));
    }
    let file = File::open(path).map_err(|e| io_error(path, "open", e))?;
    let len = file
        .metadata()
        .map_err(|e| io_error(path, "stat", e))?
        .len();
    Ok((file, len))
}

/// Files smaller than this keep the plain map in [`GgufFile::open_in_huge_pages`]: a few
/// huge pages save nothing measurable, and the test suite opens hundreds of small models.
pub const HUGE_PAGE_MIN_FILE: u64 = 64 << 20;

/// A parsed GGUF file: metadata in file order, tensor infos, and the bytes behind them
/// (memory-mapped or owned).
pub struct GgufFile {
    backing: Backing,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("file_size", &self.file_size())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        GgufFile::open_map(path.as_ref(), false)
    }

    /// [`GgufFile::open`]; with `huge`, the map is advised for huge pages and faulted in
    /// before the header is read (advice only: refused or ignored without THP).
    fn open_map(path: &Path, huge: bool) -> Result<GgufFile, GgufError> {
        let (file, len) = open_file(path)?;
        let backing = if len == 0 {
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only. Like every mmap-based model loader (llama.cpp
            // included) we rely on the file not being truncated or rewritten while it is
            // mapped; bitprobe only maps model files it does not modify.
            let map =
                unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_error(path, "mmap", e))?;
            #[cfg(not(target_os = "linux"))]
            let _ = huge;
            #[cfg(target_os = "linux")]
            if huge {
                let _ = map.advise(memmap2::Advice::HugePage);
                let _ = map.advise(memmap2::Advice::PopulateRead);
            }
            Backing::Mmap(map)
        };
        GgufFile::parse(backing)
    }

    /// Opens the file at `path` for an engine that streams every weight once per token, in
    /// 2 MiB pages. A decode step reads the whole model; with 4 KiB pages every 4 KiB of the
    /// stream costs a TLB miss, and the 2B-4T F16 head streams at 9–12 GB/s instead of
    /// 13.6–14.9 GB/s with 2 MiB pages (one thread; `docs/performance.md`).
    ///
    /// First the file map is advised for huge pages and faulted in: the kernel maps the page
    /// cache's 2 MiB folios as such (and reads the file in that size if it is not cached
    /// yet). When less than [`HUGE_PAGE_SHARE`] of the map ends up in huge pages (the file
    /// was cached in small pieces, as `write` or an earlier reader left it), the file's
    /// cached pages are dropped and it is read again through the advised map, which leaves
    /// it cached in 2 MiB folios for every later load. Only if that still falls short is
    /// the file copied into anonymous memory on a 2 MiB boundary advised for huge pages:
    /// one copy per load, which on a VM returning freed memory to its host can take seconds.
    /// [`GgufFile::huge_page_share`] tells what the kernel granted. Files under
    /// [`HUGE_PAGE_MIN_FILE`], files larger than half the available memory, and systems
    /// without transparent huge pages keep the plain map.
    pub fn open_in_huge_pages(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let small = std::fs::metadata(path).is_ok_and(|m| m.len() < HUGE_PAGE_MIN_FILE);
        let mapped = GgufFile::open_map(path, !small)?;
        if small {
            return Ok(mapped);
        }
        if mapped.huge_enough() {
            return Ok(mapped);
        }
        // The page cache holds the file in small pieces. Drop them (`POSIX_FADV_DONTNEED`
        // leaves pages that other processes map alone) and read it again through the advised
        // map, which the kernel then caches in 2 MiB folios: once per file, not per load.
        drop(mapped);
        #[cfg(target_os = "linux")]
        if let Ok(file) = File::open(path) {
            use std::os::fd::AsRawFd;
            // SAFETY: `file` is open for the whole call; fadvise only reads its arguments.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
        let mapped = GgufFile::open_map(path, true)?;
        if mapped.huge_enough() {
            return Ok(mapped);
        }
        // A copy needs memory of its own: only when it fits twice into what is available
        // (the page cache keeps the file too), else the map stays.
        if hugepage::mem_available()
            .is_none_or(|avail| mapped.file_size().saturating_mul(2) > avail)
        {
            return Ok(mapped);
        }
        drop(mapped);
        GgufFile::copy_into_huge_pages(path)
    }

    /// Reads and parses the file at `path` into anonymous memory on a 2 MiB boundary,
    /// advised for transparent huge pages (whatever its size): the fallback of
    /// [`GgufFile::open_in_huge_pages`].
    pub fn copy_into_huge_pages(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        use std::io::Read;
        let path = path.as_ref();
        let (mut file, len) = open_file(path)?;
        let io = |action, source| io_error(path, action, source);
        let len = usize::try_from(len).map_err(|_| {
            io(
                "read",
                std::io::Error::other("file larger than the address space"),
            )
        })?;
        let mut buf = HugeBuffer::new(len).map_err(|e| io("allocate memory for", e))?;
        file.read_exact(buf.bytes_mut())
            .map_err(|e| io("read", e))?;
        GgufFile::parse(Backing::Copied(buf))
    }

    /// Whether at least [`HUGE_PAGE_SHARE`] of the image is in huge pages (or nobody can
    /// tell: off Linux, an owned image).
    fn huge_enough(&self) -> bool {
        self.huge_page_share().is_none_or(|s| s >= HUGE_PAGE_SHARE)
    }

    /// The share of the file's image that the kernel maps in huge pages: `AnonHugePages` +
    /// `FilePmdMapped` of the mappings holding it in `/proc/self/smaps`, over its length
    /// (pages not faulted in yet count as small). `None` off Linux, for an owned image, or
    /// when smaps cannot be read.
    pub fn huge_page_share(&self) -> Option<f64> {
        match &self.backing {
            Backing::Owned(_) => None,
            backing => {
                let bytes = backing.bytes();
                hugepage::share(bytes.as_ptr() as usize, bytes.len())
            }
        }
    }

    /// Parses a GGUF image held in memory (tests, fuzzing, generated files).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::parse(Backing::Owned(bytes))
    }

    fn parse(backing: Backing) -> Result<GgufFile, GgufError> {
        let header = parse_header(backing.bytes())?;
        Ok(GgufFile {
            backing,
            version: header.version,
            metadata: header.metadata,
            key_index: header.key_index,
            tensors: header.tensors,
            tensor_index: header.tensor_index,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data-section alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section from the start of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> u64 {
        self.backing.bytes().len() as u64
    }

    /// The whole file image.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// All metadata pairs in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of tensor `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The data bytes of `info` (a view into the map; no copy).
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8], GgufError> {
        let bytes = self.backing.bytes();
        let start = u128::from(self.data_offset) + u128::from(info.offset);
        let end = start + u128::from(info.size);
        let out_of_bounds = || GgufError::DataOutOfBounds {
            tensor: info.name.clone(),
            end,
            file_size: bytes.len() as u64,
        };
        let start = usize::try_from(start).map_err(|_| out_of_bounds())?;
        let end_usize = usize::try_from(end).map_err(|_| out_of_bounds())?;
        bytes.get(start..end_usize).ok_or_else(out_of_bounds)
    }

    /// The data bytes of the tensor called `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        self.tensor_data(info)
    }

    fn require(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// The array under `key`.
    pub fn get_arr(&self, key: &str) -> Result<&GgufArray, GgufError> {
        match self.require(key)? {
            GgufValue::Array(a) => Ok(a),
            v => Err(wrong_type(key, "arr", v)),
        }
    }

    /// The string under `key`.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.require(key)? {
            GgufValue::Str(s) => Ok(s),
            v => Err(wrong_type(key, "str", v)),
        }
    }

    /// The string array under `key` (e.g. `tokenizer.ggml.tokens`).
    pub fn get_arr_str(&self, key: &str) -> Result<&[String], GgufError> {
        match self.get_arr(key)? {
            GgufArray::Str(v) => Ok(v),
            a => Err(wrong_arr_type(key, "arr[str]", a)),
        }
    }
}

macro_rules! scalar_getters {
    ($($fn_name:ident, $arr_fn:ident: $t:ty => $v:ident, $name:literal;)*) => {
        impl GgufFile {$(
            #[doc = concat!("The `", $name, "` under `key`; an error names the key and the type found.")]
            pub fn $fn_name(&self, key: &str) -> Result<$t, GgufError> {
                match self.require(key)? {
                    GgufValue::$v(x) => Ok(*x),
                    v => Err(wrong_type(key, $name, v)),
                }
            }

            #[doc = concat!("The `arr[", $name, "]` under `key`.")]
            pub fn $arr_fn(&self, key: &str) -> Result<&[$t], GgufError> {
                match self.get_arr(key)? {
                    GgufArray::$v(v) => Ok(v),
                    a => Err(wrong_arr_type(key, concat!("arr[", $name, "]"), a)),
                }
            }
        )*}
    };
}

scalar_getters! {
    get_u8, get_arr_u8: u8 => U8, "u8";
    get_i8, get_arr_i8: i8 => I8, "i8";
    get_u16, get_arr_u16: u16 => U16, "u16";
    get_i16, get_arr_i16: i16 => I16, "i16";
    get_u32, get_arr_u32: u32 => U32, "u32";
    get_i32, get_arr_i32: i32 => I32, "i32";
    get_f32, get_arr_f32: f32 => F32, "f32";
    get_bool, get_arr_bool: bool => Bool, "bool";
    get_u64, get_arr_u64: u64 => U64, "u64";
    get_i64, get_arr_i64: i64 => I64, "i64";
    get_f64, get_arr_f64: f64 => F64, "f64";
}

fn wrong_type(key: &str, expected: &str, found: &GgufValue) -> GgufError {
    GgufError::WrongType {
        key: key.to_string(),
        expected: expected.to_string(),
        found: found.type_description(),
    }
}

fn wrong_arr_type(key: &str, expected: &str, found: &GgufArray) -> GgufError {
    GgufError::WrongType {
        key: key.to_string(),
        expected: expected.to_string(),
        found: found.type_description(),
    }
}

/// Element count and data size of a tensor, with ggml's rules: at most 4 dimensions, a
/// 63-bit element count, whole blocks per row (I2_S: whole 128-value blocks), and the size
/// `ggml_nbytes` gives. Shared by the reader and the writer.
pub(crate) fn tensor_layout(
    name: &str,
    dims: &[u64],
    ty: GgmlType,
) -> Result<(u64, u64), GgufError> {
    if dims.len() > GGML_MAX_DIMS as usize {
        return Err(GgufError::TooManyDims {
            tensor: name.to_string(),
            n_dims: u32::try_from(dims.len()).unwrap_or(u32::MAX),
        });
    }
    let overflow = || GgufError::ShapeOverflow {
        tensor: name.to_string(),
        shape: dims.to_vec(),
    };
    let n = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64 && dims.iter().all(|&d| d <= i64::MAX as u64))
        .ok_or_else(overflow)?;
    let bs = ty.block_size();
    if n % bs != 0 {
        return Err(GgufError::NotBlockMultiple {
            tensor: name.to_string(),
            shape: dims.to_vec(),
            n_elements: n,
            block_size: bs,
            ty: ty.name(),
        });
    }
    let row = dims.first().copied().unwrap_or(1);
    let multiple = ty.row_multiple();
    if row % multiple != 0 {
        return Err(GgufError::RowNotMultiple {
            tensor: name.to_string(),
            shape: dims.to_vec(),
            row,
            multiple,
            ty: ty.name(),
        });
    }
    let size = ty
        .tensor_data_size(dims)
        .ok_or_else(|| GgufError::UnsizableShape {
            tensor: name.to_string(),
            shape: dims.to_vec(),
            ty: ty.name(),
        })?;
    Ok((n, size))
}

struct Header {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

fn parse_header(bytes: &[u8]) -> Result<Header, GgufError> {
    let mut cur = Cursor { buf: bytes, pos: 0 };

    let magic = cur.fixed::<4>(&|| "magic".to_string())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic {
            found: u32::from_le_bytes(magic),
        });
    }
    let version = cur.u32(&|| "version".to_string())?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let n_tensors = cur.u64(&|| "tensor count".to_string())?;
    let n_kv = cur.u64(&|| "metadata kv count".to_string())?;
    cur.check_count("metadata kv count", n_kv, MIN_KV_BYTES, cur.pos - 8)?;
    cur.check_count(
        "tensor count",
        n_tensors,
        MIN_TENSOR_INFO_BYTES,
        cur.pos - 16,
    )?;

    let mut metadata = Vec::with_capacity(capped(n_kv));
    let mut key_index = HashMap::with_capacity(capped(n_kv));
    for i in 0..n_kv {
        let key = cur.string(&|| format!("metadata key #{i}"))?;
        let ctx = || format!("metadata key '{key}'");
        let type_id = cur.u32(&|| format!("value type of metadata key '{key}'"))?;
        let value = cur.value(type_id, &ctx, 0)?;
        if key_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(GgufError::DuplicateKey(key));
        }
        metadata.push((key, value));
    }

    let mut tensors = Vec::with_capacity(capped(n_tensors));
    let mut tensor_index = HashMap::with_capacity(capped(n_tensors));
    for i in 0..n_tensors {
        let name = cur.string(&|| format!("tensor info #{i} name"))?;
        let n_dims = cur.u32(&|| format!("dimension count of tensor {name}"))?;
        if n_dims > GGML_MAX_DIMS {
            return Err(GgufError::TooManyDims {
                tensor: name,
                n_dims,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(cur.u64(&|| format!("dimension {d} of tensor {name}"))?);
        }
        let type_id = cur.u32(&|| format!("type of tensor {name}"))?;
        let offset = cur.u64(&|| format!("data offset of tensor {name}"))?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            tensor: name.clone(),
            type_id,
        })?;
        let (_, size) = tensor_layout(&name, &dims, ty)?;
        if tensor_index.insert(name.clone(), tensors.len()).is_some() {
            return Err(GgufError::DuplicateTensor(name));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            size,
        });
    }

    let alignment = match key_index.get("general.alignment").map(|&i| &metadata[i].1) {
        None => GGUF_DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) => u64::from(*a),
        Some(v) => return Err(wrong_type("general.alignment", "u32", v)),
    };
    if !alignment.is_power_of_two() {
        return Err(GgufError::BadAlignment { value: alignment });
    }

    let file_size = bytes.len() as u64;
    let header_end = cur.pos as u64;
    // Cannot overflow: header_end <= file size < 2^63 and alignment <= 2^31.
    let data_offset = header_end.div_ceil(alignment) * alignment;
    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::MisalignedOffset {
                tensor: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        let end = u128::from(data_offset) + u128::from(t.offset) + u128::from(t.size);
        if end > u128::from(file_size) {
            return Err(GgufError::DataOutOfBounds {
                tensor: t.name.clone(),
                end,
                file_size,
            });
        }
    }

    Ok(Header {
        version,
        metadata,
        key_index,
        tensors,
        tensor_index,
        alignment,
        data_offset,
    })
}

/// A bounds-checked little-endian reader over the file image.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Ctx<'c> = &'c dyn Fn() -> String;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn file_size(&self) -> u64 {
        self.buf.len() as u64
    }

    /// `n` bytes, or a truncation error naming `what`.
    fn take(&mut self, n: u64, what: Ctx) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                need: n,
                offset: self.pos as u64,
                file_size: self.file_size(),
            });
        }
        let n = n as usize; // <= remaining, so it fits
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn fixed<const N: usize>(&mut self, what: Ctx) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: Ctx) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.fixed(what)?))
    }

    fn u64(&mut self, what: Ctx) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.fixed(what)?))
    }

    /// Rejects `count` items of at least `min_each` bytes that cannot fit in what remains.
    fn check_count(
        &self,
        what: &str,
        count: u64,
        min_each: u64,
        offset: usize,
    ) -> Result<(), GgufError> {
        let fits = count
            .checked_mul(min_each)
            .is_some_and(|need| need <= self.remaining());
        if fits {
            Ok(())
        } else {
            Err(GgufError::CountTooLarge {
                what: what.to_string(),
                count,
                offset: offset as u64,
                min_each,
                remaining: self.remaining(),
                file_size: self.file_size(),
            })
        }
    }

    /// A GGUF string: u64 length, then that many UTF-8 bytes.
    fn string(&mut self, ctx: Ctx) -> Result<String, GgufError> {
        let len = self.u64(&|| format!("string length of {}", ctx()))?;
        let offset = self.pos as u64;
        if len > self.remaining() {
            return Err(GgufError::StringPastEnd {
                context: ctx(),
                len,
                offset: offset - 8,
                file_size: self.file_size(),
            });
        }
        let raw = self.take(len, ctx)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            context: ctx(),
            offset,
        })
    }

    fn value(&mut self, type_id: u32, ctx: Ctx, depth: usize) -> Result<GgufValue, GgufError> {
        let ty = GgufValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            context: ctx(),
            type_id,
            offset: self.pos as u64 - 4,
        })?;
        let what = || format!("value of {}", ctx());
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.fixed::<1>(&what)?[0]),
            GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(self.fixed(&what)?)),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.fixed(&what)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.fixed(&what)?)),
            GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(self.fixed(&what)?)),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.fixed(&what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.fixed(&what)?)),
            GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(self.fixed(&what)?)),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.fixed(&what)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.fixed(&what)?)),
            GgufValueType::Bool => {
                let offset = self.pos as u64;
                GgufValue::Bool(to_bool(self.fixed::<1>(&what)?[0], ctx, offset)?)
            }
            GgufValueType::String => GgufValue::Str(self.string(ctx)?),
            GgufValueType::Array => GgufValue::Array(self.array(ctx, depth)?),
        })
    }

    /// An array body: u32 element type, u64 count, elements.
    fn array(&mut self, ctx: Ctx, depth: usize) -> Result<GgufArray, GgufError> {
        if depth >= MAX_ARRAY_NESTING {
            return Err(GgufError::NestingTooDeep {
                context: ctx(),
                limit: MAX_ARRAY_NESTING,
            });
        }
        let type_id = self.u32(&|| format!("array element type of {}", ctx()))?;
        let ty = GgufValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            context: ctx(),
            type_id,
            offset: self.pos as u64 - 4,
        })?;
        let n = self.u64(&|| format!("array length of {}", ctx()))?;
        let min_each = match ty {
            GgufValueType::String => 8,
            GgufValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        };
        self.check_count(
            &format!("{}: array length", ctx()),
            n,
            min_each,
            self.pos - 8,
        )?;
        // n * min_each <= remaining: the allocations below are bounded by the file size.
        let what = || format!("array elements of {}", ctx());
        macro_rules! fixed_array {
            ($t:ty, $v:ident) => {{
                let raw = self.take(n * min_each, &what)?;
                GgufArray::$v(
                    raw.chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            GgufValueType::U8 => GgufArray::U8(self.take(n, &what)?.to_vec()),
            GgufValueType::I8 => fixed_array!(i8, I8),
            GgufValueType::U16 => fixed_array!(u16, U16),
            GgufValueType::I16 => fixed_array!(i16, I16),
            GgufValueType::U32 => fixed_array!(u32, U32),
            GgufValueType::I32 => fixed_array!(i32, I32),
            GgufValueType::F32 => fixed_array!(f32, F32),
            GgufValueType::U64 => fixed_array!(u64, U64),
            GgufValueType::I64 => fixed_array!(i64, I64),
            GgufValueType::F64 => fixed_array!(f64, F64),
            GgufValueType::Bool => {
                let offset = self.pos as u64;
                let raw = self.take(n, &what)?;
                let mut out = Vec::with_capacity(raw.len());
                for (i, &b) in raw.iter().enumerate() {
                    out.push(to_bool(b, ctx, offset + i as u64)?);
                }
                GgufArray::Bool(out)
            }
            GgufValueType::String => {
                let mut out = Vec::with_capacity(capped(n));
                for i in 0..n {
                    out.push(self.string(&|| format!("{}[{i}]", ctx()))?);
                }
                GgufArray::Str(out)
            }
            GgufValueType::Array => {
                let mut out = Vec::with_capacity(capped(n));
                for i in 0..n {
                    let inner_ctx = || format!("{}[{i}]", ctx());
                    out.push(self.array(&inner_ctx, depth + 1)?);
                }
                GgufArray::Array(out)
            }
        })
    }
}

/// Initial capacity for `count` parsed items. Counts are already checked against the bytes
/// that remain, but an in-memory item is larger than its smallest encoding (a `String` is 24
/// bytes, its encoding at least 8), so a damaged count in a multi-gigabyte file could still
/// ask for several times the file size: start small and let real items grow the vector.
fn capped(count: u64) -> usize {
    count.min(4096) as usize
}

fn to_bool(byte: u8, ctx: Ctx, offset: u64) -> Result<bool, GgufError> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(GgufError::InvalidBool {
            context: ctx(),
            byte,
            offset,
        }),
    }
}
