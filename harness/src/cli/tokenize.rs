//! `bitprobe tokenize`: one probe's ids, or a probe, its reference and truth side by side.

use crate::*;

fn engine_options(tokenizer: &str) -> Vec<(&str, &str)> {
    vec![("tokenizer", tokenizer)]
}

pub(crate) fn tokenize(a: TokenizeArgs) -> Result<ExitCode> {
    let path = a.model.resolve()?;
    if a.compare {
        return tokenize_compare(&a, &path);
    }
    let spec = cli::spec(&a.probe)?;
    let text = a.prompt.as_deref().unwrap_or_default();
    let mut p = probes::open(
        &spec,
        &path,
        1,
        &engine_options(&a.tokenizer),
        a.timeout.watchdog()?,
    )?;
    if !p.info().caps().tokenize {
        bail!("{spec} cannot tokenize (it declares no `tokenize` capability)");
    }
    let ids = p.tokenize(text, !a.no_bos, a.parse_special)?;
    let pieces = p.pieces(&ids)?;
    println!("{} tokens", ids.len());
    for (id, piece) in ids.iter().zip(pieces) {
        println!("{id:>8}  {:?}", String::from_utf8_lossy(&piece));
    }
    Ok(ExitCode::SUCCESS)
}

/// One column of the side-by-side table: who, ids, pieces.
type Column<'a> = (&'a str, Vec<u32>, Vec<Vec<u8>>);

/// The probe (`--probe`), the reference (`--reference`) and, for Llama-3 vocabularies, truth
/// on one text or a list of texts.
pub(crate) fn tokenize_compare(a: &TokenizeArgs, path: &std::path::Path) -> Result<ExitCode> {
    let w = a.timeout.watchdog()?;
    let (spec_e, spec_o) = (cli::spec(&a.probe)?, cli::spec(&a.reference)?);
    let open = |spec: &ProbeSpec| -> Result<Box<dyn probe::Probe>> {
        let opts = if spec.takes_engine_options() {
            engine_options(&a.tokenizer)
        } else {
            Vec::new()
        };
        let p = probes::open(spec, path, 1, &opts, w)?;
        if !p.info().caps().tokenize {
            bail!("{spec} cannot tokenize (it declares no `tokenize` capability)");
        }
        Ok(p)
    };
    let (mut e, mut o) = (open(&spec_e)?, open(&spec_o)?);
    let (le, lo) = (spec_e.label(), spec_o.label());
    let truth = if e.info().n_vocab == 128_256 {
        Some(harness::trials::truth().map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let texts: Vec<String> = match (&a.inputs, &a.prompt) {
        (Some(f), _) => serde_json::from_str(
            &std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        )
        .with_context(|| format!("{} is not a JSON array of strings", f.display()))?,
        (None, Some(t)) => vec![t.clone()],
        (None, None) => bail!("give --prompt or --inputs"),
    };
    let (bos, ps) = (!a.no_bos, a.parse_special);
    let mut counts = [0usize; 3]; // engine≠oracle, oracle≠truth, engine≠truth
    let single = texts.len() == 1;
    for text in &texts {
        let t = harness::trials::Tokenized::of(e.as_mut(), o.as_mut(), truth, text, bos, ps)
            .map_err(anyhow::Error::msg)?;
        let (ei, oi, ti) = (t.engine, t.oracle, t.truth);
        let ne = |x: &[u32], y: &[u32]| x != y;
        counts[0] += ne(&ei, &oi) as usize;
        if let Some(ti) = &ti {
            counts[1] += ne(&oi, ti) as usize;
            counts[2] += ne(&ei, ti) as usize;
        }
        if a.emit_known_deviations {
            // Against truth where there is one, else the probe against the reference.
            let base = ti.as_ref().unwrap_or(&oi);
            let sides = [("engine", &le, &ei), ("oracle", &lo, &oi)];
            for (side, label, ids) in sides.into_iter().take(if ti.is_some() { 2 } else { 1 }) {
                if ids != base {
                    println!("[[tokenize.known_deviation]]");
                    println!("probe = \"{side}\"   # {label}");
                    println!("input = {}", toml::Value::String(text.clone()));
                    println!("parse_special = {ps}");
                    println!("ids = {ids:?}");
                    println!(
                        "reason = \"{label} differs from {}: say why\"\n",
                        if ti.is_some() { "truth" } else { lo.as_str() }
                    );
                }
            }
            continue;
        }
        if !single && ei == oi && ti.as_ref().is_none_or(|t| *t == ei) {
            continue;
        }
        println!("{text:?}");
        let mut cols: Vec<Column> = vec![
            (&le, ei.clone(), e.pieces(&ei)?),
            (&lo, oi.clone(), o.pieces(&oi)?),
        ];
        if let (Some(t), Some(ti)) = (&truth, &ti) {
            cols.push(("truth", ti.clone(), t.pieces(ti)));
        }
        let n = cols.iter().map(|c| c.1.len()).max().unwrap_or(0);
        let first_diff = (0..n).find(|&i| cols.iter().any(|c| c.1.get(i) != cols[0].1.get(i)));
        print!("  {:>4}", "#");
        for c in &cols {
            print!("  {:<28}", c.0);
        }
        println!();
        for i in 0..n {
            let mark = if Some(i) == first_diff { "→" } else { " " };
            print!("{mark} {i:>4}");
            for c in &cols {
                let cell = match (c.1.get(i), c.2.get(i)) {
                    (Some(id), Some(p)) => format!("{id:>6} {:?}", String::from_utf8_lossy(p)),
                    _ => String::new(),
                };
                print!("  {cell:<28}");
            }
            println!();
        }
        match first_diff {
            None => println!("  all agree"),
            Some(i) => {
                let who: Vec<String> = cols
                    .iter()
                    .skip(1)
                    .map(|c| format!("{} {} {le}", c.0, if c.1 == cols[0].1 { "=" } else { "≠" }))
                    .collect();
                println!("  first difference at token {i}: {}", who.join(", "));
            }
        }
    }
    if !single || a.emit_known_deviations {
        let total = texts.len();
        eprintln!(
            "{total} inputs: {le} ≠ {lo} on {}{}",
            counts[0],
            if truth.is_some() {
                format!(
                    ", {lo} ≠ truth on {}, {le} ≠ truth on {}",
                    counts[1], counts[2]
                )
            } else {
                String::new()
            }
        );
    }
    Ok(if counts[0] > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
