//! `bitprobe conformance SPEC`: does a probe speak the protocol as it declares?

use crate::*;
use harness::conformance::{self, Status};

pub(crate) fn conformance(a: ConformanceArgs) -> Result<ExitCode> {
    let spec = cli::spec(&a.probe)?;
    let model = match &a.model {
        Some(p) => ModelSpec::Path(p.clone()),
        None => ModelSpec::Preset {
            name: a.preset.clone(),
            seed: a.preset_seed,
        },
    };
    let path = resolve_model(&model)?;
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        bail!("--timeout {}: give a number of seconds > 0", a.timeout);
    }
    let watchdog = probe::wire::Watchdog::flat(a.timeout);
    let checks = {
        let _spin = cli::spinner(&format!("checking {spec}"));
        conformance::run(&spec, &path, a.threads.get(), watchdog)
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{}", conformance::render(&spec, &checks));
    }
    Ok(if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
