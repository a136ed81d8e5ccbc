//! The harness: comparisons, case files, trials and reports shared by the `bitprobe` CLI and
//! the `cases` test binary (`harness/tests/cases.rs`).

pub mod bench;
pub mod case;
pub mod compare;
pub mod conformance;
pub mod diff;
pub mod floors;
pub mod inspect;
pub mod judge;
pub mod probes;
pub mod runs;
pub mod snapshot;
pub mod sweep;
pub mod tolerance;
pub mod trace;
pub mod trials;
