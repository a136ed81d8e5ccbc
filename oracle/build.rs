//! Builds bitnet.cpp (its llama.cpp fork, libraries `llama` and `ggml`) with CMake and
//! generates Rust bindings for `llama.h` / `ggml.h`.
//!
//! Source: `$BITNET_CPP_DIR` when set, else `oracle/vendor/bitnet` (unpacked by
//! `scripts/setup.sh`). `BITNET_CPP_DIR` must be a bitnet.cpp checkout with its submodule
//! populated: `CMakeLists.txt`, `include/ggml-bitnet.h`, `src/ggml-bitnet-mad.cpp` and
//! `3rdparty/llama.cpp/{CMakeLists.txt,include/llama.h,ggml/,src/}` (run
//! `git submodule update --init --recursive` in it). Its `.git`, `build` and `models`
//! folders are not copied.
//!
//! The source is copied to `<target dir>/bitnet-cpp/src` and our patches (`oracle/patches/*.patch`, applied
//! in name order with `patch -p1`) are applied to the copy, never to the source. The copy is
//! only redone when the source listing (path, size, mtime of each file) or a patch changes, so
//! a rerun of this script leaves CMake's incremental build with nothing to do.
//!
//! Build: Release, static, TL1/TL2 off (I2_S runs on bitnet.cpp's MAD kernels), OpenMP off,
//! native CPU flags, clang (as bitnet.cpp's README asks), only the `llama` target (and its
//! dependency `ggml`): nothing is installed.

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

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let patches_dir = manifest_dir.join("patches");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", patches_dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("src/identity_dump.cpp").display()
    );
    println!("cargo:rerun-if-env-changed=BITNET_CPP_DIR");

    let (src, vendored) = match env::var_os("BITNET_CPP_DIR") {
        Some(dir) if !dir.is_empty() => (PathBuf::from(dir), false),
        _ => (manifest_dir.join("vendor/bitnet"), true),
    };
    if !src.join("3rdparty/llama.cpp/include/llama.h").is_file()
        || !src.join("CMakeLists.txt").is_file()
    {
        fail(&format!(
            "bitnet.cpp source not found at {}: run scripts/setup.sh (or set BITNET_CPP_DIR)",
            src.display()
        ));
    }
    // Cargo stats every file under a watched folder and reruns this script only when one is newer
    // than the last run; the build never writes there (it works on a copy).
    println!("cargo:rerun-if-changed={}", src.display());
    for tool in ["cmake", "clang", "clang++", "patch"] {
        if Command::new(tool).arg("--version").output().is_err() {
            fail(&format!(
                "`{tool}` not found (needed to build bitnet.cpp): run scripts/setup.sh"
            ));
        }
    }

    let work = shared_work_dir(&out_dir);
    let _lock = Lock::take(&work.join("lock"));
    let tree = work.join("src");
    prepare_tree(&src, &tree, &patches_dir, vendored, &work.join("src.stamp"));
    let libs = build(&tree, &work.join("cmake"));
    bindings(&tree, &out_dir.join("bindings.rs"));
    identity_tools(
        &src,
        &tree,
        &work,
        &libs,
        &manifest_dir.join("src/identity_dump.cpp"),
    );

    for (dir, name) in libs {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=static={name}");
    }
    // Which bitnet.cpp this is, for `ModelInfo::implementation`: the vendored package and its
    // tree sha256 as scripts/setup.sh verified it (oracle/vendor/.stamp), or the override path.
    let source_id = if vendored {
        let stamp = fs::read_to_string(manifest_dir.join("vendor/.stamp")).unwrap_or_default();
        match stamp.split_whitespace().collect::<Vec<_>>()[..] {
            [package, sha, ..] => format!("{package}, tree {}", &sha[..sha.len().min(12)]),
            _ => "bitnet-cpp-sys 0.0.5".to_string(),
        }
    } else {
        format!("BITNET_CPP_DIR={}", src.display())
    };
    println!("cargo:rustc-env=BITPROBE_BITNET_SOURCE={source_id}");
    // The full identity for sweep receipts: package, tree sha256, and each patch's sha256.
    let (package, tree_sha) = if vendored {
        let stamp = fs::read_to_string(manifest_dir.join("vendor/.stamp")).unwrap_or_default();
        let mut it = stamp.split_whitespace();
        (
            it.next().unwrap_or("bitnet-cpp-sys-0.0.5").to_string(),
            it.next().unwrap_or("unknown").to_string(),
        )
    } else {
        (
            format!("BITNET_CPP_DIR={}", src.display()),
            "unknown".to_string(),
        )
    };
    println!("cargo:rustc-env=BITPROBE_BITNET_PACKAGE={package}");
    println!("cargo:rustc-env=BITPROBE_BITNET_TREE_SHA256={tree_sha}");
    println!(
        "cargo:rustc-env=BITPROBE_BITNET_PATCHES={}",
        patch_digests(&patches_dir)
    );
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:rustc-link-lib=dylib=m");
    println!("cargo:rustc-link-lib=dylib=pthread");
}

/// `name=sha256;name=sha256` of every patch applied, in application order.
fn patch_digests(patches_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut patches: Vec<PathBuf> = fs::read_dir(patches_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "patch"))
                .collect()
        })
        .unwrap_or_default();
    patches.sort();
    let mut out = Vec::new();
    for p in patches {
        let bytes =
            fs::read(&p).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", p.display())));
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.push(format!(
            "{}={hex}",
            p.file_name().unwrap().to_string_lossy()
        ));
    }
    out.join(";")
}

/// `<target dir>/bitnet-cpp`: where the patched copy and the CMake build live. Not OUT_DIR:
/// cargo gives this script a new OUT_DIR whenever feature unification changes its build
/// dependencies (`cargo build -p oracle` vs `cargo test --workspace`), and each would pay the
/// full C++ build. The C++ build does not depend on the cargo profile or features.
fn shared_work_dir(out_dir: &Path) -> PathBuf {
    // OUT_DIR = <target>/<profile>/build/oracle-<hash>/out
    let dir = match out_dir.ancestors().nth(2) {
        Some(build) if build.file_name().is_some_and(|n| n == "build") => {
            build.ancestors().nth(2).map(|t| t.join("bitnet-cpp"))
        }
        _ => None,
    };
    let dir = dir.unwrap_or_else(|| out_dir.join("bitnet-cpp"));
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

/// Copies `src` to `tree` and applies the patches, unless `stamp` says this exact source
/// listing and patch set was already prepared.
fn prepare_tree(src: &Path, tree: &Path, patches_dir: &Path, vendored: bool, stamp: &Path) {
    let mut patches: Vec<PathBuf> = fs::read_dir(patches_dir)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", patches_dir.display())))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "patch"))
        .collect();
    patches.sort();

    let mut listing = format!("source {}\n", src.display());
    for p in &patches {
        let text = fs::read_to_string(p)
            .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", p.display())));
        writeln!(
            listing,
            "patch {} {} {:016x}",
            p.display(),
            text.len(),
            fnv1a(text.as_bytes())
        )
        .unwrap();
    }
    list_files(src, Path::new(""), &mut listing);
    if fs::read_to_string(stamp).is_ok_and(|s| s == listing) && tree.is_dir() {
        return;
    }

    let _ = fs::remove_file(stamp);
    if tree.exists() {
        fs::remove_dir_all(tree)
            .unwrap_or_else(|e| fail(&format!("cannot remove {}: {e}", tree.display())));
    }
    copy_tree(src, tree, Path::new(""));
    for p in &patches {
        let name = p.file_name().unwrap().to_string_lossy();
        let run = |dry: bool| {
            let mut cmd = Command::new("patch");
            cmd.args(["-p1", "--batch", "--forward", "--silent", "-d"])
                .arg(tree)
                .arg("-i")
                .arg(p);
            if dry {
                cmd.arg("--dry-run");
            }
            cmd.output()
                .unwrap_or_else(|e| fail(&format!("cannot run patch: {e}")))
        };
        let dry = run(true);
        if !dry.status.success() {
            let why = String::from_utf8_lossy(&dry.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            if vendored {
                fail(&format!(
                    "patch {name} does not apply to the vendored bitnet.cpp: {why}"
                ));
            }
            // A newer checkout may already have what a patch adds: build it as it is.
            println!("cargo:warning=patch {name} does not apply to BITNET_CPP_DIR, skipped: {why}");
            continue;
        }
        if !run(false).status.success() {
            fail(&format!("patch {name} failed on {}", tree.display()));
        }
    }
    fs::write(stamp, listing)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", stamp.display())));
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

fn copy_tree(root: &Path, dst_root: &Path, rel: &Path) {
    let dst = dst_root.join(rel);
    fs::create_dir_all(&dst)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", dst.display())));
    for e in fs::read_dir(root.join(rel)).unwrap().filter_map(Result::ok) {
        let rel = rel.join(e.file_name());
        if skipped(&rel) {
            continue;
        }
        if fs::metadata(e.path()).is_ok_and(|m| m.is_dir()) {
            copy_tree(root, dst_root, &rel);
        } else {
            fs::copy(e.path(), dst_root.join(&rel))
                .unwrap_or_else(|err| fail(&format!("cannot copy {}: {err}", e.path().display())));
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
