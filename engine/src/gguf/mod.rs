//! GGUF: the model file format bitnet.cpp (a llama.cpp fork) reads.
//!
//! - [`GgufFile`] reads GGUF v2 and v3 over a memory map (or owned bytes, for tests and
//!   fuzzing) and hands out zero-copy `&[u8]` views of tensor data. It validates every length,
//!   count, offset and shape against the file before allocating or slicing: malformed input
//!   is a [`GgufError`] naming the key/tensor, the offset and the limit, never a panic.
//! - [`GgufWriter`] writes GGUF v3 with 32-byte alignment, deterministically (insertion
//!   order), so the forge can produce byte-identical models.
//! - [`GgmlType`] knows every ggml tensor type id of the vendored ggml.h, including
//!   bitnet.cpp's I2_S (36), whose size is `n / 4 + 32` bytes as in `ggml_nbytes`.
//!
//! The file layout mirrors `gguf_init_from_file` / `gguf_write_to_buf` in the vendored
//! `3rdparty/llama.cpp/ggml/src/ggml.c`.

mod error;
mod reader;
mod types;
mod value;
mod writer;

pub use error::GgufError;
pub use reader::{
    GgufFile, TensorInfo, GGML_MAX_DIMS, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, HUGE_PAGE_MIN_FILE,
    HUGE_PAGE_SHARE, MAX_ARRAY_NESTING,
};
pub use types::{GgmlType, QK_I2_S, QK_K};
pub use value::{GgufArray, GgufValue, GgufValueType};
pub use writer::{GgufWriter, GGUF_WRITE_VERSION};
