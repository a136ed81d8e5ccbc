//! `GgufError`: everything that can go wrong reading or writing a GGUF file. Every message
//! names what was being read, where (byte offset), and the limit it ran into.

use std::path::PathBuf;

/// A GGUF read, write or lookup failure.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("gguf: cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("gguf: {0} is not a regular file (a folder, FIFO or device): give a GGUF file")]
    NotAFile(PathBuf),

    #[error("gguf: write failed: {0}")]
    Write(#[source] std::io::Error),

    #[error("gguf: bad magic 0x{found:08x} at byte 0 (expected 'GGUF')")]
    BadMagic { found: u32 },

    #[error("gguf: unsupported version {0} (this reader handles versions 2 and 3)")]
    UnsupportedVersion(u32),

    #[error(
        "gguf: truncated header: need {need} bytes at offset {offset} reading {what}, \
         file has {file_size}"
    )]
    Truncated {
        what: String,
        need: u64,
        offset: u64,
        file_size: u64,
    },

    #[error(
        "gguf: {context}: string length {len} at offset {offset} runs past end of file \
         (size {file_size})"
    )]
    StringPastEnd {
        context: String,
        len: u64,
        offset: u64,
        file_size: u64,
    },

    #[error("gguf: {context}: string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { context: String, offset: u64 },

    #[error(
        "gguf: {what} {count} at offset {offset} cannot fit: each needs at least {min_each} \
         bytes and only {remaining} remain (file size {file_size})"
    )]
    CountTooLarge {
        what: String,
        count: u64,
        offset: u64,
        min_each: u64,
        remaining: u64,
        file_size: u64,
    },

    #[error("gguf: {context}: unknown value type {type_id} at offset {offset}")]
    UnknownValueType {
        context: String,
        type_id: u32,
        offset: u64,
    },

    #[error("gguf: {context}: bool byte {byte} at offset {offset} is neither 0 nor 1")]
    InvalidBool {
        context: String,
        byte: u8,
        offset: u64,
    },

    #[error("gguf: {context}: arrays nested deeper than {limit} levels")]
    NestingTooDeep { context: String, limit: usize },

    #[error("gguf: duplicate metadata key '{0}'")]
    DuplicateKey(String),

    #[error("gguf: duplicate tensor name '{0}'")]
    DuplicateTensor(String),

    #[error("gguf: metadata key 'general.alignment': {value} is not a power of two")]
    BadAlignment { value: u64 },

    #[error("gguf: tensor {tensor}: {n_dims} dimensions, ggml supports at most 4")]
    TooManyDims { tensor: String, n_dims: u32 },

    #[error("gguf: tensor {tensor}: unknown type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },

    #[error("gguf: tensor {tensor}: shape {shape:?} overflows a 63-bit element count")]
    ShapeOverflow { tensor: String, shape: Vec<u64> },

    #[error(
        "gguf: tensor {tensor}: shape {shape:?} has {n_elements} elements, not a multiple of \
         block size {block_size} of type {ty}"
    )]
    NotBlockMultiple {
        tensor: String,
        shape: Vec<u64>,
        n_elements: u64,
        block_size: u64,
        ty: &'static str,
    },

    #[error(
        "gguf: tensor {tensor}: shape {shape:?} has rows of {row} elements, not a multiple of \
         {multiple} as type {ty} requires"
    )]
    RowNotMultiple {
        tensor: String,
        shape: Vec<u64>,
        row: u64,
        multiple: u64,
        ty: &'static str,
    },

    #[error("gguf: tensor {tensor}: type {ty} cannot hold shape {shape:?}")]
    UnsizableShape {
        tensor: String,
        shape: Vec<u64>,
        ty: &'static str,
    },

    #[error(
        "gguf: tensor {tensor}: data offset {offset} is not a multiple of alignment {alignment}"
    )]
    MisalignedOffset {
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    #[error("gguf: tensor {tensor}: data ends at byte {end}, file has {file_size}")]
    DataOutOfBounds {
        tensor: String,
        end: u128,
        file_size: u64,
    },

    #[error("gguf: metadata key '{0}' not found")]
    MissingKey(String),

    #[error("gguf: metadata key '{key}': expected {expected}, found {found}")]
    WrongType {
        key: String,
        expected: String,
        found: String,
    },

    #[error("gguf: tensor '{0}' not found")]
    MissingTensor(String),

    #[error("gguf: tensor {tensor}: {got} data bytes given, type {ty} with shape {shape:?} needs {expected}")]
    WrongDataSize {
        tensor: String,
        shape: Vec<u64>,
        ty: &'static str,
        expected: u64,
        got: u64,
    },
}
