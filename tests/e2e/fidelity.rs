//! The packed program behaves like the original in the cases real programs hit, beyond
//! the fixture matrix: each test compares with the unpacked original.
use elfpack_tests::*;

/// Checks a `canary` case run: the canary is non-zero and derived from this run's AT_RANDOM
/// as glibc does (first word, lowest byte cleared).
fn assert_fresh_canary(what: &str, r: &Run, word: usize) {
    let line = r.stdout.trim();
    let parsed = line.strip_prefix("canary=0x").and_then(|rest| {
        let (canary, random) = rest.split_once(" random=")?;
        let canary = u64::from_str_radix(canary, 16).ok()?;
        let bytes = (0..word)
            .map(|i| u8::from_str_radix(random.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some((canary, bytes))
    });
    let Some((canary, bytes)) = parsed else {
        panic!("{what}: the canary case printed `{line}` ({})", r.stderr);
    };
    let mut w = [0u8; 8];
    w[..word].copy_from_slice(&bytes);
    assert!(canary != 0, "{what}: zero canary");
    assert_eq!(
        canary,
        u64::from_le_bytes(w) & !0xff,
        "{what}: stale canary"
    );
}

/// A program without PT_GNU_STACK, as linked before the GNU stack note existed: on i386 the
/// kernel gives it READ_IMPLIES_EXEC, so every mapping is executable. The packed program
/// has the same personality, and its data is still told from its code (the fixups are
/// found): argv, the environment, the canary and the stack pointers are this run's.
#[test]
fn program_without_gnu_stack() {
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = fixture(&format!("fixture-{}-nostack", arch.tag()));
        let packed = packed(&orig, &[]);
        for mode in [Mode::Native, Mode::NoAslr, Mode::Qemu] {
            let placed = Placed::new(&packed, mode, arch);
            let mut cases: Vec<&[&str]> = vec![
                &["args", "3", "two words"],
                &["env"],
                &["auxv"],
                &["tls"],
                &["mainexit"],
                &["stackend"],
            ];
            if mode != Mode::Qemu {
                cases.push(&["personality"]);
                cases.push(&["procauxv"]);
                cases.push(&["stat", "x"]);
            }
            for args in cases {
                let p = placed.run(args, b"", None);
                let o = run_original(&orig, placed.argv0(), args, b"", None);
                let what = format!("{} no PT_GNU_STACK {mode:?} {args:?}", arch.tag());
                assert_same(&what, &p, &o);
                if args[0] != "personality" {
                    assert!(!p.stdout.contains("=no"), "{what}: {}", p.stdout);
                }
            }
            let word = arch.word();
            let c = placed.run(&["canary"], b"", None);
            assert_fresh_canary(&format!("{} {mode:?}", arch.tag()), &c, word);
        }
        if arch == Arch::I386 {
            let p = Placed::new(&packed, Mode::Native, arch).run(&["personality"], b"", None);
            assert_eq!(
                p.stdout, "READ_IMPLIES_EXEC=yes new mapping executable=yes\n",
                "the i386 original runs with READ_IMPLIES_EXEC; so must the packed program"
            );
        }
    }
}

/// The values glibc copies from the auxv while starting (`sysconf(_SC_MINSIGSTKSZ)`,
/// `_SC_SIGSTKSZ`, `_SC_CLK_TCK`, `getauxval(AT_HWCAP2)`) are this run's, natively and
/// under qemu-user, whose auxv differs from the capture machine's (no AT_MINSIGSTKSZ,
/// another XSAVE size, no HWCAP2 bits).
#[test]
fn values_copied_from_the_auxv_are_this_runs() {
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = fixture(&format!("fixture-{}-pie", arch.tag()));
        let packed = packed(&orig, &[]);
        for mode in [Mode::Native, Mode::Qemu] {
            let placed = Placed::new(&packed, mode, arch);
            let p = placed.run(&["sysconf"], b"", None);
            let o = if mode == Mode::Qemu {
                let mut cmd = std::process::Command::new(require(arch.qemu()));
                cmd.args(["-0", placed.argv0()])
                    .arg(&orig)
                    .arg("sysconf")
                    .env_clear()
                    .envs(test_env());
                run_cmd(cmd, b"")
            } else {
                run_original(&orig, placed.argv0(), &["sysconf"], b"", None)
            };
            assert_same(&format!("{} {mode:?} sysconf", arch.tag()), &p, &o);
            assert!(p.stdout.starts_with("MINSIGSTKSZ="), "{}", p.stdout);
        }
    }
}

/// A program whose bss is larger than the room the capture leaves above a program by
/// default (512 MiB on i386): ld.so, the vDSO and the libraries go where nothing is mapped,
/// so the bss stays zero, natively and under qemu-user.
#[test]
fn large_bss_stays_zero() {
    for arch in [Arch::X86_64, Arch::I386] {
        for mb in [523, 1536] {
            let orig = fixture(&format!("bigbss-{}-{mb}", arch.tag()));
            let packed = packed(&orig, &[]);
            for mode in [Mode::Native, Mode::Qemu] {
                let placed = Placed::new(&packed, mode, arch);
                let p = placed.run(&["x"], b"", None);
                let o = run_original(&orig, placed.argv0(), &["x"], b"", None);
                let what = format!("{} {mb} MiB bss {mode:?}", arch.tag());
                assert_same(&what, &p, &o);
                assert!(
                    p.stdout.contains("nonzero=0 malloc=ok"),
                    "{what}: {}",
                    p.stdout
                );
            }
        }
    }
}

/// A string as an OsStr, for argument lists that mix strings and paths.
fn o(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

/// Runs `elfpack ARGS` with `env` added to the test's environment.
fn elfpack_with(args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> Run {
    let mut cmd = std::process::Command::new(elfpack());
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    run_cmd(cmd, b"")
}

/// The `inspect --json` document of a packed file.
fn inspect_json(packed: &std::path::Path) -> serde_json::Value {
    let r = elfpack_with(
        &["inspect".as_ref(), "--json".as_ref(), packed.as_ref()],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

/// A MALLOC_PERTURB_ in the packing shell is not baked into the packed program (which then
/// behaves like the original run without it; a note says it was left out), unless `--env`
/// asks for it, and `inspect` shows the tunables the image holds.
#[test]
fn malloc_tunables_of_the_packing_shell_are_not_baked_in() {
    let perturb: &std::ffi::OsStr = "165".as_ref();
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = fixture(&format!("fixture-{}-pie", arch.tag()));
        let d = scratch();
        let (plain, asked) = (d.path().join("plain"), d.path().join("asked"));
        let r = elfpack_with(
            &[o("build"), orig.as_ref(), o("-o"), plain.as_ref()],
            &[("MALLOC_PERTURB_", perturb)],
        );
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let notes: Vec<&str> = r.stderr.lines().filter(|l| l.contains("note")).collect();
        assert!(
            notes.len() == 1 && notes[0].contains("MALLOC_PERTURB_"),
            "a note names what was left out: {}",
            r.stderr
        );
        let quiet = elfpack_with(
            &[o("build"), o("-q"), orig.as_ref(), o("-o"), plain.as_ref()],
            &[("MALLOC_PERTURB_", perturb)],
        );
        assert_eq!((quiet.code, quiet.stderr.as_str()), (Some(0), ""));
        let r = elfpack_with(
            &[
                o("build"),
                o("-q"),
                orig.as_ref(),
                o("-o"),
                asked.as_ref(),
                o("--env"),
                o("MALLOC_PERTURB_=165"),
            ],
            &[],
        );
        assert_eq!(r.code, Some(0), "{}", r.stderr);

        let without = run_original(&orig, "prog", &["perturb"], b"", None);
        let mut cmd = std::process::Command::new(&orig);
        cmd.arg("perturb")
            .env_clear()
            .envs(test_env())
            .env("MALLOC_PERTURB_", perturb);
        let with = run_cmd(cmd, b"");
        assert_ne!(
            without.stdout, with.stdout,
            "the fixture shows MALLOC_PERTURB_"
        );
        for (file, want, what) in [(&plain, &without, "plain"), (&asked, &with, "--env")] {
            for mode in [Mode::Native, Mode::Qemu] {
                let p = Placed::new(file, mode, arch).run(&["perturb"], b"", None);
                assert_same(&format!("{} {what} {mode:?}", arch.tag()), &p, want);
            }
        }
        // At run time the variable is not read again (as the README says).
        let placed = Placed::new(&plain, Mode::Native, arch);
        let mut cmd = placed.command(&["perturb"], None);
        cmd.env("MALLOC_PERTURB_", perturb);
        assert_eq!(run_cmd(cmd, b"").stdout, without.stdout);

        let tunables = |f: &std::path::Path| -> Vec<String> {
            inspect_json(f)["tunables"]
                .as_array()
                .expect("inspect --json has tunables")
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let t = tunables(&plain);
        assert!(!t.iter().any(|t| t.starts_with("MALLOC_")), "{t:?}");
        assert!(t.iter().any(|t| t.starts_with("GLIBC_TUNABLES=")), "{t:?}");
        let t = tunables(&asked);
        assert!(t.contains(&"MALLOC_PERTURB_=165".to_string()), "{t:?}");
        let text = elfpack_with(&[o("inspect"), asked.as_ref()], &[]);
        assert!(
            text.stdout
                .lines()
                .any(|l| l.starts_with("tunables: ") && l.contains("MALLOC_PERTURB_=165")),
            "{}",
            text.stdout
        );
    }
}

/// `--include libm.so.6` gets the library of the program's class and machine, even where
/// another class's comes first in the search (the x32 libm of a multilib system); ld.so
/// loads it, `inspect` lists it, and a later dlopen of the name works in an empty root.
#[test]
fn include_picks_the_programs_class_and_machine() {
    for (arch, class, machine) in [(Arch::X86_64, 2u8, 62u16), (Arch::I386, 1, 3)] {
        let orig = fixture(&format!("dlopen-arg-{}", arch.tag()));
        let d = scratch();
        // /libx32 first: its libm is EM_X86_64 but 32-bit.
        for (i, lib_path) in ["", "/libx32:/usr/libx32"].into_iter().enumerate() {
            let out = d.path().join(format!("packed{i}"));
            let mut env: Vec<(&str, &std::ffi::OsStr)> = Vec::new();
            if !lib_path.is_empty() {
                env.push(("LD_LIBRARY_PATH", o(lib_path)));
            }
            let r = elfpack_with(
                &[
                    o("build"),
                    o("-q"),
                    orig.as_ref(),
                    o("-o"),
                    out.as_ref(),
                    o("--include"),
                    o("libm.so.6"),
                ],
                &env,
            );
            let what = format!("{} LD_LIBRARY_PATH={lib_path}", arch.tag());
            assert_eq!(r.code, Some(0), "{what}: {}", r.stderr);
            let doc = inspect_json(&out);
            let libm = doc["libraries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["soname"] == "libm.so.6")
                .unwrap_or_else(|| panic!("{what}: no libm in the image: {doc}"));
            let bytes = std::fs::read(libm["path"].as_str().unwrap()).unwrap();
            assert_eq!(
                (bytes[4], u16::from_le_bytes([bytes[18], bytes[19]])),
                (class, machine),
                "{what}: {}",
                libm["path"]
            );
            let args = ["libm.so.6"];
            let p = Placed::new(&out, Mode::Chroot, arch).run(&args, b"", None);
            let orig_run = run_original(&orig, "prog", &args, b"", None);
            assert_same(&what, &p, &orig_run);
            assert_eq!(p.stdout, "dlopen libm.so.6 ok\n", "{what}");
        }
    }
    // A file ld.so will not preload (an executable) is an error after the capture, not a
    // packed file without it.
    let orig = fixture("dlopen-arg-x86_64");
    let exe = fixture("fixture-x86_64-nopie");
    let d = scratch();
    let out = d.path().join("packed");
    let r = elfpack_with(
        &[
            o("build"),
            orig.as_ref(),
            o("-o"),
            out.as_ref(),
            o("--include"),
            exe.as_ref(),
        ],
        &[],
    );
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("elfpack: --include ") && last.contains("ld.so did not load"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

/// A library included by a name that is not its soname (it has none, or the name is a link
/// to a file of another soname): a later `dlopen` of that name finds it in the image, in
/// an empty root, as the original finds it on the host.
#[test]
fn include_by_a_name_that_is_not_the_soname_serves_dlopen_by_name() {
    for (arch, kind) in [
        (Arch::X86_64, "nosoname"),
        (Arch::I386, "nosoname"),
        (Arch::X86_64, "versioned"),
        (Arch::I386, "versioned"),
    ] {
        let orig = fixture(&format!("dlopen-arg-{}", arch.tag()));
        let libdir = fixture(&format!("lib-{}-{kind}", arch.tag()));
        let d = scratch();
        let out = d.path().join("packed");
        let r = elfpack_with(
            &[
                o("build"),
                o("-q"),
                orig.as_ref(),
                o("-o"),
                out.as_ref(),
                o("--include"),
                o("libneeded.so"),
            ],
            &[("LD_LIBRARY_PATH", libdir.as_ref())],
        );
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let args = ["libneeded.so", "needed_value"];
        let mut cmd = std::process::Command::new(&orig);
        cmd.args(args)
            .env_clear()
            .envs(test_env())
            .env("LD_LIBRARY_PATH", &libdir);
        let original = run_cmd(cmd, b"");
        assert_eq!(original.stdout, "needed_value=1234\n");
        let p = Placed::new(&out, Mode::Chroot, arch).run(&args, b"", None);
        assert_same(&format!("{} {kind}", arch.tag()), &p, &original);
    }
}

/// The first line of a sanitizer's report, without the process ID and addresses that
/// differ from run to run (`==123==ERROR: AddressSanitizer: heap-buffer-overflow on
/// address 0x…` becomes `ERROR: AddressSanitizer: heap-buffer-overflow`).
fn sanitizer_report(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("ERROR: ") || l.contains("WARNING: ThreadSanitizer"))
        .unwrap_or_default();
    let line = line.rsplit("==").next().unwrap_or(line);
    let line = line.split(" on address").next().unwrap_or(line);
    line.split(" (pid=")
        .next()
        .unwrap_or(line)
        .trim()
        .to_string()
}

/// AddressSanitizer and ThreadSanitizer builds run packed: the image sits where their
/// runtimes expect the program (above ASan's shadow, in TSan's high application range), and
/// each finds what it finds in the original: a heap overflow, a leak, a data race, with
/// the same exit status, output and first line of report. Natively, without ASLR and as
/// another user (not in an empty root: both runtimes read /proc; not under qemu-user, where
/// the originals do not start either).
#[test]
fn sanitizer_builds_run_packed() {
    let cases: [(&str, &[&str]); 5] = [
        ("asan-x86_64", &[]),
        ("asan-x86_64", &["overflow"]),
        ("asan-x86_64", &["leak"]),
        ("tsan-x86_64", &[]),
        ("tsan-x86_64", &["race"]),
    ];
    for (name, args) in cases {
        let orig = fixture(name);
        let packed = packed(&orig, &[]);
        for mode in [Mode::Native, Mode::NoAslr, Mode::Nobody] {
            let placed = Placed::new(&packed, mode, Arch::X86_64);
            let p = placed.run(args, b"", None);
            let o = run_original(&orig, placed.argv0(), args, b"", None);
            let what = format!("{name} {args:?} {mode:?}");
            assert_eq!(
                (p.code, &p.stdout),
                (o.code, &o.stdout),
                "{what}: {}",
                p.stderr
            );
            assert_eq!(
                sanitizer_report(&p.stderr),
                sanitizer_report(&o.stderr),
                "{what}: {}",
                p.stderr
            );
            if !args.is_empty() {
                assert!(!sanitizer_report(&o.stderr).is_empty(), "{what}: no report");
            }
        }
    }
}

/// A sanitizer build elfpack has no place for (not position-independent) is refused in one
/// line before anything runs, and so is one asked to capture at its entry point (its
/// runtime would start at capture).
#[test]
fn unplaceable_sanitizer_builds_are_refused() {
    for (name, extra) in [
        ("asan-x86_64-nopie", None),
        ("asan-x86_64", Some("--stop-at-entry")),
    ] {
        let orig = fixture(name);
        let d = scratch();
        let out = d.path().join("packed");
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["build".as_ref(), orig.as_ref(), "-o".as_ref(), out.as_ref()];
        args.extend(extra.map(std::ffi::OsStr::new));
        let r = elfpack_with(&args, &[]);
        assert_eq!(r.code, Some(3), "{name}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(
            r.stderr.contains("is built with AddressSanitizer"),
            "{}",
            r.stderr
        );
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
