//! Trace folders: one probe's stage tensors on disk, and the first divergence between two.
//!
//! [`record`] runs one probe over a prompt with [`Capture::all`] and writes a folder;
//! [`read`] loads one; [`trace_diff`] compares two the way `bitprobe diff` compares two live
//! probes, and gives the same report ([`DiffReport`], built with [`diff::compare_stages`] and
//! [`diff::first_divergence`]). Folder B plays the oracle's part: it is the reference NMSE is
//! measured against. Two engine versions, the engine and the oracle, or a third-party engine
//! that writes this format can be compared without running anything again.
//!
//! # Format, version 1
//!
//! A trace is a folder with a manifest `trace.json` and one JSON file per stage tensor, plus
//! with `--raw` the tensor's f32 values as a `.npy` file. Fields marked **required** are all a
//! third-party writer must provide; bitprobe writes every field. `docs/trace-format.md` says
//! the same for writers in other languages, with the shape of every stage.
//!
//! `trace.json`:
//!
//! | field | | meaning |
//! |---|---|---|
//! | `format` | **required** | `"bitprobe-trace"` |
//! | `version` | **required** | `1` |
//! | `tokens` | **required** | prompt token ids, BOS included |
//! | `files` | optional | stage JSON file names; absent = every `*.json` but `trace.json` |
//! | `decode` | optional | decode steps: `[{step, position, input, chosen}]`, step 1-based |
//! | `generated` | optional | greedy tokens: the first, then each step's `chosen` |
//! | `weight_type` | optional | `I2_S`, `TQ1_0`, `TQ2_0`, `F16`, `F32`: picks the tolerances (default `F32`) |
//! | `probe`, `implementation` | optional | who computed it (`engine`, `engine 0.1.0`) |
//! | `model` | optional | `{path, bytes, blake3}` of the GGUF file |
//! | `prompt`, `add_bos`, `parse_special`, `chat` | optional | how the prompt was tokenized |
//! | `info` | optional | the probe's `probe::ModelInfo` |
//! | `raw` | optional | whether `.npy` data was written |
//!
//! One stage file, named `pos0003.blk.1.attn_q.json` by bitprobe (any name will do):
//!
//! | field | | meaning |
//! |---|---|---|
//! | `stage` | **required** | `blk.N.<stage>` or a global stage (`inp_embd`, `result_norm`, `result_output`); names as in `probe::Stage` |
//! | `position` | **required** | absolute token position, 0 = first prompt token |
//! | `shape` | **required** | row-major dimensions (`attn_q`: `[n_head, head_dim]`) |
//! | `blake3` | **required** | blake3 of the values as little-endian f32 bytes, lowercase hex |
//! | `phase` | optional | `"prompt"` (default) or `"decode"` |
//! | `step` | required for `decode` | decode step, 1-based |
//! | `layer` | optional | must agree with `stage` |
//! | `data` | optional | `.npy` file in the folder (NPY v1.0–3.0, `'<f4'`, C order); absent = `<stem>.npy` if it exists; checked against `blake3` |
//! | `rms`, `mean`, `min`, `max` | optional | over the finite values (`null` when none) |
//! | `nan`, `pos_inf`, `neg_inf` | optional | counts |
//!
//! Tensors are the ones `probe::Probe::forward` captures: per position, the prompt pass in one
//! batch from an empty KV cache; decode steps one token at a time through the cache. When
//! both folders have data for every tensor, `trace-diff` reports NMSE, cosine and max |Δ|
//! against the tolerances, exactly as `diff`; otherwise it compares hashes only — a row is
//! bit-exact or not — and says so (two implementations agree bit for bit only where their
//! arithmetic is identical, so a hash difference alone does not mean a bug).

mod diff;
mod format;
pub mod npy;
mod read;
mod record;

pub use diff::{render, trace_diff, CompareMode, TraceDiff, TraceDiffOptions, TraceSide};
pub use format::*;
pub use npy::{read_npy, write_npy};
pub use read::{read, Trace, TracedTensor};
pub use record::{record, TraceRequest};
