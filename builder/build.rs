//! Builds the restore stub for each supported architecture (a nested `cargo build` of the
//! `elfpack-stub` binary with `--target`) and hands the resulting ELF files to
//! `src/stub_blob.rs`, so that one `cargo build` yields one self-contained `elfpack`.
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGETS: [(&str, &str); 2] = [
    ("x86_64-unknown-linux-gnu", "STUB_X86_64"),
    ("i686-unknown-linux-gnu", "STUB_I386"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for dir in ["stub/src", "stub/Cargo.toml", "stub/build.rs", "linker"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out.join("stub-target");
    for (target, var) in TARGETS {
        build_stub(&cargo, &root, &target_dir, target);
        let path = target_dir.join(target).join("release").join("elfpack-stub");
        println!("cargo:rustc-env={var}={}", path.display());
    }
}

fn build_stub(cargo: &str, root: &Path, target_dir: &Path, target: &str) {
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--release",
            "--bin",
            "elfpack-stub",
            "-p",
            "elfpack-stub",
        ])
        .args(["--target", target])
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's flags and jobserver are not the stub's business.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Crelocation-model=pie\x1f-Copt-level=s\x1f-Cdebuginfo=0",
    );
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the stub: {e}"));
    if !status.success() {
        panic!(
            "building the restore stub for {target} failed; if the target is missing, run \
             `rustup target add {target}`"
        );
    }
}
