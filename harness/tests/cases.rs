//! `cargo test` entry point: every `cases/**/*.toml` expanded into named trials (see
//! `harness::trials` for the names), run by libtest-mimic so `--list`, `--exact`,
//! `--ignored`, filters and nextest all work.

use harness::case;
use harness::runs::Runs;
use harness::snapshot::workspace_root;
use harness::trials::{self, OracleMode, Outcome};
use libtest_mimic::{Arguments, Failed, Trial};
use std::sync::{Arc, OnceLock};

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(Runs::default)
}

fn main() {
    // Failing snapshot assertions panic inside their trial (caught there); print the message
    // without a backtrace, which would bury the diff insta has already printed.
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    let args = Arguments::from_args();
    let root = std::env::var_os("BITPROBE_CASES")
        .map(Into::into)
        .unwrap_or_else(|| workspace_root().join("cases"));
    let oracle = OracleMode::from_env();
    let mut out = Vec::new();
    for file in case::discover(&root) {
        // A file may declare one case per preset (`preset = [...]`).
        let cases = match case::load_all(&file, &root) {
            Ok(cases) => cases.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        for spec in cases
            .into_iter()
            .flat_map(|c| trials::expand(c, runs(), oracle))
        {
            let spec = Arc::new(spec);
            let ignored = spec.ignored.clone();
            let label = spec.label.clone().unwrap_or_default();
            let s = spec.clone();
            let trial = Trial::test(spec.name.clone(), move || match trials::check(runs(), &s) {
                Outcome::Pass => Ok(()),
                // Run with --ignored: say why it cannot run instead of passing silently.
                Outcome::Ignored(why) => Err(Failed::from(format!("cannot run: {why}"))),
                Outcome::Fail(m) => Err(Failed::from(m)),
            })
            .with_kind(match (&ignored, label.is_empty()) {
                (Some(why), _) => format!("ignored: {why}"),
                (None, false) => label,
                (None, true) => String::new(),
            })
            .with_ignored_flag(ignored.is_some());
            out.push(trial);
        }
    }
    libtest_mimic::run(&args, out).exit();
}
