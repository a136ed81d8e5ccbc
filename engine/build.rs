//! Tells the kernel tests what this build machine's CPU can run, so a test of a SIMD level the
//! CPU lacks is *ignored, with the reason* instead of passing without running. (`cargo test`
//! builds and runs on the same machine; the engine itself still detects features at run time.)

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cpu_avx2)");
    println!("cargo::rustc-check-cfg=cfg(cpu_avx512_vnni)");
    println!("cargo::rustc-check-cfg=cfg(cpu_avx512_vbmi_gfni)");
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(target_arch = "x86_64")]
    {
        // Only when building for the machine we run on: a cross build says nothing.
        let host = std::env::var("HOST").unwrap_or_default();
        let target = std::env::var("TARGET").unwrap_or_default();
        if host == target {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                println!("cargo::rustc-cfg=cpu_avx2");
            }
            let vnni =
                has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni");
            if vnni {
                println!("cargo::rustc-cfg=cpu_avx512_vnni");
            }
            if vnni && has!("avx512vbmi") && has!("gfni") {
                println!("cargo::rustc-cfg=cpu_avx512_vbmi_gfni");
            }
        }
    }
}
