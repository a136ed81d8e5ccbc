//! `bitprobe inspect`: what a GGUF file holds.

use crate::*;

pub(crate) fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let path = match a.file {
        Some(p) => p,
        None => a.model.resolve()?,
    };
    let t = std::time::Instant::now();
    let r = harness::inspect::inspect(&path)
        .with_context(|| format!("inspecting {}", path.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", harness::inspect::render(&r));
    }
    eprintln!("inspected in {:.2?}", t.elapsed());
    Ok(ExitCode::SUCCESS)
}
