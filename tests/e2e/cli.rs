//! The `elfpack` command line: reproducible output, and bad input rejected with one line
//! on stderr, the documented exit status, and no output file.
use elfpack_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Runs `elfpack build INPUT -o OUTPUT ARGS`; returns (exit code, stderr).
fn build(input: &Path, output: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(elfpack())
        .arg("build")
        .arg(input)
        .arg("-o")
        .arg(output)
        .args(extra)
        .output_t();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a clean refusal: the exit code, one line naming the problem, no OUTPUT.
fn refused(input: &Path, expect_code: i32, needle: &str) {
    let d = scratch();
    let out = d.path().join("out");
    let (code, err) = build(input, &out, &["-q"]);
    assert_eq!(code, Some(expect_code), "{}: stderr {err}", input.display());
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("elfpack:")).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one elfpack error line, got: {err}"
    );
    assert!(
        lines[0].contains(needle),
        "error `{}` should mention `{needle}`",
        lines[0]
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !out.exists(),
        "an output file was written for {}",
        input.display()
    );
    let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

#[test]
fn two_builds_are_byte_identical() {
    for prog in [
        fixture("fixture-x86_64-pie"),
        Path::new("/usr/bin/python3").to_path_buf(),
    ] {
        let d = scratch();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        pack_to(&prog, &a, &[]);
        pack_to(&prog, &b, &[]);
        let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(x == y, "{}: two builds differ", prog.display());
        let mode = std::fs::metadata(&a).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "output is not executable");
    }
}

#[test]
fn output_is_a_static_exec_without_interpreter() {
    let d = scratch();
    let out = d.path().join("p");
    pack_to(&fixture("fixture-x86_64-pie"), &out, &[]);
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([bytes[16], bytes[17]]),
        2,
        "e_type is not ET_EXEC"
    );
    let f = Command::new(require("file")).arg(&out).output_t();
    let s = String::from_utf8_lossy(&f.stdout);
    assert!(s.contains("statically linked"), "file(1) says: {s}");
    let readelf = Command::new("readelf").arg("-lW").arg(&out).output_t();
    let text = String::from_utf8_lossy(&readelf.stdout);
    assert!(!text.contains("INTERP"), "{text}");
    assert!(text.contains("GNU_STACK"), "{text}");
    // Every stored page is mapped from the file at its own offset (never copied), as the
    // running program's /proc/self/maps shows: at its own address without randomisation
    // (`setarch -R`), and wherever its part of the image moved with it.
    for arch in [Arch::X86_64, Arch::I386] {
        let packed = packed(&fixture(&format!("fixture-{}-pie", arch.tag())), &[]);
        for mode in [Mode::NoAslr, Mode::Native] {
            let placed = Placed::new(&packed, mode, arch);
            let maps = placed.run(&["maps"], b"", None);
            assert_eq!(maps.code, Some(0), "{}", maps.stderr);
            let file = placed.self_path();
            let bytes = std::fs::read(&packed).unwrap();
            let elf = goblin::elf::Elf::parse(&bytes).unwrap();
            let mapped: Vec<(u64, u64, u64)> = maps
                .stdout
                .lines()
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let (lo, hi) = f[0].split_once('-').unwrap();
                    let lo = u64::from_str_radix(lo, 16).unwrap();
                    let hi = u64::from_str_radix(hi, 16).unwrap();
                    let off = u64::from_str_radix(f[2], 16).unwrap();
                    (f.len() == 6 && f[5] == file).then_some((lo, hi, off))
                })
                .collect();
            let mut checked = 0;
            for ph in elf
                .program_headers
                .iter()
                .filter(|p| p.p_type == 1 && p.p_filesz > 0)
            {
                let start = ph.p_vaddr & !4095;
                let len = ((ph.p_vaddr + ph.p_filesz + 4095) & !4095) - start;
                let file_off = ph.p_offset & !4095;
                let mut covered = 0;
                for &(lo, hi, off) in &mapped {
                    // The mapping's file range against the segment's.
                    let (a, b) = (off.max(file_off), (off + hi - lo).min(file_off + len));
                    if a >= b {
                        continue;
                    }
                    if mode == Mode::NoAslr {
                        assert_eq!(
                            lo + (a - off),
                            start + (a - file_off),
                            "{}: segment at {:#x} (file offset {:#x}) is mapped elsewhere",
                            arch.tag(),
                            ph.p_vaddr,
                            ph.p_offset
                        );
                    }
                    covered += b - a;
                }
                assert_eq!(
                    covered,
                    len,
                    "{} {mode:?}: segment at {:#x} not fully mapped from the file",
                    arch.tag(),
                    ph.p_vaddr
                );
                checked += 1;
            }
            assert!(
                checked > 5,
                "{}: only {checked} stored segments",
                arch.tag()
            );
        }
    }
}

#[test]
fn program_found_in_path_like_a_shell() {
    let d = scratch();
    let out = d.path().join("sort");
    let st = Command::new(elfpack())
        .args(["build", "sort", "-q", "-o"])
        .arg(&out)
        .status_t();
    assert!(st.success());
    let r = run_cmd_raw(Command::new(&out), b"b\na\n");
    assert_eq!(r, b"a\nb\n");
}

#[test]
fn missing_file() {
    refused(Path::new("/nonexistent/prog"), 3, "no such file");
}

#[test]
fn not_in_path() {
    refused(
        Path::new("no-such-program-anywhere"),
        3,
        "not found in PATH",
    );
}

#[test]
fn not_elf() {
    let d = scratch();
    let p = d.path().join("text");
    std::fs::write(&p, "hello world, not a program\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    refused(&p, 3, "not an ELF file");
}

#[test]
fn script() {
    let d = scratch();
    let p = d.path().join("script.sh");
    std::fs::write(&p, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    refused(&p, 3, "script");
}

#[test]
fn truncated_elf() {
    let d = scratch();
    let p = d.path().join("trunc");
    let bytes = std::fs::read(fixture("fixture-x86_64-pie")).unwrap();
    std::fs::write(&p, &bytes[..200]).unwrap();
    refused(&p, 3, "truncated");
}

#[test]
fn wrong_machine() {
    let d = scratch();
    let p = d.path().join("arm");
    let mut bytes = std::fs::read(fixture("fixture-x86_64-pie")).unwrap();
    bytes[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    std::fs::write(&p, &bytes).unwrap();
    refused(&p, 3, "unsupported architecture");
}

#[test]
fn shared_library() {
    refused(&fixture("lib-x86_64/libneeded.so"), 3, "shared library");
}

#[test]
fn static_program() {
    refused(&fixture("static-x86_64"), 3, "already statically linked");
}

#[test]
fn setuid_program() {
    let d = scratch();
    let p = d.path().join("suid");
    std::fs::copy(fixture("fixture-x86_64-pie"), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4755)).unwrap();
    refused(&p, 3, "setuid");
}

#[test]
fn output_equal_to_program() {
    let d = scratch();
    let p = d.path().join("prog");
    std::fs::copy(fixture("fixture-x86_64-pie"), &p).unwrap();
    let before = std::fs::read(&p).unwrap();
    let (code, err) = build(&p, &p, &["-q"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("OUTPUT is the program itself"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), before, "the input was modified");
}

#[test]
fn unwritable_output_directory() {
    let (code, err) = build(
        &fixture("fixture-x86_64-pie"),
        Path::new("/nonexistent-dir/out"),
        &["-q"],
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("/nonexistent-dir") && err.lines().count() == 1,
        "{err}"
    );
    let d = scratch();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    // As root a read-only directory is still writable; check as uid 65534 then.
    let out = d.path().join("out");
    let st = Command::new(require("setpriv"))
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(elfpack())
        .arg("build")
        .arg(fixture("fixture-x86_64-pie"))
        .arg("-o")
        .arg(&out)
        .output_t();
    assert_eq!(
        st.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(String::from_utf8_lossy(&st.stderr).contains("cannot write there"));
    assert!(!out.exists());
}

#[test]
fn missing_library_shows_the_loader_message() {
    let d = scratch();
    let out = d.path().join("out");
    let o = Command::new(elfpack())
        .arg("build")
        .arg(fixture("needlib-x86_64"))
        .arg("-o")
        .arg(&out)
        .env_remove("LD_LIBRARY_PATH")
        .output_t();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains("libneeded.so: cannot open shared object file"),
        "ld.so's message missing: {err}"
    );
    assert!(err.contains("could not be loaded"), "{err}");
    assert!(!out.exists());
    // With the library found at capture, the packed program no longer needs it.
    let libdir = fixture("lib-x86_64");
    let o = Command::new(elfpack())
        .arg("build")
        .arg(fixture("needlib-x86_64"))
        .arg("-q")
        .arg("-o")
        .arg(&out)
        .env("LD_LIBRARY_PATH", &libdir)
        .output_t();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = run_cmd_raw(Command::new(&out), b"");
    assert_eq!(String::from_utf8_lossy(&r), "needed_value=1234\n");
}

#[test]
fn usage_errors_exit_2() {
    let o = Command::new(elfpack()).args(["build"]).output_t();
    assert_eq!(o.status.code(), Some(2));
    let o = Command::new(elfpack()).args(["frobnicate"]).output_t();
    assert_eq!(o.status.code(), Some(2));
    let o = Command::new(elfpack()).args(["--version"]).output_t();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("elfpack "));
}

/// The traced child of a running `elfpack build`, once it exists.
fn tracee_of(elfpack_pid: u32) -> Option<u32> {
    for _ in 0..200 {
        let kids =
            std::fs::read_to_string(format!("/proc/{elfpack_pid}/task/{elfpack_pid}/children"))
                .unwrap_or_default();
        if let Some(k) = kids.split_whitespace().next() {
            return k.parse().ok();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

fn gone(pid: u32) -> bool {
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

#[test]
fn capture_timeout_kills_the_program() {
    // An LD_AUDIT module that never returns keeps ld.so from ever finishing.
    let d = scratch();
    let out = d.path().join("out");
    let audit = format!("--env=LD_AUDIT={}", fixture("slow_audit.so").display());
    let mut child = Command::new(elfpack());
    child
        .arg("build")
        .arg(fixture("fixture-x86_64-pie"))
        .arg("-o")
        .arg(&out)
        .args([audit.as_str(), "--timeout", "1"])
        .stderr(std::process::Stdio::piped());
    let child = spawn(&mut child);
    let tracee = tracee_of(child.id()).expect("no traced child appeared");
    let o = wait_output(child, "elfpack build with --timeout 1");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(gone(tracee), "the traced child {tracee} is still there");
    assert!(!out.exists());
}

#[test]
fn interrupted_build_kills_the_program_and_writes_nothing() {
    let d = scratch();
    let out = d.path().join("out");
    let audit = format!("--env=LD_AUDIT={}", fixture("slow_audit.so").display());
    let mut cmd = Command::new(elfpack());
    cmd.arg("build")
        .arg(fixture("fixture-x86_64-pie"))
        .arg("-o")
        .arg(&out)
        .arg(audit);
    let child = spawn(&mut cmd);
    let tracee = tracee_of(child.id()).expect("no traced child appeared");
    std::thread::sleep(std::time::Duration::from_millis(100));
    // What a terminal's Ctrl-C sends to elfpack.
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status_t();
    assert!(st.success());
    let status = wait_output(child, "elfpack build after SIGINT").status;
    assert!(!status.success());
    assert!(
        gone(tracee),
        "the traced child {tracee} survived elfpack's SIGINT"
    );
    assert!(!out.exists());
    assert!(
        std::fs::read_dir(d.path()).unwrap().next().is_none(),
        "files left behind"
    );
}

#[test]
fn stop_at_entry_fallback_runs_the_program() {
    // The capture point used for loaders whose `_dl_start` does not return the entry
    // point: forced here, since this machine's glibc always does.
    for arch in [Arch::X86_64, Arch::I386] {
        for name in ["fixture", "cxx"] {
            let orig = fixture(&format!("{name}-{}-pie", arch.tag()));
            let packed = packed(&orig, &["--stop-at-entry"]);
            let placed = Placed::new(&packed, Mode::Native, arch);
            let args: &[&str] = if name == "fixture" {
                &["args", "4", "y"]
            } else {
                &["a", "b"]
            };
            let p = placed.run(args, b"", None);
            let o = run_original(&orig, placed.argv0(), args, b"", None);
            // Libraries' initializers ran at capture; the program's own constructors run
            // from its `_start` (glibc 2.34+ `__libc_start_main`), so the output is the same.
            assert_same(&format!("{} {name} --stop-at-entry", arch.tag()), &p, &o);
        }
    }
}

/// With the capture after the initializers (`--stop-at-entry`), what they kept from the
/// capture's stack follows this run: libc's `program_invocation_name` (an argument string),
/// a library's cached getenv() result (an environment string), the heap they used (the
/// break is put back at its end), and everything the normal capture redirects too.
#[test]
fn stop_at_entry_redirects_what_initializers_kept() {
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = fixture(&format!("fixture-{}-pie", arch.tag()));
        let placed = Placed::new(&packed(&orig, &["--stop-at-entry"]), Mode::Native, arch);
        for args in [
            &["progname"][..],
            &["stat", "a b", "c"],
            &["brk", "heap"],
            &["stackend"],
            &["auxv"],
            &["env"],
            &["malloc"],
        ] {
            let p = placed.run(args, b"", None);
            let o = run_original(&orig, placed.argv0(), args, b"", None);
            assert_same(&format!("{} --stop-at-entry {args:?}", arch.tag()), &p, &o);
            assert!(!p.stdout.contains("=no"), "{args:?}: {}", p.stdout);
        }
        let libdir = fixture(&format!("lib-{}", arch.tag()));
        let prog = fixture(&format!("needlib-{}", arch.tag()));
        let lib_env = format!("--env=LD_LIBRARY_PATH={}", libdir.display());
        let packed = packed(
            &prog,
            &[
                "--stop-at-entry",
                &lib_env,
                "--env=ELFPACK_TEST_VAR=the capture's value",
            ],
        );
        let placed = Placed::new(&packed, Mode::Native, arch);
        let p = placed.run(&["cached"], b"", None);
        let mut o = Command::new(&prog);
        o.arg("cached")
            .env_clear()
            .envs(test_env())
            .env("LD_LIBRARY_PATH", &libdir);
        let o = run_cmd(o, b"");
        assert_same(&format!("{} needlib --stop-at-entry", arch.tag()), &p, &o);
        assert!(
            p.stdout
                .contains("cached ELFPACK_TEST_VAR=value with spaces")
                && p.stdout.contains("in the break's range=yes")
                && p.stdout.contains("malloc after start=ok"),
            "{}",
            p.stdout
        );
    }
}

#[test]
fn env_and_unset_env_apply_to_the_capture_only() {
    // LD_LIBRARY_PATH from --env finds the library at capture; --unset-env removes a
    // variable the caller has (here: the one that would find it).
    let d = scratch();
    let out = d.path().join("p");
    let libdir = fixture("lib-x86_64");
    let st = Command::new(elfpack())
        .args(["build", "-q", "-o"])
        .arg(&out)
        .arg(fixture("needlib-x86_64"))
        .arg(format!("--env=LD_LIBRARY_PATH={}", libdir.display()))
        .env_remove("LD_LIBRARY_PATH")
        .status_t();
    assert!(st.success());
    assert_eq!(run_cmd_raw(Command::new(&out), b""), b"needed_value=1234\n");
    let o = Command::new(elfpack())
        .args(["build", "-q", "-o"])
        .arg(&out)
        .arg(fixture("needlib-x86_64"))
        .args(["--unset-env", "LD_LIBRARY_PATH"])
        .env("LD_LIBRARY_PATH", &libdir)
        .output_t();
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The packed program's environment is its own run's, not the capture's.
    let packed = packed(
        &fixture("fixture-x86_64-pie"),
        &["--env=ELFPACK_TEST_VAR=from-capture"],
    );
    let r = Placed::new(&packed, Mode::Native, Arch::X86_64).run(&["args"], b"", None);
    assert!(
        r.stdout.contains("getenv=value with spaces"),
        "{}",
        r.stdout
    );
}

#[test]
fn setuid_packed_file_runs_in_secure_mode() {
    // A packed file made setuid root, run by uid 65534: the kernel sets AT_SECURE, and the
    // stub sets ld.so's __libc_enable_secure from it, so libc hides the environment from
    // secure_getenv() exactly as for a setuid original.
    let setpriv = require("setpriv");
    let d = scratch();
    let orig = d.path().join("orig");
    std::fs::copy(fixture("fixture-x86_64-pie"), &orig).unwrap();
    let packed = d.path().join("packed");
    std::fs::copy(self::packed(&fixture("fixture-x86_64-pie"), &[]), &packed).unwrap();
    let run = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        let o = Command::new(&setpriv)
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(p)
            .arg("secure")
            .env("HOME", "/root")
            .output_t();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(run(&packed, 0o4755), run(&orig, 0o4755));
    assert_eq!(
        run(&packed, 0o4755),
        "AT_SECURE=1 secure_getenv(HOME)=hidden\n"
    );
    assert_eq!(run(&packed, 0o755), "AT_SECURE=0 secure_getenv(HOME)=set\n");
}
