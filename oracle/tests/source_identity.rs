//! `oracle::source_info()` says exactly which patches were applied to which tree: every patch
//! listed is a file of the flavour's patch folder with that sha256, in the series order, and
//! for a vendored tree the list is exactly what its series applies to it. Also run against
//! today's bitnet.cpp by `oracle-2026/tests/oracle_suite.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn patch_dir(flavour: &str) -> PathBuf {
    let oracle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../oracle");
    match flavour {
        "2024" => oracle.join("patches"),
        "2026" => oracle.join("patches-2026"),
        other => panic!("unknown flavour {other}"),
    }
}

#[test]
fn listed_patches_are_the_applied_files() {
    let src = oracle::source_info();
    eprintln!("{src:#?}\n{}", oracle::implementation());
    assert_eq!(src.reference, format!("bitnet.cpp-{}", src.flavour));
    assert_eq!(src.tree_sha256.len(), 64, "{}", src.tree_sha256);
    let dir = patch_dir(src.flavour);
    let series = std::fs::read_to_string(dir.join("series")).unwrap();
    let order: Vec<&str> = series
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let mut last = None;
    for (name, sha) in &src.patches {
        assert_eq!(*sha, sha256(&dir.join(name)), "{name}");
        let at = order.iter().position(|n| n == name).unwrap();
        assert!(last < Some(at), "{name} out of series order");
        last = Some(at);
        assert!(
            oracle::implementation().contains(name),
            "{}",
            oracle::implementation()
        );
    }
    // The vendored trees: what their series applies, and nothing else.
    let names: Vec<&str> = src.patches.iter().map(|(n, _)| *n).collect();
    match src.package {
        "bitnet-cpp-sys-0.0.5" => {
            assert_eq!(src.flavour, "2024");
            assert_eq!(
                src.tree_sha256,
                "b81a399084ccfd31efcd24863eb375e321f2b213b21383202b78232e9e4bac15"
            );
            assert_eq!(
                names,
                [
                    "0001-cmake-package-fixups.patch",
                    "0002-arch-bitnet-b1.58.patch"
                ]
            );
        }
        "bitnet-llm-sys-1.0.2" => {
            assert_eq!(src.flavour, "2026");
            assert_eq!(
                src.tree_sha256,
                "c05a3c2ee5ab22ea5f0ede9eaa23c7b1c65767ba5076f5dddb00d37e07e75d9f"
            );
            // The package ships include/bitnet-lut-kernels.h: 0002 (if-missing) is not applied.
            assert_eq!(names, ["0001-clang-const-y-col.patch"]);
        }
        other => assert!(other.starts_with("BITNET_CPP_DIR="), "{other}"),
    }
}
