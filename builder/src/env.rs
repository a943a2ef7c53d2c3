//! The environment of the capture: elfpack's own, less the glibc tunables (read once at
//! start-up, they would hold in every run of the packed program), with `--env`,
//! `--unset-env`, the `--include` preloads and the CPU level's hwcaps mask applied.
use crate::error::Result;
use crate::pipeline::Options;
use crate::{cpu, program};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// glibc's environment aliases of its tunables (glibc 2.36 `elf/dl-tunables.list`,
/// `env_alias`). ld.so and malloc read them once, at start-up: a value present at capture
/// would hold in every run of the packed program.
pub const TUNABLE_ALIASES: &[&str] = &[
    "LD_HWCAP_MASK",
    "MALLOC_ARENA_MAX",
    "MALLOC_ARENA_TEST",
    "MALLOC_CHECK_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_PERTURB_",
    "MALLOC_TOP_PAD_",
    "MALLOC_TRIM_THRESHOLD_",
];

/// Whether `k` sets a glibc tunable: GLIBC_TUNABLES or one of its aliases.
fn is_tunable(k: &OsStr) -> bool {
    k == "GLIBC_TUNABLES" || TUNABLE_ALIASES.iter().any(|a| k == *a)
}

type Vars = Vec<(OsString, OsString)>;

/// The capture environment, the names of the tunable variables of elfpack's own
/// environment it leaves out (only `--env` sets those), and each `--include` with the file
/// it names.
pub struct CaptureEnv {
    pub env: Vars,
    pub dropped: Vec<String>,
    pub includes: Vec<(OsString, PathBuf)>,
}

/// The capture environment for `o`, with `hwcaps` the CPU level's `glibc.cpu.hwcaps` mask.
pub fn capture_env(o: &Options, hwcaps: Option<&str>, arch: program::Arch) -> Result<CaptureEnv> {
    let mut env: Vars = std::env::vars_os().collect();
    let mut dropped: Vec<String> = Vec::new();
    env.retain(|(k, _)| {
        if is_tunable(k) {
            let k = k.to_string_lossy().into_owned();
            if !dropped.contains(&k) {
                dropped.push(k);
            }
            return false;
        }
        true
    });
    // Binding stays lazy, as in the original: the image keeps ld.so, whose resolver binds
    // after restore what the program calls; crate::pipeline binds at capture only where
    // that resolver needs more than the CPU level.
    for (k, v) in &o.env {
        set(&mut env, k.into(), v.into());
    }
    env.retain(|(k, _)| !o.unset_env.iter().any(|u| k == u.as_str()));
    let mut includes: Vec<(OsString, PathBuf)> = Vec::new();
    if !o.include.is_empty() {
        includes = preload(&mut env, &o.include, arch)?;
    }
    if let Some(h) = hwcaps {
        let existing = get(&env, "GLIBC_TUNABLES").map(|v| v.to_string_lossy().into_owned());
        let value = cpu::tunables(existing.as_deref(), h);
        env.retain(|(k, _)| k != "GLIBC_TUNABLES");
        env.push(("GLIBC_TUNABLES".into(), value.into()));
    }
    dropped.retain(|d| !env.iter().any(|(k, _)| k == d.as_str()));
    Ok(CaptureEnv {
        env,
        dropped,
        includes,
    })
}

/// Sets `k` to `v`, as the last variable.
fn set(env: &mut Vars, k: OsString, v: OsString) {
    env.retain(|(ek, _)| *ek != k);
    env.push((k, v));
}

fn get(env: &Vars, k: &str) -> Option<OsString> {
    env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone())
}

/// Appends each `--include` to LD_PRELOAD; returns each with the file it names.
fn preload(
    env: &mut Vars,
    include: &[OsString],
    arch: program::Arch,
) -> Result<Vec<(OsString, PathBuf)>> {
    let lib_path = get(env, "LD_LIBRARY_PATH");
    let mut includes: Vec<(OsString, PathBuf)> = Vec::new();
    let mut libs: Vec<OsString> = Vec::new();
    for l in include {
        let (found, ld_so_finds_it) = program::find_library(l, arch, lib_path.as_deref())?;
        // ld.so knows a library by its DT_SONAME and by the names it was loaded as
        // (l_libname), not by other names of its file: a name that ld.so finds the
        // same way (LD_LIBRARY_PATH, its cache) is preloaded by that name, so that a
        // later dlopen of the name finds it in the image, with or without a
        // DT_SONAME, and also when the name is a link to a file of another soname.
        // check_loaded makes sure of it.
        let by_name = ld_so_finds_it
            && !l.as_bytes().contains(&b'/')
            && !l.as_bytes().contains(&b':')
            && !l.as_bytes().contains(&b' ');
        libs.push(if by_name {
            l.clone()
        } else {
            found.clone().into_os_string()
        });
        includes.push((l.clone(), found));
    }
    let existing = get(env, "LD_PRELOAD");
    let mut value = OsString::new();
    for (i, part) in existing.into_iter().chain(libs).enumerate() {
        if i > 0 {
            value.push(":");
        }
        value.push(part);
    }
    env.retain(|(k, _)| k != "LD_PRELOAD");
    env.push(("LD_PRELOAD".into(), value));
    Ok(includes)
}

/// The tunable settings of a capture environment, `KEY=VALUE`, as the image keeps them.
pub fn baked_tunables(env: &[(OsString, OsString)]) -> Vec<String> {
    env.iter()
        .filter(|(k, _)| is_tunable(k))
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect()
}
