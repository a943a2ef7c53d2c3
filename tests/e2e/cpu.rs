//! CPU levels: `--cpu` really changes glibc's IFUNC choices, default packs run on older
//! CPU models, and a pack for a higher level refuses to start with a clear message.
use elfpack_tests::*;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

fn host_has_avx2() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .contains(" avx2")
}

fn ifunc_of(level: &str) -> String {
    let packed = packed(&fixture("fixture-x86_64-pie"), &["--cpu", level]);
    let placed = Placed::new(&packed, Mode::Native, Arch::X86_64);
    let r = placed.run(&["ifunc"], b"", None);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    r.stdout
}

#[test]
fn native_and_baseline_pick_different_implementations() {
    assert!(
        host_has_avx2(),
        "this test needs a CPU with AVX2 to tell the levels apart"
    );
    let native = ifunc_of("native");
    let baseline = ifunc_of("baseline");
    assert_ne!(
        native, baseline,
        "--cpu native and --cpu baseline resolved memcpy/strlen alike"
    );
    // The native pack resolves as the unpacked program does on this CPU.
    let orig = run_original(
        &fixture("fixture-x86_64-pie"),
        "./prog",
        &["ifunc"],
        b"",
        None,
    );
    assert_eq!(native, orig.stdout);
}

#[test]
fn default_pack_runs_on_older_qemu_cpu_models() {
    let qemu = require("qemu-x86_64");
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = fixture(&format!("fixture-{}-pie", arch.tag()));
        let packed = packed(&orig, &[]);
        for model in ["Nehalem", "qemu64", "core2duo"] {
            let qemu = if arch == Arch::I386 {
                require("qemu-i386")
            } else {
                qemu.clone()
            };
            let model = if arch == Arch::I386 && model == "qemu64" {
                "qemu32"
            } else {
                model
            };
            let mut cmd = Command::new(&qemu);
            cmd.args(["-cpu", model, "-0", "./prog"])
                .arg(&packed)
                .args(["args", "7", "x"]);
            cmd.env_clear().envs(test_env());
            let p = without_qemu_warnings(run_cmd(cmd, b""));
            let o = run_original(&orig, "./prog", &["args", "7", "x"], b"", None);
            assert_same(&format!("{} under qemu -cpu {model}", arch.tag()), &p, &o);
        }
    }
}

#[test]
fn higher_level_refuses_an_older_cpu() {
    let qemu = require("qemu-x86_64");
    let packed = packed(&fixture("fixture-x86_64-pie"), &["--cpu", "x86-64-v3"]);
    let out = Command::new(&qemu)
        .args(["-cpu", "Nehalem"])
        .arg(&packed)
        .arg("args")
        .output_t();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{err}");
    assert!(
        err.starts_with("elfpack: this program was packed for x86-64-v3 (needs ")
            && err.contains("this CPU lacks AVX")
            && err.contains("repack with --cpu baseline"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // The same file runs where the CPU has what it needs.
    let ok = Command::new(&packed).arg("true").status_t();
    assert!(ok.success());
}

#[test]
fn level_above_this_machine_is_refused_at_pack_time() {
    let d = scratch();
    let out = d.path().join("o");
    let has_avx512 = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .contains(" avx512f");
    let r = Command::new(elfpack())
        .args(["build", "-q", "--cpu", "x86-64-v4", "-o"])
        .arg(&out)
        .arg(fixture("fixture-x86_64-pie"))
        .output_t();
    if has_avx512 {
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    } else {
        assert_eq!(r.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&r.stderr).contains("this machine lacks"));
    }
}

#[test]
fn real_programs_packed_by_default_run_on_a_nehalem() {
    let qemu = require("qemu-x86_64");
    let cases: [(&str, &[&str], &[u8]); 3] = [
        ("/usr/bin/sort", &["-r"], b"b\nc\na\n"),
        ("/usr/bin/sha256sum", &[], b"some bytes to hash\n"),
        ("/usr/bin/python3", &["-c", "import hashlib, json; print(json.dumps(sorted({3, 1, 2})), hashlib.md5(b'x').hexdigest())"], b""),
    ];
    for (prog, args, stdin) in cases {
        let packed = packed(Path::new(prog), &[]);
        let mut cmd = Command::new(&qemu);
        cmd.args(["-cpu", "Nehalem", "-0", "prog"])
            .arg(&packed)
            .args(args)
            .env_clear()
            .envs(test_env());
        let p = without_qemu_warnings(run_cmd(cmd, stdin));
        let mut o = Command::new(prog);
        o.arg0("prog").args(args).env_clear().envs(test_env());
        let o = run_cmd(o, stdin);
        assert_same(&format!("{prog} under qemu -cpu Nehalem"), &p, &o);
    }
}

/// The CPU level is verified after capture, not assumed: a program whose own IFUNC
/// resolver reads CPUID (and so ignores glibc's mask) picks its SSE4.2 implementation on
/// this machine, and `--cpu baseline` refuses to write that image, naming the feature and
/// the function. `--cpu x86-64-v2` (which has SSE4.2) packs it, and the packed program
/// prints what the original prints.
#[test]
fn selected_implementations_above_the_level_are_refused() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    assert!(
        cpuinfo.contains(" sse4_2"),
        "this test needs a CPU with SSE4.2"
    );
    for arch in [Arch::X86_64, Arch::I386] {
        let prog = fixture(&format!("ifunc-clone-{}", arch.tag()));
        let d = scratch();
        let out = d.path().join("o");
        let r = Command::new(elfpack())
            .args(["build", "-q", "--cpu", "baseline", "-o"])
            .arg(&out)
            .arg(&prog)
            .output_t();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(3), "{}: {err}", arch.tag());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("checksum") && err.contains("crc_sse42") && err.contains("SSE4_2"),
            "{}: {err}",
            arch.tag()
        );
        assert!(!out.exists(), "a refused pack left {}", out.display());

        let packed = packed(&prog, &["--cpu", "x86-64-v2"]);
        let placed = Placed::new(&packed, Mode::Native, arch);
        let p = placed.run(&["some text"], b"", None);
        let o = run_original(&prog, placed.argv0(), &["some text"], b"", None);
        assert_same(&format!("{} ifunc-clone at x86-64-v2", arch.tag()), &p, &o);
    }
}

/// glibc's own choices at each level pass the verification on this machine, for real
/// programs (no false refusals).
#[test]
fn glibc_choices_pass_the_verification_at_every_level() {
    let avx512 = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .contains(" avx512f");
    let levels: &[&str] = if avx512 {
        &["baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4"]
    } else {
        &["baseline", "x86-64-v2", "x86-64-v3"]
    };
    for prog in ["/usr/bin/python3", "/usr/bin/sort"] {
        for level in levels {
            let d = scratch();
            pack_to(Path::new(prog), &d.path().join("o"), &["--cpu", level]);
        }
    }
}
