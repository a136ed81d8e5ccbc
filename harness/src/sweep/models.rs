//! `models.toml`: the models a sweep runs, and which case files apply to each.
//!
//! The file is documented by its own commented default at the workspace root. One
//! `[[model]]` entry per model: a forge preset with a seed, or a GGUF path. A case file
//! applied to a model runs with that model: the case's own `model`, `threads` and
//! `tokenizer` are replaced by the entry's; its prompts, stages, tolerances, tokenizer
//! inputs and metamorphic checks are kept.
//!
//! `engines = ["engine", "numpy-example", …]` (probe specs, see [`crate::probes`]) runs the
//! model's cases once per engine, each judged against `reference` (default `oracle`): one
//! result per (model, engine) pair.

use crate::probes::{ModelSpec, ProbeSpec, Registry};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A parsed `models.toml`.
#[derive(Clone, Debug)]
pub struct ModelsFile {
    pub file: PathBuf,
    pub models: Vec<ModelEntry>,
}

/// One model of the sweep.
#[derive(Clone, Debug)]
pub struct ModelEntry {
    /// Unique name shown in reports and used to match baseline rows.
    pub name: String,
    pub spec: ModelSpec,
    /// Why the model cannot run (a path that does not exist): reported as skipped.
    pub unavailable: Option<String>,
    /// Engine tokenizer: `gguf`, `truth`, or a tokenizer.json path.
    pub tokenizer: String,
    /// Case ids or patterns (`smoke/*`), relative to the cases folder, without `.toml`.
    pub cases: Vec<String>,
    pub threads: usize,
    /// Measure engine and reference tok/s on this model (per engine, where both generate).
    pub speed: bool,
    /// The implementations under test, in order (default: our engine alone); no two alike.
    pub engines: Vec<ProbeSpec>,
    /// What each engine is judged against (default: the vendored bitnet.cpp, `oracle`).
    pub reference: ProbeSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    model: Vec<toml::Spanned<RawModel>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    #[serde(default)]
    cases: Option<Vec<String>>,
    #[serde(default)]
    threads: Option<usize>,
    #[serde(default)]
    speed: Option<bool>,
    #[serde(default)]
    engines: Option<toml::Spanned<Vec<toml::Spanned<String>>>>,
    #[serde(default)]
    reference: Option<toml::Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    preset: Option<String>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    tokenizer: Option<String>,
    #[serde(default)]
    cases: Option<Vec<String>>,
    #[serde(default)]
    threads: Option<usize>,
    #[serde(default)]
    speed: Option<bool>,
    #[serde(default)]
    engines: Option<toml::Spanned<Vec<toml::Spanned<String>>>>,
    #[serde(default)]
    reference: Option<toml::Spanned<String>>,
}

/// A `models.toml` that cannot be used: where, what, and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ModelsError(pub String);

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.chars().count(), |i| before[i + 1..].chars().count())
        + 1;
    (line, col)
}

/// Parses a `models.toml`. Paths are resolved against the file's folder after expanding
/// `~` and `$VAR`; a path that does not exist makes the entry unavailable, not an error.
pub fn load(file: &Path) -> Result<ModelsFile, ModelsError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ModelsError(format!("{}: cannot read: {e}", file.display())))?;
    parse(&text, file)
}

pub fn parse(text: &str, file: &Path) -> Result<ModelsFile, ModelsError> {
    let registry = Registry::global().map_err(|e| ModelsError(e.clone()))?;
    parse_with(text, file, registry)
}

/// [`parse`] with probe names looked up in `registry`.
pub fn parse_with(text: &str, file: &Path, registry: &Registry) -> Result<ModelsFile, ModelsError> {
    let at = |offset: usize| {
        let (l, c) = line_col(text, offset);
        format!("{}:{l}:{c}", file.display())
    };
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let place = e.span().map_or_else(|| file.display().to_string(), |s| at(s.start));
        ModelsError(format!("{place}: {}\nfix: see the comments at the top of models.toml (README, \"Nightly sweep\")", e.message().trim()))
    })?;
    let default_cases = raw.defaults.cases.unwrap_or_default();
    let default_threads = raw.defaults.threads.unwrap_or(1);
    let default_speed = raw.defaults.speed.unwrap_or(true);
    let probe_spec = |v: &toml::Spanned<String>| {
        ProbeSpec::parse(v.get_ref(), registry)
            .map_err(|m| ModelsError(format!("{}: {m}", at(v.span().start))))
    };
    let engines_of = |v: &toml::Spanned<Vec<toml::Spanned<String>>>| {
        if v.get_ref().is_empty() {
            return Err(ModelsError(format!(
                "{}: `engines` is empty: list at least one probe (\"engine\" is ours)",
                at(v.span().start)
            )));
        }
        let mut out: Vec<ProbeSpec> = Vec::new();
        for e in v.get_ref() {
            let s = probe_spec(e)?;
            if out.iter().any(|x| x.label() == s.label()) {
                return Err(ModelsError(format!(
                    "{}: engine '{}' is listed twice",
                    at(e.span().start),
                    e.get_ref()
                )));
            }
            out.push(s);
        }
        Ok(out)
    };
    let default_engines = match &raw.defaults.engines {
        Some(v) => engines_of(v)?,
        None => vec![ProbeSpec::Engine],
    };
    let default_reference = match &raw.defaults.reference {
        Some(v) => probe_spec(v)?,
        None => ProbeSpec::ORACLE,
    };
    let mut models: Vec<ModelEntry> = Vec::new();
    for m in raw.model {
        let place = at(m.span().start);
        let m = m.into_inner();
        let (spec, unavailable, fallback_name) = match (&m.preset, &m.path) {
            (Some(p), None) => {
                if engine::forge::preset(p).is_err() {
                    let names: Vec<_> = engine::forge::presets().iter().map(|p| p.name).collect();
                    return Err(ModelsError(format!("{place}: unknown preset '{p}'\nfix: use one of {}", names.join(", "))));
                }
                let seed = m.seed.unwrap_or(1);
                let name = if seed == 1 { p.clone() } else { format!("{p}-s{seed}") };
                (ModelSpec::Preset { name: p.clone(), seed }, None, name)
            }
            (None, Some(path)) => {
                let p = crate::case::expand_path(path, file);
                let why = (!p.exists()).then(|| format!("model file {} is absent", p.display()));
                let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.clone());
                (ModelSpec::Path(p), why, stem)
            }
            _ => {
                return Err(ModelsError(format!(
                    "{place}: a [[model]] needs exactly one of `preset = \"NAME\"` or `path = \"FILE\"`"
                )))
            }
        };
        if m.seed.is_some() && m.path.is_some() {
            return Err(ModelsError(format!(
                "{place}: `seed` applies to presets only; this entry has a `path`"
            )));
        }
        let name = m.name.unwrap_or(fallback_name);
        if models.iter().any(|x| x.name == name) {
            return Err(ModelsError(format!(
                "{place}: two models are named '{name}'; give one a different `name`"
            )));
        }
        let cases = m.cases.unwrap_or_else(|| default_cases.clone());
        if cases.is_empty() {
            return Err(ModelsError(format!(
                "{place}: model '{name}' has no case files: give it `cases = [...]` or set [defaults] cases"
            )));
        }
        let threads = m.threads.unwrap_or(default_threads);
        if threads == 0 {
            return Err(ModelsError(format!(
                "{place}: model '{name}': threads must be at least 1"
            )));
        }
        let engines = match &m.engines {
            Some(v) => engines_of(v)?,
            None => default_engines.clone(),
        };
        let reference = match &m.reference {
            Some(v) => probe_spec(v)?,
            None => default_reference.clone(),
        };
        let tokenizer = match m.tokenizer {
            None => "gguf".to_string(),
            Some(t) if t == "gguf" || t == "truth" => t,
            Some(t) => {
                let p = crate::case::expand_path(&t, file);
                p.display().to_string()
            }
        };
        models.push(ModelEntry {
            name,
            spec,
            unavailable,
            tokenizer,
            cases,
            threads,
            speed: m.speed.unwrap_or(default_speed),
            engines,
            reference,
        });
    }
    if models.is_empty() {
        return Err(ModelsError(format!(
            "{}: no [[model]] entries",
            file.display()
        )));
    }
    Ok(ModelsFile {
        file: file.to_path_buf(),
        models,
    })
}

/// The case files (ids, relative to `root`, without `.toml`) an entry applies, in sorted
/// order. Each pattern must match at least one file.
pub fn cases_for(
    entry: &ModelEntry,
    all: &[(String, PathBuf)],
    models_file: &Path,
) -> Result<Vec<PathBuf>, ModelsError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for pat in &entry.cases {
        let pat_id = pat.trim_end_matches(".toml");
        let glob = globset::Glob::new(pat_id)
            .map_err(|e| {
                ModelsError(format!(
                    "{}: model '{}': case pattern {pat:?}: {e}",
                    models_file.display(),
                    entry.name
                ))
            })?
            .compile_matcher();
        let before = out.len();
        for (id, file) in all {
            if glob.is_match(id) && !out.contains(file) {
                out.push(file.clone());
            }
        }
        if out.len() == before {
            return Err(ModelsError(format!(
                "{}: model '{}': case pattern {pat:?} matches no case file (ids look like `smoke/tiny-i2s`)",
                models_file.display(),
                entry.name
            )));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_entries() {
        let text = r#"
[defaults]
cases = ["smoke/*"]
threads = 2

[[model]]
preset = "tiny-i2s"

[[model]]
preset = "tiny-i2s"
seed = 7
speed = false

[[model]]
name = "real"
path = "/nonexistent/ggml-model-i2_s.gguf"
cases = ["long/x"]
"#;
        let f = parse(text, Path::new("/w/models.toml")).unwrap();
        assert_eq!(f.models.len(), 3);
        assert_eq!(f.models[0].name, "tiny-i2s");
        assert_eq!(f.models[0].threads, 2);
        assert_eq!(f.models[0].cases, vec!["smoke/*"]);
        assert_eq!(f.models[1].name, "tiny-i2s-s7");
        assert!(!f.models[1].speed);
        assert!(f.models[2]
            .unavailable
            .as_deref()
            .unwrap()
            .contains("/nonexistent/ggml-model-i2_s.gguf"));
        assert_eq!(f.models[2].cases, vec!["long/x"]);
    }

    #[test]
    fn errors_name_the_place() {
        let e = parse("[[model]]\npreset = \"tiny-nope\"\n", Path::new("m.toml"))
            .unwrap_err()
            .0;
        assert!(
            e.contains("m.toml:1:1") && e.contains("tiny-nope") && e.contains("tiny-i2s"),
            "{e}"
        );
        let e = parse(
            "[[model]]\npreset = \"tiny-i2s\"\ncases = [\"a\"]\nthreds = 1\n",
            Path::new("m.toml"),
        )
        .unwrap_err()
        .0;
        assert!(e.contains("m.toml:4:1") && e.contains("threds"), "{e}");
        let e = parse("[[model]]\npreset = \"tiny-i2s\"\n", Path::new("m.toml"))
            .unwrap_err()
            .0;
        assert!(e.contains("no case files"), "{e}");
        let e = parse("[defaults]\ncases=[\"a\"]\n[[model]]\npreset = \"tiny-i2s\"\n[[model]]\npreset = \"tiny-i2s\"\n", Path::new("m.toml"))
            .unwrap_err()
            .0;
        assert!(e.contains("m.toml:5:1") && e.contains("two models"), "{e}");
    }

    #[test]
    fn engines_and_reference() {
        let dir = std::env::temp_dir().join(format!("bitprobe-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let reg = dir.join("probes.toml");
        std::fs::write(&reg, "[probe.mine]\ncommand = [\"python3\", \"m.py\"]\n").unwrap();
        let r = Registry::load(&reg).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let text = "[defaults]\ncases = [\"a\"]\n\n[[model]]\npreset = \"tiny-i2s\"\n\n[[model]]\npreset = \"tiny-f32\"\nengines = [\"engine\", \"mine\"]\nreference = \"bitnet.cpp-2026\"\n";
        let f = parse_with(text, Path::new("m.toml"), &r).unwrap();
        assert_eq!(f.models[0].engines, vec![ProbeSpec::Engine]);
        assert_eq!(f.models[0].reference, ProbeSpec::ORACLE);
        let labels: Vec<String> = f.models[1].engines.iter().map(|e| e.label()).collect();
        assert_eq!(labels, ["engine", "mine"]);
        assert_eq!(f.models[1].reference.label(), "bitnet.cpp-2026");
        // An unknown probe: file:line:col of the array element.
        let e = parse_with(
            "[[model]]\npreset = \"tiny-i2s\"\ncases = [\"a\"]\nengines = [\"engine\", \"nope\"]\n",
            Path::new("m.toml"),
            &r,
        )
        .unwrap_err()
        .0;
        assert!(
            e.contains("m.toml:4:22") && e.contains("unknown probe 'nope'") && e.contains("mine"),
            "{e}"
        );
        let e = parse_with(
            "[[model]]\npreset = \"tiny-i2s\"\ncases = [\"a\"]\nreference = \"nope\"\n",
            Path::new("m.toml"),
            &r,
        )
        .unwrap_err()
        .0;
        assert!(e.contains("m.toml:4:13"), "{e}");
        let e = parse_with(
            "[[model]]\npreset = \"tiny-i2s\"\ncases = [\"a\"]\nengines = [\"mine\", \"mine\"]\n",
            Path::new("m.toml"),
            &r,
        )
        .unwrap_err()
        .0;
        assert!(e.contains("m.toml:4:20") && e.contains("twice"), "{e}");
        let e = parse_with(
            "[[model]]\npreset = \"tiny-i2s\"\ncases = [\"a\"]\nengines = []\n",
            Path::new("m.toml"),
            &r,
        )
        .unwrap_err()
        .0;
        assert!(e.contains("m.toml:4:11") && e.contains("empty"), "{e}");
    }

    #[test]
    fn case_patterns() {
        let all = vec![
            (
                "smoke/tiny-i2s".to_string(),
                PathBuf::from("c/smoke/tiny-i2s.toml"),
            ),
            (
                "smoke/tiny-f16".to_string(),
                PathBuf::from("c/smoke/tiny-f16.toml"),
            ),
            ("long/x".to_string(), PathBuf::from("c/long/x.toml")),
        ];
        let f = parse(
            "[[model]]\npreset = \"tiny-i2s\"\ncases = [\"smoke/*\", \"long/x.toml\"]\n",
            Path::new("m.toml"),
        )
        .unwrap();
        assert_eq!(
            cases_for(&f.models[0], &all, Path::new("m.toml"))
                .unwrap()
                .len(),
            3
        );
        let f = parse(
            "[[model]]\npreset = \"tiny-i2s\"\ncases = [\"nope/*\"]\n",
            Path::new("m.toml"),
        )
        .unwrap();
        let e = cases_for(&f.models[0], &all, Path::new("m.toml"))
            .unwrap_err()
            .0;
        assert!(e.contains("matches no case file"), "{e}");
    }
}
