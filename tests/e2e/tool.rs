//! The tool around packing: `inspect` (text and JSON), `--include`, symbols for nm and gdb,
//! `--strip`, completions and the manual page, `-v`/`-q`.
use elfpack_tests::*;
use std::path::Path;
use std::process::Command;

fn elfpack_out(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(elfpack()).args(args).output_t();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The GNU build-id of a file, from `readelf -n`.
fn build_id(p: &Path) -> String {
    let o = Command::new("readelf").arg("-n").arg(p).output_t();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap()
        .to_string()
}

#[test]
fn inspect_json_describes_the_packed_fixture() {
    let orig = fixture("fixture-x86_64-pie");
    let packed = packed(&orig, &[]);
    let (code, out, err) = elfpack_out(&["inspect", "--json", packed.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["schema"], "elfpack-inspect/1");
    assert_eq!(v["format_version"], 5);
    assert_eq!(v["arch"], "x86-64");
    assert_eq!(v["cpu_level"], "x86-64 baseline");
    assert_eq!(
        v["program"]["path"],
        std::fs::canonicalize(&orig).unwrap().display().to_string()
    );
    assert_eq!(v["program"]["build_id"], build_id(&orig));
    assert_eq!(v["resume"]["kind"], "dl_start_user");
    assert!(v["captured_with"]["kernel"].as_str().unwrap().len() > 2);
    assert_eq!(v["captured_with"]["glibc"], "2.36");
    assert!(
        v["captured_with"]["time"].is_null(),
        "a capture time without SOURCE_DATE_EPOCH"
    );
    let sonames: Vec<&str> = v["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["soname"].as_str())
        .collect();
    for s in ["libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2"] {
        assert!(sonames.contains(&s), "{s} missing from {sonames:?}");
    }
    let libc = v["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["soname"] == "libc.so.6")
        .unwrap();
    let libc_path = Path::new(libc["path"].as_str().unwrap());
    assert_eq!(libc["build_id"], build_id(libc_path));
    assert_eq!(libc["size"], std::fs::metadata(libc_path).unwrap().len());
    let regions = v["regions"].as_array().unwrap();
    assert!(regions
        .iter()
        .any(|r| r["origin"] == "[vdso proxy]" && r["prot"] == "r-x"));
    // The bytes stored for the image, as the program headers of the file say: the file
    // size of every PT_LOAD that maps part of a region (the stub's own do not).
    let bytes = std::fs::read(&packed).unwrap();
    let elf = goblin::elf::Elf::parse(&bytes).unwrap();
    let num = |r: &serde_json::Value, k: &str| {
        u64::from_str_radix(r[k].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    };
    let in_image = |va: u64| {
        regions
            .iter()
            .any(|r| num(r, "start") <= va && va < num(r, "end"))
    };
    let from_headers: u64 = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_LOAD && in_image(p.p_vaddr))
        .map(|p| p.p_filesz)
        .sum();
    assert_eq!(
        from_headers,
        v["sizes"]["stored"].as_u64().unwrap(),
        "inspect's stored size disagrees with the program headers"
    );
    assert_eq!(
        v["sizes"]["file"],
        std::fs::metadata(&packed).unwrap().len()
    );
    // The text form says the same.
    let (code, text, _) = elfpack_out(&["inspect", packed.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("libc.so.6")
            && text.contains("x86-64 baseline")
            && text.contains("[vdso proxy]"),
        "{text}"
    );
}

#[test]
fn inspect_capture_time_only_with_source_date_epoch() {
    let d = scratch();
    let out = d.path().join("p");
    let st = Command::new(elfpack())
        .args(["build", "-q", "-o"])
        .arg(&out)
        .arg(fixture("fixture-x86_64-pie"))
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .status_t();
    assert!(st.success());
    let (_, json, _) = elfpack_out(&["inspect", "--json", out.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["captured_with"]["time"], 1700000000u64);
}

#[test]
fn inspect_refuses_other_files() {
    for f in [
        fixture("fixture-x86_64-pie"),
        Path::new("/etc/passwd").to_path_buf(),
    ] {
        let (code, out, err) = elfpack_out(&["inspect", f.to_str().unwrap()]);
        assert_eq!(code, Some(3), "{err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("not a file packed by elfpack"), "{err}");
    }
}

#[test]
fn include_makes_dlopen_work_in_an_empty_root() {
    let orig = fixture("dlopen-soname-x86_64");
    let libdir = fixture("lib-x86_64");
    let d = scratch();
    for (include, expect) in [(true, "needed_value=1234\n"), (false, "dlopen failed\n")] {
        let out = d.path().join(if include { "with" } else { "without" });
        let mut cmd = Command::new(elfpack());
        cmd.args(["build", "-q", "-o"])
            .arg(&out)
            .arg(&orig)
            .env("LD_LIBRARY_PATH", &libdir);
        if include {
            cmd.args(["--include", "libneeded.so"]);
        }
        let o = cmd.output_t();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let placed = Placed::new(&out, Mode::Chroot, Arch::X86_64);
        let r = placed.run::<&str>(&[], b"", None);
        assert_eq!(r.stdout, expect, "include={include}: {}", r.stderr);
    }
    // A library that cannot be found is a clear error.
    let (code, _, err) = elfpack_out(&[
        "build",
        "-o",
        "/tmp/x",
        "--include",
        "libnosuch.so.9",
        orig.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(3));
    assert!(
        err.contains("--include libnosuch.so.9") && err.lines().count() == 1,
        "{err}"
    );
}

/// `nm` addresses of `name` in `file`.
fn nm_addr(file: &Path, name: &str) -> Option<u64> {
    let o = Command::new("nm").arg(file).output_t();
    String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 3 && f[2] == name).then(|| u64::from_str_radix(f[0], 16).unwrap())
    })
}

#[test]
fn symbols_name_functions_at_their_packed_addresses() {
    for arch in [Arch::X86_64, Arch::I386] {
        // Without randomisation (as gdb runs a program) the image is where its symbols
        // say; otherwise each part has moved by its slide, and perf maps samples through
        // the file offsets of the mappings.
        let packed = packed(&fixture(&format!("fixture-{}-pie", arch.tag())), &[]);
        let placed = Placed::new(&packed, Mode::NoAslr, arch);
        let r = placed.run(&["addrs"], b"", None);
        let parse = |key: &str| {
            let v = r
                .stdout
                .split(&format!("{key}=0x"))
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            u64::from_str_radix(v, 16).unwrap()
        };
        assert_eq!(
            nm_addr(&packed, "main"),
            Some(parse("main")),
            "{}: main",
            arch.tag()
        );
        assert_eq!(
            nm_addr(&packed, "printf"),
            Some(parse("printf")),
            "{}: printf",
            arch.tag()
        );
    }
}

#[test]
fn gdb_backtrace_names_abort_and_main() {
    let gdb = require("gdb");
    let packed = packed(&fixture("fixture-x86_64-pie"), &[]);
    let o = Command::new(gdb)
        .args(["-batch", "-nx", "-ex", "run", "-ex", "bt", "--args"])
        .arg(&packed)
        .arg("abort")
        .output_t();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("SIGABRT"), "{text}");
    let bt: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    assert!(bt.iter().any(|l| l.contains("abort")), "{text}");
    assert!(bt.iter().any(|l| l.contains(" main ")), "{text}");
}

#[test]
fn strip_leaves_symbols_out() {
    let packed = packed(&fixture("fixture-x86_64-pie"), &["--strip"]);
    assert_eq!(nm_addr(&packed, "main"), None);
    let full = self::packed(&fixture("fixture-x86_64-pie"), &[]);
    assert!(std::fs::metadata(&packed).unwrap().len() < std::fs::metadata(&full).unwrap().len());
    // Still a working program with its inspect document.
    assert!(Command::new(&packed).arg("true").status_t().success());
    let (code, _, _) = elfpack_out(&["inspect", packed.to_str().unwrap()]);
    assert_eq!(code, Some(0));
}

#[test]
fn completions_man_and_help() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, _) = elfpack_out(&["completions", shell]);
        assert_eq!(code, Some(0));
        assert!(
            out.contains("elfpack") && out.contains("inspect"),
            "{shell}"
        );
    }
    let (code, man, _) = elfpack_out(&["man"]);
    assert_eq!(code, Some(0));
    assert!(man.contains(".TH elfpack"), "{man}");
    for sub in ["build", "inspect"] {
        let (code, help, _) = elfpack_out(&[sub, "--help"]);
        assert_eq!(code, Some(0));
        assert!(
            help.contains("Examples:") && help.contains("Exit status"),
            "{help}"
        );
    }
}

#[test]
fn verbosity() {
    let d = scratch();
    let out = d.path().join("p");
    let orig = fixture("fixture-x86_64-pie");
    let run = |flag: Option<&str>| {
        let mut c = Command::new(elfpack());
        c.arg("build").arg(&orig).arg("-o").arg(&out);
        if let Some(f) = flag {
            c.arg(f);
        }
        let o = c.output_t();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert_eq!(run(Some("-q")), "");
    let normal = run(None);
    assert_eq!(normal.lines().count(), 1, "{normal}");
    let verbose = run(Some("-v"));
    for want in [
        "bytes stored",
        "object",
        "libc.so.6",
        "capture",
        "ms",
        "r-x",
    ] {
        assert!(verbose.contains(want), "-v lacks {want}: {verbose}");
    }
}

/// A glibc outside the versions elfpack is tested with is refused at pack time, in one
/// line, with nothing written; `--untested-glibc` packs it with a warning. The glibc is
/// this machine's, with the version in its "release version" string changed to 2.99, found
/// through LD_LIBRARY_PATH at capture.
#[test]
fn untested_glibc_is_refused_unless_asked() {
    let d = scratch();
    let mut libc = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
    let key = b"release version 2.";
    let at = libc
        .windows(key.len())
        .position(|w| w == key)
        .expect("libc says its version")
        + key.len();
    assert!(
        libc[at..at + 2].iter().all(u8::is_ascii_digit),
        "a two-digit minor version"
    );
    libc[at..at + 2].copy_from_slice(b"99");
    std::fs::write(d.path().join("libc.so.6"), &libc).unwrap();
    let env = format!("LD_LIBRARY_PATH={}", d.path().display());
    let prog = fixture("fixture-x86_64-pie");
    let out = d.path().join("packed");
    let pack = |extra: &[&str]| {
        let mut args = vec![
            "build",
            prog.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--env",
            &env,
        ];
        args.extend_from_slice(extra);
        elfpack_out(&args)
    };
    let (code, _, err) = pack(&[]);
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "elfpack: glibc 2.99 is outside the versions elfpack is tested with (2.31 to 2.43)"
        ) && err.contains("--untested-glibc"),
        "{err}"
    );
    assert!(!out.exists());
    let (code, _, err) = pack(&["--untested-glibc"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("warning: glibc 2.99 is outside"), "{err}");
    let r = Command::new(&out).arg("true").output_t();
    assert!(r.status.success());
}
