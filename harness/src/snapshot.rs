//! insta snapshots, one per case file (plus its `::metrics` companion), in the top-level
//! `snapshots/` folder. Review changes with `cargo insta review`; CI never writes them.

use crate::case::Case;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

/// The workspace root (`cases/`, `snapshots/` live there).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ has a parent")
        .to_path_buf()
}

/// The snapshot file name for a case: `smoke/tiny-i2s` → `smoke__tiny-i2s`.
pub fn snapshot_name(case: &Case, suffix: Option<&str>) -> String {
    let mut n = case.id.replace('/', "__");
    if let Some(s) = suffix {
        n.push_str("__");
        n.push_str(s);
    }
    n
}

/// Asserts `text` against the stored snapshot; Err carries how to accept a change.
pub fn assert(case: &Case, suffix: Option<&str>, text: &str) -> Result<(), String> {
    let name = snapshot_name(case, suffix);
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(workspace_root().join("snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_input_file(&case.file);
    settings.set_description(format!("case {} ({})", case.id, case.description));
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_snapshot!(name.as_str(), text));
    }));
    r.map_err(|_| {
        let file = workspace_root().join("snapshots").join(format!("{name}.snap"));
        let state = if file.exists() { "differs from" } else { "is missing:" };
        format!(
            "the snapshot {state} {} (diff above).\n\
             If the change is intended, accept it locally: `cargo test -p harness --test cases -- snapshot::{}` then \
             `cargo insta review` (or INSTA_UPDATE=always). CI never writes snapshots.",
            file.display(),
            case.id
        )
    })
}
