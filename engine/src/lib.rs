//! An implementation of `Probe` for bitprobe's own BitNet b1.58 engine, in Rust.
//!
//! Built to be what the engines in the field failed to be: right (it agrees with
//! bitnet.cpp within tolerances the harness measures), explainable (every stage of
//! [`forward`] is observable through `probe::Capture`) and fast. Map:
//!
//! - [`gguf`]: the file format (zero-copy reader, writer);
//! - [`model`]: hyperparameters and weight views, built from the file in one place;
//! - [`forward`]: the forward pass, top to bottom in bitnet.cpp's stage order;
//! - [`kernels`], [`quant`]: matmuls over the weight formats, norms, RoPE, attention;
//! - [`tokenizer`]: the GGUF vocab as llama.cpp reads it, and the trained Llama-3 "truth";
//! - [`forge`]: synthetic models in exactly the formats bitnet.cpp reads;
//! - [`faults`]: the known-bug gallery (only with the `faults` feature);
//! - [`EngineProbe`]: the `Probe` implementation.

pub mod ceiling;
pub mod engine_probe;
pub mod faults;
pub mod forge;
pub mod forward;
pub mod gguf;
pub mod hugepage;
pub mod kernels;
pub mod model;
pub mod quant;
pub mod sampling;
pub mod tokenizer;

pub use engine_probe::EngineProbe;
