//! One module per `bitprobe` command; the argument types live in `main.rs`.

pub(crate) mod bench;
pub(crate) mod diff;
pub(crate) mod forge;
pub(crate) mod gallery;
pub(crate) mod inspect;
pub(crate) mod run;
pub(crate) mod sweep;
pub(crate) mod tokenize;
pub(crate) mod trace;
