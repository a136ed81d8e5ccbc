//! `bitprobe forge`: write a synthetic model.

use crate::*;

pub(crate) fn forge(a: ForgeArgs) -> Result<ExitCode> {
    if a.list {
        for p in engine::forge::presets() {
            println!("{:<24} {}", p.name, p.description);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (name, out) = (
        a.preset.expect("clap requires it"),
        a.out.expect("clap requires it"),
    );
    let seed = a.preset_seed.unwrap_or(1);
    let preset = engine::forge::preset(&name)?;
    let t = std::time::Instant::now();
    {
        let _spin = cli::spinner(&format!("forging {name} (seed {seed})"));
        engine::forge::forge_to(preset, seed, &out)
            .with_context(|| format!("forging {name} into {}", out.display()))?;
    }
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "forged {name} (seed {seed}) → {} ({:.1} MB in {:.1?})",
        out.display(),
        size as f64 / 1e6,
        t.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}
