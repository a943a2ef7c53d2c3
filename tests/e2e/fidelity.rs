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
        let orig = fixture(&format!("fixture-{}-nostack", arch.name()));
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
                let what = format!("{} no PT_GNU_STACK {mode:?} {args:?}", arch.name());
                assert_same(&what, &p, &o);
                if args[0] != "personality" {
                    assert!(!p.stdout.contains("=no"), "{what}: {}", p.stdout);
                }
            }
            let word = if arch == Arch::X86_64 { 8 } else { 4 };
            let c = placed.run(&["canary"], b"", None);
            assert_fresh_canary(&format!("{} {mode:?}", arch.name()), &c, word);
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
        let orig = fixture(&format!("fixture-{}-pie", arch.name()));
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
            assert_same(&format!("{} {mode:?} sysconf", arch.name()), &p, &o);
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
            let orig = fixture(&format!("bigbss-{}-{mb}", arch.name()));
            let packed = packed(&orig, &[]);
            for mode in [Mode::Native, Mode::Qemu] {
                let placed = Placed::new(&packed, mode, arch);
                let p = placed.run(&["x"], b"", None);
                let o = run_original(&orig, placed.argv0(), &["x"], b"", None);
                let what = format!("{} {mb} MiB bss {mode:?}", arch.name());
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
