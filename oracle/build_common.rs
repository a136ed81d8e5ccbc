//! The build logic both bitnet.cpp reference crates share: `oracle/build.rs` (the default
//! reference, bitnet.cpp of late 2024) and `oracle-2026/build.rs` (today's bitnet.cpp) each
//! include this file (`#[path]`) and call [`main`] with their [`Reference`].
//!
//! 1. Find the source (the vendored tree, or `$BITNET_CPP_DIR` where the crate allows it) and
//!    tell its [`Flavour`] from its layout; an unknown layout stops the build saying what is
//!    missing.
//! 2. Copy it to `<target dir>/<work>/src` and apply the flavour's patch set
//!    (`oracle/patches/` or `oracle/patches-2026/`, the order and conditions in its `series`
//!    file) to the copy, never to the source. The copy is only redone when the source listing
//!    (path, size, mtime of each file) or a patch changes, so a rerun leaves CMake's
//!    incremental build with nothing to do.
//! 3. CMake: Release, static, TL1/TL2 off (I2_S runs on bitnet.cpp's MAD kernels), OpenMP off,
//!    native CPU flags, clang (as bitnet.cpp's README asks), only the `llama` target (and its
//!    dependency `ggml`): nothing is installed. Then bindgen over `llama.h`.
//! 4. Tell the crate which bitnet.cpp it links (`BITPROBE_BITNET_*` rustc env vars, read by
//!    `oracle::source_info`): flavour, package, tree sha256, and exactly the patches applied.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

/// Folders (relative to the source root) that a build never needs; `.git` is skipped at any depth.
const SKIP: &[&str] = &[
    "build",
    "models",
    "3rdparty/llama.cpp/build",
    "3rdparty/llama.cpp/models",
];

/// Files every bitnet.cpp tree has, whatever its age: without them it is no bitnet.cpp
/// source, or its `3rdparty/llama.cpp` submodule is not populated.
const REQUIRED: &[&str] = &[
    "CMakeLists.txt",
    "include/ggml-bitnet.h",
    "src/ggml-bitnet-mad.cpp",
    "3rdparty/llama.cpp/CMakeLists.txt",
    "3rdparty/llama.cpp/include/llama.h",
    "3rdparty/llama.cpp/ggml/src/ggml.c",
    "3rdparty/llama.cpp/src/llama.cpp",
];

/// Which bitnet.cpp a tree is, told from its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// microsoft/BitNet of late 2024 (crates.io `bitnet-cpp-sys` 0.0.5): arch `bitnet` only
    /// (`build_bitnet`), the first I2_S MAD kernels; no `include/gemm-config.h`.
    Y2024,
    /// microsoft/BitNet of about 2026-03 (crates.io `bitnet-llm-sys` 1.0.2): archs
    /// `bitnet-b1.58` / `bitnet-25` natively (`build_bitnet_158` in its llama.cpp), the new
    /// I2_S kernels configured by `include/gemm-config.h`.
    Y2026,
}

impl Flavour {
    /// `2024` / `2026`: the suffix of the reference's name (`bitnet.cpp-2026`).
    pub fn year(self) -> &'static str {
        match self {
            Flavour::Y2024 => "2024",
            Flavour::Y2026 => "2026",
        }
    }

    /// The patch folder, relative to `oracle/`.
    pub fn patch_dir(self) -> &'static str {
        match self {
            Flavour::Y2024 => "patches",
            Flavour::Y2026 => "patches-2026",
        }
    }

    /// Tells the flavour from the layout: the 2026 tree has `include/gemm-config.h` and a
    /// `build_bitnet_158` graph in its llama.cpp, the 2024 tree has neither. A tree with one
    /// but not the other (a checkout between the two) is refused: no patch set here was
    /// reviewed against it.
    pub fn detect(src: &Path) -> Result<Flavour, String> {
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|f| !src.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            let hint = if missing.iter().any(|f| f.starts_with("3rdparty/")) {
                " (a git checkout needs `git submodule update --init --recursive`)"
            } else {
                ""
            };
            return Err(format!(
                "{} is not a bitnet.cpp source tree: it lacks {}{hint}",
                src.display(),
                missing.join(", ")
            ));
        }
        let llama_cpp = src.join("3rdparty/llama.cpp/src/llama.cpp");
        let text = fs::read(&llama_cpp)
            .map_err(|e| format!("cannot read {}: {e}", llama_cpp.display()))?;
        let has_158 = text.windows(16).any(|w| w == b"build_bitnet_158");
        let has_gemm_config = src.join("include/gemm-config.h").is_file();
        match (has_gemm_config, has_158) {
            (false, false) => Ok(Flavour::Y2024),
            (true, true) => Ok(Flavour::Y2026),
            (gemm, b158) => {
                let say =
                    |yes: bool, what: &str| format!("{} {what}", if yes { "has" } else { "lacks" });
                Err(format!(
                    "{} is neither bitnet.cpp layout this build knows: it {} and {} \
                     (the 2024 tree, bitnet-cpp-sys 0.0.5, has neither; the 2026 tree, \
                     bitnet-llm-sys 1.0.2, has both), so no reviewed patch set fits it",
                    src.display(),
                    say(gemm, "include/gemm-config.h"),
                    say(b158, "build_bitnet_158 in 3rdparty/llama.cpp/src/llama.cpp"),
                ))
            }
        }
    }
}

/// What a reference crate builds.
pub struct Reference {
    /// The vendored tree (unpacked by scripts/setup.sh or a scripts/setup.d step).
    pub vendored: PathBuf,
    /// Its stamp: `<package>-<version> <tree sha256>`, written after the sha256 checks.
    pub stamp: PathBuf,
    /// The flavour the vendored tree must be.
    pub flavour: Flavour,
    /// The script that vendors it, for the "not found" message.
    pub setup: &'static str,
    /// An environment variable that replaces the vendored tree with a checkout (any flavour).
    pub override_env: Option<&'static str>,
    /// `oracle/`: where the patch folders live.
    pub oracle_dir: PathBuf,
    /// Name of the shared work folder under the target dir (`bitnet-cpp`, `bitnet-cpp-2026`).
    pub work: &'static str,
    /// `identity_dump.cpp`, when this crate runs the patch-identity proof (2024 flavour only:
    /// the only patch set that touches compiled code of llama.cpp).
    pub identity_dump: Option<PathBuf>,
}

/// One entry of a patch folder's `series` file.
struct SeriesEntry {
    file: PathBuf,
    /// `if-missing <path>`: applied only when the tree lacks this file.
    if_missing: Option<String>,
}

pub fn main(r: Reference) {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=build.rs");
    println!(
        "cargo:rerun-if-changed={}",
        r.oracle_dir.join("build_common.rs").display()
    );
    println!("cargo::rustc-check-cfg=cfg(bitnet_flavour, values(\"2024\", \"2026\"))");

    let over = r.override_env.and_then(|var| {
        println!("cargo:rerun-if-env-changed={var}");
        env::var_os(var)
            .filter(|d| !d.is_empty())
            .map(|d| (var, PathBuf::from(d)))
    });
    let src = over.as_ref().map_or(r.vendored.clone(), |(_, d)| d.clone());
    let vendored = over.is_none();
    if vendored && !src.join("CMakeLists.txt").is_file() {
        let also = r
            .override_env
            .map_or(String::new(), |v| format!(" (or set {v})"));
        fail(&format!(
            "bitnet.cpp source not found at {}: run {}{also}",
            src.display(),
            r.setup
        ));
    }
    let flavour = Flavour::detect(&src).unwrap_or_else(|e| fail(&e));
    if vendored && flavour != r.flavour {
        fail(&format!(
            "{} looks like the {} bitnet.cpp, expected the {} one: rerun {}",
            src.display(),
            flavour.year(),
            r.flavour.year(),
            r.setup
        ));
    }
    let patches_dir = r.oracle_dir.join(flavour.patch_dir());
    println!("cargo:rerun-if-changed={}", patches_dir.display());
    if let Some(dump) = &r.identity_dump {
        println!("cargo:rerun-if-changed={}", dump.display());
    }
    // Cargo stats every file under a watched folder and reruns this script only when one is newer
    // than the last run; the build never writes there (it works on a copy).
    println!("cargo:rerun-if-changed={}", src.display());
    if vendored {
        println!("cargo:rerun-if-changed={}", r.stamp.display());
    }
    for tool in ["cmake", "clang", "clang++", "patch"] {
        if Command::new(tool).arg("--version").output().is_err() {
            fail(&format!(
                "`{tool}` not found (needed to build bitnet.cpp): run scripts/setup.sh"
            ));
        }
    }

    let work = shared_work_dir(&out_dir, r.work);
    let _lock = Lock::take(&work.join("lock"));
    let tree = work.join("src");
    let prepared = prepare_tree(&src, &tree, &patches_dir, vendored, &work.join("src.stamp"));
    let libs = build(&tree, &work.join("cmake"));
    bindings(&tree, &out_dir.join("bindings.rs"));
    match (&r.identity_dump, flavour) {
        (Some(dump), Flavour::Y2024) => identity_tools(&src, &tree, &work, &libs, dump),
        (Some(_), _) => {
            // Nothing to prove: this flavour's patches do not touch llama.cpp's code. The
            // identity tests see empty paths and say so.
            println!("cargo:rustc-env=BITPROBE_IDENTITY_DUMP_STOCK=");
            println!("cargo:rustc-env=BITPROBE_IDENTITY_DUMP_PATCHED=");
        }
        (None, _) => {}
    }

    for (dir, name) in libs {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=static={name}");
    }

    // Which bitnet.cpp this is, for `oracle::source_info` (receipts, `--version`,
    // `ModelInfo::implementation`): the flavour; the vendored package and the tree sha256
    // (recomputed here over the files copied, and for a vendored tree checked against the
    // stamp scripts/setup.sh wrote after its own check), or the override path; and the
    // patches actually applied.
    let package = match &over {
        None => {
            let stamp = fs::read_to_string(&r.stamp).unwrap_or_else(|e| {
                fail(&format!(
                    "cannot read {} ({e}): rerun {}",
                    r.stamp.display(),
                    r.setup
                ))
            });
            let mut it = stamp.split_whitespace();
            let (package, pinned) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if pinned != prepared.tree_sha256 {
                fail(&format!(
                    "{}: tree sha256 {}, but {} says scripts/setup verified {pinned:?}: \
                     the vendored source was changed; rerun {}",
                    src.display(),
                    prepared.tree_sha256,
                    r.stamp.display(),
                    r.setup
                ));
            }
            package.to_string()
        }
        Some((var, dir)) => format!("{var}={}", dir.display()),
    };
    println!("cargo:rustc-cfg=bitnet_flavour=\"{}\"", flavour.year());
    println!("cargo:rustc-env=BITPROBE_BITNET_FLAVOUR={}", flavour.year());
    println!("cargo:rustc-env=BITPROBE_BITNET_PACKAGE={package}");
    println!(
        "cargo:rustc-env=BITPROBE_BITNET_TREE_SHA256={}",
        prepared.tree_sha256
    );
    println!(
        "cargo:rustc-env=BITPROBE_BITNET_PATCHES={}",
        prepared.applied.join(";")
    );
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:rustc-link-lib=dylib=m");
    println!("cargo:rustc-link-lib=dylib=pthread");
}

/// `<target dir>/<name>`: where the patched copy and the CMake build live. Not OUT_DIR:
/// cargo gives a build script a new OUT_DIR whenever feature unification changes its build
/// dependencies (`cargo build -p oracle` vs `cargo test --workspace`), and each would pay the
/// full C++ build. The C++ build does not depend on the cargo profile or features.
fn shared_work_dir(out_dir: &Path, name: &str) -> PathBuf {
    // OUT_DIR = <target>/<profile>/build/<crate>-<hash>/out
    let dir = match out_dir.ancestors().nth(2) {
        Some(build) if build.file_name().is_some_and(|n| n == "build") => {
            build.ancestors().nth(2).map(|t| t.join(name))
        }
        _ => None,
    };
    let dir = dir.unwrap_or_else(|| out_dir.join(name));
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", dir.display())));
    dir
}

/// A lock on the shared work dir (a directory holding the owner's pid), so two variants of
/// this script never build in it at once. A lock whose owner died is taken over.
struct Lock(PathBuf);

impl Lock {
    fn take(path: &Path) -> Lock {
        let mut waited = false;
        loop {
            match fs::create_dir(path) {
                Ok(()) => {
                    let _ = fs::write(path.join("pid"), std::process::id().to_string());
                    return Lock(path.to_path_buf());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(path.join("pid")).unwrap_or_default();
                    let alive = owner
                        .trim()
                        .parse::<u32>()
                        .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                    let age = fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok());
                    let orphan = owner.is_empty() && age.is_some_and(|a| a.as_secs() > 60);
                    if (!alive && !owner.is_empty()) || orphan {
                        let _ = fs::remove_dir_all(path);
                        continue;
                    }
                    if !waited {
                        println!(
                            "cargo:warning=waiting for another build of bitnet.cpp ({})",
                            path.display()
                        );
                        waited = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(e) => fail(&format!("cannot create {}: {e}", path.display())),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Prints one line and stops the build: a build script's error line is what users see.
fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}

/// Reads `<patches_dir>/series`: one patch per line, in application order, `#` comments.
/// `<file>` is always applied; `<file> if-missing <path>` only when the tree lacks `<path>`.
/// Every `*.patch` in the folder must be listed, so none is left out unseen.
fn read_series(patches_dir: &Path) -> Vec<SeriesEntry> {
    let path = patches_dir.join("series");
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", path.display())));
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let entry = match words[..] {
            [file] => SeriesEntry {
                file: patches_dir.join(file),
                if_missing: None,
            },
            [file, "if-missing", what] => SeriesEntry {
                file: patches_dir.join(file),
                if_missing: Some(what.to_string()),
            },
            _ => fail(&format!(
                "{}:{}: expected `<file>.patch` or `<file>.patch if-missing <path>`, got {line:?}",
                path.display(),
                i + 1
            )),
        };
        if !entry.file.is_file() {
            fail(&format!(
                "{}:{}: no such patch {}",
                path.display(),
                i + 1,
                entry.file.display()
            ));
        }
        entries.push(entry);
    }
    let listed: Vec<&Path> = entries.iter().map(|e| e.file.as_path()).collect();
    for e in fs::read_dir(patches_dir)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", patches_dir.display())))
        .filter_map(Result::ok)
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "patch") && !listed.contains(&p.as_path()) {
            fail(&format!(
                "{} is not listed in {}: add it to the series or remove it",
                p.display(),
                path.display()
            ));
        }
    }
    entries
}

/// What `prepare_tree` made: the tree's sha256 and the patches applied (`name=sha256`).
struct Prepared {
    tree_sha256: String,
    applied: Vec<String>,
}

/// Copies `src` to `tree` and applies the series, unless `stamp` says this exact source
/// listing and patch set was already prepared (then its record is reused).
///
/// A patch whose condition holds must apply; if it does not, the build stops naming the patch
/// and what `patch` said — unless the tree already contains it (it applies in reverse), which
/// an override checkout may (upstream fixed it): then it is not applied, not listed, and a
/// warning says so. A vendored tree gets no such leniency.
fn prepare_tree(
    src: &Path,
    tree: &Path,
    patches_dir: &Path,
    vendored: bool,
    stamp: &Path,
) -> Prepared {
    let series = read_series(patches_dir);
    let mut listing = format!("source {}\n", src.display());
    let series_text = fs::read(patches_dir.join("series")).unwrap_or_default();
    writeln!(listing, "series {:016x}", fnv1a(&series_text)).unwrap();
    for e in &series {
        let text = fs::read(&e.file)
            .unwrap_or_else(|err| fail(&format!("cannot read {}: {err}", e.file.display())));
        writeln!(
            listing,
            "patch {} {} {:016x}",
            e.file.display(),
            text.len(),
            fnv1a(&text)
        )
        .unwrap();
    }
    list_files(src, Path::new(""), &mut listing);
    let record_path = stamp.with_extension("record");
    if fs::read_to_string(stamp).is_ok_and(|s| s == listing) && tree.is_dir() {
        if let Ok(record) = fs::read_to_string(&record_path) {
            let mut lines = record.lines();
            if let Some(sha) = lines.next().and_then(|l| l.strip_prefix("tree ")) {
                return Prepared {
                    tree_sha256: sha.to_string(),
                    applied: lines
                        .filter_map(|l| l.strip_prefix("applied "))
                        .map(str::to_string)
                        .collect(),
                };
            }
        }
    }

    let _ = fs::remove_file(stamp);
    if tree.exists() {
        fs::remove_dir_all(tree)
            .unwrap_or_else(|e| fail(&format!("cannot remove {}: {e}", tree.display())));
    }
    let mut hashes = Vec::new();
    copy_tree(src, tree, Path::new(""), &mut hashes);
    let tree_sha256 = tree_sha256(hashes);

    let mut applied = Vec::new();
    for e in &series {
        let name = e.file.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(what) = &e.if_missing {
            if tree.join(what).exists() {
                continue; // the tree has it: the patch is not needed
            }
        }
        let run = |reverse: bool, dry: bool| {
            let mut cmd = Command::new("patch");
            cmd.args(["-p1", "--batch", "--silent", "-d"])
                .arg(tree)
                .arg("-i")
                .arg(&e.file);
            cmd.arg(if reverse { "--reverse" } else { "--forward" });
            if dry {
                cmd.arg("--dry-run");
            }
            cmd.output()
                .unwrap_or_else(|err| fail(&format!("cannot run patch: {err}")))
        };
        let dry = run(false, true);
        if !dry.status.success() {
            let why = String::from_utf8_lossy(&dry.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&dry.stderr).lines())
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" | ");
            if !vendored && run(true, true).status.success() {
                println!(
                    "cargo:warning=patch {name} is already in {}: not applied, not listed",
                    src.display()
                );
                continue;
            }
            fail(&format!(
                "patch {} does not apply to {}{}: {why}",
                e.file.display(),
                src.display(),
                if vendored { " (the vendored tree)" } else { "" }
            ));
        }
        if !run(false, false).status.success() {
            fail(&format!("patch {name} failed on {}", tree.display()));
        }
        applied.push(format!(
            "{name}={}",
            sha256_hex(&fs::read(&e.file).unwrap())
        ));
    }
    let mut record = format!("tree {tree_sha256}\n");
    for a in &applied {
        writeln!(record, "applied {a}").unwrap();
    }
    fs::write(&record_path, record)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", record_path.display())));
    fs::write(stamp, listing)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", stamp.display())));
    Prepared {
        tree_sha256,
        applied,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// scripts/setup.sh's `tree_sha256`: the sha256 of `sha256sum`'s output over every file
/// (`<hex>  ./<path>` lines, sorted by path bytes as `LC_ALL=C sort -z` does).
fn tree_sha256(mut files: Vec<(String, String)>) -> String {
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut text = String::new();
    for (path, hex) in &files {
        writeln!(text, "{hex}  ./{path}").unwrap();
    }
    sha256_hex(text.as_bytes())
}

fn skipped(rel: &Path) -> bool {
    rel.file_name().is_some_and(|n| n == ".git") || SKIP.iter().any(|s| rel == Path::new(s))
}

/// Appends "path size mtime" for every file under `root/rel`, in a stable order.
fn list_files(root: &Path, rel: &Path, out: &mut String) {
    let mut entries: Vec<_> = fs::read_dir(root.join(rel))
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", root.join(rel).display())))
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let rel = rel.join(e.file_name());
        if skipped(&rel) {
            continue;
        }
        let meta = fs::metadata(e.path())
            .unwrap_or_else(|err| fail(&format!("cannot stat {}: {err}", e.path().display())));
        if meta.is_dir() {
            list_files(root, &rel, out);
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            writeln!(out, "{} {} {:?}", rel.display(), meta.len(), mtime).unwrap();
        }
    }
}

/// Copies the tree, collecting (relative path, sha256) of every file copied.
fn copy_tree(root: &Path, dst_root: &Path, rel: &Path, hashes: &mut Vec<(String, String)>) {
    let dst = dst_root.join(rel);
    fs::create_dir_all(&dst)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", dst.display())));
    for e in fs::read_dir(root.join(rel)).unwrap().filter_map(Result::ok) {
        let rel = rel.join(e.file_name());
        if skipped(&rel) {
            continue;
        }
        if fs::metadata(e.path()).is_ok_and(|m| m.is_dir()) {
            copy_tree(root, dst_root, &rel, hashes);
        } else {
            let to = dst_root.join(&rel);
            fs::copy(e.path(), &to)
                .unwrap_or_else(|err| fail(&format!("cannot copy {}: {err}", e.path().display())));
            let bytes = fs::read(&to)
                .unwrap_or_else(|err| fail(&format!("cannot read {}: {err}", to.display())));
            hashes.push((rel.to_string_lossy().into_owned(), sha256_hex(&bytes)));
        }
    }
}

/// 64-bit FNV-1a: a stable fingerprint of a patch's text for the stamp.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Runs CMake on the prepared tree; returns (folder, name) of each static library, in link order.
fn build(tree: &Path, cmake_dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let dst = cmake::Config::new(tree)
        .out_dir(cmake_dir)
        .profile("Release")
        // bitnet.cpp's own flags only (its CMake adds -O3 and -march=native), not cc's.
        .no_default_flags(true)
        .define("CMAKE_C_COMPILER", "clang")
        .define("CMAKE_CXX_COMPILER", "clang++")
        .define("CMAKE_POSITION_INDEPENDENT_CODE", "ON") // linked into PIE Rust executables
        .define("BUILD_SHARED_LIBS", "OFF")
        .define("BITNET_ARM_TL1", "OFF")
        .define("BITNET_X86_TL2", "OFF")
        .define("GGML_NATIVE", "ON")
        .define("GGML_OPENMP", "OFF")
        .define("GGML_CCACHE", "OFF")
        .define("LLAMA_BUILD_COMMON", "OFF")
        .define("LLAMA_BUILD_TESTS", "OFF")
        .define("LLAMA_BUILD_EXAMPLES", "OFF")
        .define("LLAMA_BUILD_SERVER", "OFF")
        .build_target("llama")
        .build();
    let build = dst.join("build/3rdparty/llama.cpp");
    let libs = [
        (build.join("src"), "llama"),
        (build.join("ggml/src"), "ggml"),
    ];
    for (dir, name) in &libs {
        if !dir.join(format!("lib{name}.a")).is_file() {
            fail(&format!("CMake built no lib{name}.a in {}", dir.display()));
        }
    }
    libs.into()
}

/// bindgen over llama.h (which includes ggml.h and ggml-backend.h).
fn bindings(tree: &Path, out: &Path) {
    let llama = tree.join("3rdparty/llama.cpp");
    let builder = bindgen::Builder::default()
        .header(llama.join("include/llama.h").to_string_lossy())
        .clang_arg(format!("-I{}", llama.join("include").display()))
        .clang_arg(format!("-I{}", llama.join("ggml/include").display()))
        .allowlist_function("llama_.*|ggml_.*|gguf_.*")
        .allowlist_type("llama_.*|ggml_.*|gguf_.*")
        .allowlist_var("LLAMA_.*|GGML_.*|GGUF_.*")
        .prepend_enum_name(false)
        .layout_tests(false);
    // bindgen panics when libclang is missing; turn that into our one line.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let generated =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate()));
    std::panic::set_hook(hook);
    match generated {
        Ok(Ok(b)) => b
            .write_to_file(out)
            .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", out.display()))),
        Ok(Err(e)) => fail(&format!("bindgen failed on llama.h: {e}")),
        Err(_) => fail("libclang not found (bindgen needs it for llama.h): run scripts/setup.sh"),
    }
}

/// The patch-identity proof's tools (oracle/tests/patch_identity.rs): a "stock" libllama.a
/// whose `llama.cpp.o` is compiled from the UNPATCHED `src/llama.cpp` of the source (the only
/// file patch 0002 touches) with the exact command CMake used for the patched one (from
/// `compile_commands.json`), swapped into a copy of the patched libllama.a with `ar`; and
/// `identity_dump.cpp` linked once against each library. Built once per prepared tree (the
/// stamp is the tree's stamp plus the dump tool's source and the compile command), never
/// incrementally. Paths go to the tests as `BITPROBE_IDENTITY_DUMP_{STOCK,PATCHED}`.
fn identity_tools(src: &Path, tree: &Path, work: &Path, libs: &[(PathBuf, &str)], dump_cpp: &Path) {
    let dir = work.join("identity");
    let (stock_tool, patched_tool) = (
        dir.join("identity-dump-stock"),
        dir.join("identity-dump-patched"),
    );
    println!(
        "cargo:rustc-env=BITPROBE_IDENTITY_DUMP_STOCK={}",
        stock_tool.display()
    );
    println!(
        "cargo:rustc-env=BITPROBE_IDENTITY_DUMP_PATCHED={}",
        patched_tool.display()
    );

    let llama_src = "3rdparty/llama.cpp/src/llama.cpp";
    let commands = work.join("cmake/build/compile_commands.json");
    let text = fs::read_to_string(&commands)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", commands.display())));
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| fail(&format!("{}: {e}", commands.display())));
    let patched_file = tree.join(llama_src);
    let entry = entries
        .iter()
        .find(|e| {
            e["file"]
                .as_str()
                .is_some_and(|f| Path::new(f) == patched_file)
        })
        .unwrap_or_else(|| {
            fail(&format!(
                "{}: no entry for {}",
                commands.display(),
                patched_file.display()
            ))
        });
    let (directory, command) = match (entry["directory"].as_str(), entry["command"].as_str()) {
        (Some(d), Some(c)) => (PathBuf::from(d), c.to_string()),
        _ => fail(&format!(
            "{}: entry for {llama_src} lacks directory/command",
            commands.display()
        )),
    };
    let dump_text = fs::read(dump_cpp)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", dump_cpp.display())));
    let tree_stamp = fs::read_to_string(work.join("src.stamp")).unwrap_or_default();
    let stamp_text = format!(
        "{tree_stamp}\ncommand {command}\ndump {:016x}\n",
        fnv1a(&dump_text)
    );
    let stamp = dir.join("identity.stamp");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text)
        && stock_tool.is_file()
        && patched_tool.is_file()
    {
        return;
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", dir.display())));
    let started = std::time::Instant::now();

    // 1. CMake's command for the patched file, pointed at the unpatched one and our object.
    let mut args: Vec<String> = command.split_whitespace().map(str::to_string).collect();
    if args.iter().any(|a| a.contains(['"', '\''])) {
        fail(&format!("cannot reuse a quoted compile command: {command}"));
    }
    let object = dir.join("stock/llama.cpp.o"); // the member name ar replaces
    fs::create_dir_all(object.parent().unwrap()).unwrap();
    let mut replace_after = |flag: &str, with: &Path| {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| fail(&format!("no {flag} in: {command}")));
        args[i + 1] = with.display().to_string();
    };
    replace_after("-o", &object);
    replace_after("-c", &src.join(llama_src));
    run(
        Command::new(&args[0])
            .args(&args[1..])
            .current_dir(&directory),
        "compile the unpatched llama.cpp",
    );

    // 2. A copy of the patched libllama.a with that object in place of llama.cpp.o.
    let find = |name: &str| {
        libs.iter()
            .find(|(_, n)| *n == name)
            .map(|(d, n)| d.join(format!("lib{n}.a")))
            .unwrap()
    };
    let (patched_lib, ggml_lib) = (find("llama"), find("ggml"));
    let stock_lib = dir.join("stock/libllama.a");
    fs::copy(&patched_lib, &stock_lib)
        .unwrap_or_else(|e| fail(&format!("cannot copy {}: {e}", patched_lib.display())));
    run(
        Command::new("ar").arg("r").arg(&stock_lib).arg(&object),
        "ar the stock llama.cpp.o",
    );

    // 3. The dump tool against each.
    let llama = tree.join("3rdparty/llama.cpp");
    for (lib, tool) in [(&stock_lib, &stock_tool), (&patched_lib, &patched_tool)] {
        run(
            Command::new("clang++")
                .args(["-std=c++17", "-O2"])
                .arg(format!("-I{}", llama.join("include").display()))
                .arg(format!("-I{}", llama.join("ggml/include").display()))
                .arg(dump_cpp)
                .arg(lib)
                .arg(&ggml_lib)
                .args(["-lpthread", "-lm", "-ldl", "-o"])
                .arg(tool),
            "link identity_dump",
        );
    }
    fs::write(&stamp, stamp_text)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", stamp.display())));
    // Timing goes to the build log (target/*/build/oracle-*/output), not to a cargo warning
    // that cargo would replay on every later build.
    println!(
        "identity tools built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot {what}: {e}")));
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        fail(&format!(
            "cannot {what} ({}): {}",
            out.status,
            err.lines().take(5).collect::<Vec<_>>().join(" | ")
        ));
    }
}
