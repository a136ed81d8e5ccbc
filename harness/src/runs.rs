//! Shared, lazily computed work for the trials of one test run.
//!
//! Many trials read the same computation: every `stage::` trial of a prompt reads one diff.
//! Each (case, prompt) is computed once, on first demand, by whichever trial thread asks
//! first; the rest wait for it. Probes are pooled per (model, threads, options) and handed
//! out one trial at a time, so two threads never share a probe.

use crate::case::{Case, Prompt};
use crate::diff::{run_diff, DiffReport, DiffRequest};
use crate::judge::Labels;
use crate::probes::{self, ProbeSpec, SharedProbe};
use probe::wire::Watchdog;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ProbeKey {
    spec: ProbeSpec,
    model: PathBuf,
    threads: usize,
    options: Vec<(String, String)>,
    /// The watchdog's open deadline in ms (a case's `timeout` changes it).
    watchdog_ms: u128,
}

/// Probes ready for reuse.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<ProbeKey, Vec<SharedProbe>>>,
}

/// A probe checked out of the pool; returned when dropped.
pub struct Lease<'p> {
    pool: &'p Pool,
    key: ProbeKey,
    probe: Option<SharedProbe>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = SharedProbe;
    fn deref(&self) -> &SharedProbe {
        self.probe.as_ref().expect("leased")
    }
}
impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut SharedProbe {
        self.probe.as_mut().expect("leased")
    }
}
impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.probe.take() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.entry(self.key.clone()).or_default().push(p);
        }
    }
}

impl Pool {
    pub fn lease(
        &self,
        spec: &ProbeSpec,
        model: &Path,
        threads: usize,
        options: &[(&str, &str)],
        watchdog: Watchdog,
    ) -> Result<Lease<'_>, String> {
        let key = ProbeKey {
            spec: spec.clone(),
            model: model.to_path_buf(),
            threads,
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            watchdog_ms: watchdog.open.as_millis(),
        };
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&key)
            .and_then(Vec::pop);
        let probe = match idle {
            Some(p) => p,
            None => probes::open(spec, model, threads, options, watchdog)
                .map_err(|e| format!("cannot open {spec} on {}: {e}", model.display()))?,
        };
        Ok(Lease {
            pool: self,
            key,
            probe: Some(probe),
        })
    }
}

type Cell<T> = Arc<OnceLock<Result<Arc<T>, String>>>;

/// Everything one test run shares.
#[derive(Default)]
pub struct Runs {
    pub pool: Pool,
    models: Mutex<HashMap<String, Cell<PathBuf>>>,
    diffs: Mutex<HashMap<(String, String), Cell<DiffReport>>>,
    engine_runs: Mutex<HashMap<(String, String), Cell<EngineRun>>>,
    caps: Mutex<HashMap<(String, String), Cell<probe::Capabilities>>>,
}

/// The engine alone on one prompt: what engine-only snapshots record.
pub struct EngineRun {
    pub tokens: Vec<probe::Token>,
    pub forward: probe::Forward,
    /// Greedy tokens through the KV cache (`decode + 1` of them), when the prompt decodes.
    pub greedy: Vec<probe::Token>,
}

fn cell<K: std::hash::Hash + Eq + Clone, T>(map: &Mutex<HashMap<K, Cell<T>>>, key: &K) -> Cell<T> {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key.clone())
        .or_default()
        .clone()
}

impl Runs {
    /// The case's model file (forged once per preset and seed).
    pub fn model(&self, case: &Case) -> Result<Arc<PathBuf>, String> {
        let c = cell(&self.models, &case.model.to_string());
        c.get_or_init(|| {
            if let Some(why) = &case.unavailable {
                return Err(why.clone());
            }
            case.model
                .resolve()
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
    }

    pub fn engine_options(case: &Case) -> Vec<(String, String)> {
        let mut o = vec![("tokenizer".to_string(), case.tokenizer.to_string())];
        if let Some(f) = &case.fault {
            o.push(("fault".to_string(), f.clone()));
        }
        o
    }

    pub fn lease(&self, case: &Case, spec: &ProbeSpec) -> Result<Lease<'_>, String> {
        let model = self.model(case)?;
        let opts = Self::engine_options(case);
        let opts: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.pool
            .lease(spec, &model, case.threads, &opts, case.watchdog())
    }

    /// What `spec` can give on the case's model: stated for bitprobe's own probes (everything),
    /// asked of anything else (it is opened once to ask).
    pub fn caps(&self, case: &Case, spec: &ProbeSpec) -> Result<probe::Capabilities, String> {
        match spec {
            ProbeSpec::Engine | ProbeSpec::Reference(_) => Ok(probe::Capabilities::full()),
            ProbeSpec::External(_) => {
                let key = (spec.spec(), case.model.to_string());
                let c = {
                    let mut m = self.caps.lock().unwrap_or_else(|e| e.into_inner());
                    m.entry(key).or_default().clone()
                };
                c.get_or_init(|| {
                    let p = self.lease(case, spec)?;
                    Ok(Arc::new(p.info().caps()))
                })
                .as_ref()
                .map(|c| (**c).clone())
                .map_err(Clone::clone)
            }
        }
    }

    /// The engine alone on one prompt, computed once.
    pub fn engine_run(&self, case: &Case, prompt: &Prompt) -> Result<Arc<EngineRun>, String> {
        let c = cell(&self.engine_runs, &(case.id.clone(), prompt.id.clone()));
        c.get_or_init(|| {
            let mut e = self.lease(case, &ProbeSpec::Engine)?;
            let tokens = prompt.tokenize(e.as_mut()).map_err(|e| e.to_string())?;
            let capture = probe::Capture {
                stages: case.stages.clone(),
                layers: case.layers.clone(),
                positions: None,
            };
            let forward = e.forward(&tokens, &capture).map_err(|e| e.to_string())?;
            let greedy = if prompt.decode > 0 {
                e.generate(&probe::GenerateRequest::greedy(
                    tokens.clone(),
                    prompt.decode + 1,
                ))
                .map_err(|e| e.to_string())?
                .tokens
            } else {
                Vec::new()
            };
            Ok(Arc::new(EngineRun {
                tokens,
                forward,
                greedy,
            }))
        })
        .clone()
    }

    /// The engine-vs-oracle diff of one prompt, computed once.
    pub fn diff(&self, case: &Case, prompt: &Prompt) -> Result<Arc<DiffReport>, String> {
        let c = cell(&self.diffs, &(case.id.clone(), prompt.id.clone()));
        c.get_or_init(|| {
            let mut e = self.lease(case, &case.engine)?;
            let mut o = self.lease(case, &case.reference)?;
            let req = DiffRequest {
                prompt: prompt.clone(),
                stages: case.stages.clone(),
                layers: case.layers.clone(),
            };
            run_diff(
                e.as_mut(),
                o.as_mut(),
                Labels::new(case.engine.label(), case.reference.label()),
                &req,
                &case.tolerance,
            )
            .map(Arc::new)
            .map_err(|err| {
                // A crash with a known cause: say it (today's bitnet.cpp's stack limit).
                let mut m = err.to_string();
                if matches!(err, probe::Error::Crashed { .. }) {
                    let model = self.model(case).ok();
                    let n = prompt.tokenize(o.as_mut()).map(|t| t.len()).ok();
                    if let (Some(model), Some(n)) = (model, n) {
                        for spec in [&case.engine, &case.reference] {
                            if let Some(w) =
                                crate::probes::prompt_warning(spec, &model, case.threads, n)
                            {
                                m.push_str(&format!("\nlikely cause: {w}"));
                            }
                        }
                    }
                }
                m
            })
        })
        .clone()
    }
}
