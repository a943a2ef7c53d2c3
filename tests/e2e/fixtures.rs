//! The fixture programs, packed and run in every mode, compared with the unpacked originals.
use elfpack_tests::*;

/// A compared case of `fixtures/fixture.c`: name, arguments of the packed run, arguments
/// of the original run, stdin.
type Case = (&'static str, Vec<String>, Vec<String>, &'static [u8]);

fn c_cases(placed: &Placed) -> Vec<Case> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // fork + execve: of /bin/true where there is one; in the empty root, of the packed
    // program itself (with its `true` case). Both print the child's exit status.
    let fork_packed = if placed.mode() == Mode::Chroot {
        vec!["fork".to_string(), placed.self_path(), "true".into()]
    } else {
        s(&["fork", "/bin/true"])
    };
    let mut v = vec![
        (
            "args",
            s(&["args", "5", "two words", ""]),
            s(&["args", "5", "two words", ""]),
            &b""[..],
        ),
        ("env", s(&["env"]), s(&["env"]), b""),
        ("auxv", s(&["auxv"]), s(&["auxv"]), b""),
        ("tls", s(&["tls"]), s(&["tls"]), b""),
        ("malloc", s(&["malloc"]), s(&["malloc"]), b""),
        ("dlopen", s(&["dlopen"]), s(&["dlopen"]), b""),
        ("clock", s(&["clock"]), s(&["clock"]), b""),
        ("fork", fork_packed, s(&["fork", "/bin/true"]), b""),
        ("signal", s(&["signal"]), s(&["signal"]), b""),
        ("pi", s(&["pi"]), s(&["pi"]), b""),
        ("brk", s(&["brk"]), s(&["brk"]), b""),
        (
            "stdin",
            s(&["stdin"]),
            s(&["stdin"]),
            b"some input\nover two lines\n",
        ),
    ];
    // No /proc in the empty root (pthread_getattr_np reads /proc/self/maps for the main
    // thread), and no libgcc_s.so.1, which pthread_exit loads to unwind.
    if placed.mode() != Mode::Chroot {
        v.push(("mainexit", s(&["mainexit"]), s(&["mainexit"]), b""));
        v.push(("stackend", s(&["stackend"]), s(&["stackend"]), b""));
        v.push((
            "cmdline",
            s(&["cmdline", "a b", "c"]),
            s(&["cmdline", "a b", "c"]),
            b"",
        ));
        v.push(("relro", s(&["relro"]), s(&["relro"]), b""));
    }
    // qemu-user emulates /proc/self/stat and /proc/self/auxv from its own state, and
    // refuses PR_SET_MM_MAP, which publishes the program's layout to the kernel.
    if placed.mode() != Mode::Chroot && placed.mode() != Mode::Qemu {
        v.push(("procauxv", s(&["procauxv"]), s(&["procauxv"]), b""));
        let args = s(&["stat", "two words", "x"]);
        v.push(("stat", args.clone(), args, b""));
        v.push(("heap", s(&["brk", "heap"]), s(&["brk", "heap"]), b""));
    }
    v
}

/// Lines every packed run must print, whatever the original printed: each restore step
/// has a visible effect here (auxv, mm layout, stack pointers, registrations, protections).
fn expected_lines(case: &str, mode: Mode) -> &'static [&'static str] {
    match case {
        "auxv" => &[
            "AT_PHDR is the program's=yes",
            "matches=yes",
            "AT_ENTRY is _start=yes",
            "AT_BASE is ld.so=yes",
        ],
        "procauxv" => &["/proc/self/auxv agrees=yes (4 entries)"],
        "stat" => &[
            "code holds main=yes",
            "data holds data_var=yes",
            "start_brk is the first break=yes",
            "arg range=yes",
            "env range=yes",
        ],
        "stackend" => &[
            "__libc_stack_end is &argc=yes",
            "_dl_argv is argv=yes",
            "pthread_getattr_np=ok holds a local=yes",
        ],
        "relro" => &["writable mappings=0"],
        "mainexit" => &["join main=ok"],
        "brk" => &["sbrk grew=1048576"],
        "heap" => &["sbrk grew=1048576", "[heap] holds the grown break=yes"],
        "pi" => &["pi mutex count=400000"],
        "clock" if mode != Mode::Qemu => &["monotonic advances=yes", "realtime consistent=yes"],
        _ => &[],
    }
}

fn check_c(arch: Arch, pie: &str, mode: Mode) {
    let orig = fixture(&format!("fixture-{}-{pie}", arch.tag()));
    let packed = packed(&orig, &[]);
    let placed = Placed::new(&packed, mode, arch);
    for (name, packed_args, orig_args, stdin) in c_cases(&placed) {
        let p = placed.run(&packed_args, stdin, None);
        let o = run_original(&orig, placed.argv0(), &orig_args, stdin, None);
        let what = format!("{} {pie} {mode:?} case {name}", arch.tag());
        assert_same(&what, &p, &o);
        for line in expected_lines(name, mode) {
            assert!(
                p.stdout.contains(line),
                "{what}: no `{line}` in {}",
                p.stdout
            );
        }
    }
    // The pointer guard is this run's: non-zero, taken from AT_RANDOM, new at every run.
    let guards: Vec<String> = (0..2)
        .map(|_| placed.run(&["pguard"], b"", None).stdout)
        .collect();
    for g in &guards {
        assert!(
            g.ends_with("from AT_RANDOM=yes\n") && !g.starts_with("pointer_guard=0x0 "),
            "{mode:?}: pointer guard not refreshed: {g}"
        );
    }
    assert_ne!(
        guards[0], guards[1],
        "{mode:?}: the same pointer guard twice"
    );
    // sched_getcpu() reads the rseq area (or asks the kernel): pinned to CPU 1 it says 1.
    let p = placed.run(&["getcpu"], b"", Some(1));
    let o = run_original(&orig, "", &["getcpu"], b"", Some(1));
    assert_same(&format!("{mode:?} getcpu"), &p, &o);
    assert_eq!(
        p.stdout, "cpu=1 getcpu=0:1\n",
        "{mode:?}: sched_getcpu under taskset -c 1"
    );
    // The kernel registrations replayed by the stub are live: the rseq area is kept up to
    // date, and the robust list lets a waiter see EOWNERDEAD when the holder's main thread
    // exits. (qemu-user implements neither; the empty root has no /proc/self/exe.)
    if mode != Mode::Qemu && mode != Mode::Chroot {
        for case in ["rseq", "robust"] {
            let p = placed.run(&[case], b"", None);
            let o = run_original(&orig, placed.argv0(), &[case], b"", None);
            assert_same(
                &format!("{} {pie} {mode:?} case {case}", arch.tag()),
                &p,
                &o,
            );
        }
        let r = placed.run(&["robust"], b"", None).stdout;
        assert_eq!(r, "child=0 lock=EOWNERDEAD\n", "{mode:?}");
        assert_eq!(
            placed.run(&["rseq"], b"", None).stdout,
            "rseq registered=yes\n",
            "{mode:?}"
        );
    }
    // The heap is randomised like the original's (natively, with ASLR).
    if mode == Mode::Native {
        let a = placed.run(&["brkaddr"], b"", None).stdout;
        let b = placed.run(&["brkaddr"], b"", None).stdout;
        let c = placed.run(&["brkaddr"], b"", None).stdout;
        assert!(
            a != b || b != c,
            "{mode:?}: the heap starts at the same address every run: {a}"
        );
    }
    // A fresh canary and fresh AT_RANDOM bytes at every run, the canary derived from them
    // as glibc does (first word, lowest byte cleared).
    let a = placed.run(&["canary"], b"", None);
    let b = placed.run(&["canary"], b"", None);
    assert_eq!(a.code, Some(0), "{mode:?} canary: {}", a.stderr);
    assert_ne!(
        a.stdout, b.stdout,
        "{mode:?}: two runs have the same canary and AT_RANDOM"
    );
    for r in [&a, &b] {
        let line = r.stdout.trim();
        let parsed = line.strip_prefix("canary=0x").and_then(|rest| {
            let (canary, random) = rest.split_once(" random=")?;
            let canary = u64::from_str_radix(canary, 16).ok()?;
            let bytes = (0..16)
                .map(|i| u8::from_str_radix(random.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some((canary, bytes))
        });
        let Some((canary, bytes)) = parsed else {
            panic!("{mode:?}: the canary case printed `{line}`");
        };
        assert_ne!(canary, 0, "{mode:?}: the canary is zero");
        let word = arch.word();
        let mut w = [0u8; 8];
        w[..word].copy_from_slice(&bytes[..word]);
        assert_eq!(
            canary,
            u64::from_le_bytes(w) & !0xff,
            "{mode:?}: canary not derived from AT_RANDOM"
        );
    }
}

fn check_cxx(arch: Arch, pie: &str, mode: Mode) {
    let orig = fixture(&format!("cxx-{}-{pie}", arch.tag()));
    let packed = packed(&orig, &[]);
    let placed = Placed::new(&packed, mode, arch);
    let args = ["first", "second"];
    let p = placed.run(&args, b"", None);
    let o = run_original(&orig, placed.argv0(), &args, b"", None);
    assert_same(&format!("C++ {} {pie} {mode:?}", arch.tag()), &p, &o);
    assert!(
        p.stdout.starts_with("static constructor ran\n"),
        "{}",
        p.stdout
    );
}

macro_rules! matrix {
    ($($name:ident: $check:ident, $arch:expr, $pie:expr, $mode:expr;)*) => {
        $( #[test] fn $name() { $check($arch, $pie, $mode) } )*
    };
}

matrix! {
    c_x86_64_pie_native: check_c, Arch::X86_64, "pie", Mode::Native;
    c_x86_64_pie_noaslr: check_c, Arch::X86_64, "pie", Mode::NoAslr;
    c_x86_64_pie_nobody: check_c, Arch::X86_64, "pie", Mode::Nobody;
    c_x86_64_pie_chroot: check_c, Arch::X86_64, "pie", Mode::Chroot;
    c_x86_64_pie_qemu: check_c, Arch::X86_64, "pie", Mode::Qemu;
    c_x86_64_nopie_native: check_c, Arch::X86_64, "nopie", Mode::Native;
    c_x86_64_nopie_noaslr: check_c, Arch::X86_64, "nopie", Mode::NoAslr;
    c_x86_64_nopie_nobody: check_c, Arch::X86_64, "nopie", Mode::Nobody;
    c_x86_64_nopie_chroot: check_c, Arch::X86_64, "nopie", Mode::Chroot;
    c_x86_64_nopie_qemu: check_c, Arch::X86_64, "nopie", Mode::Qemu;
    cxx_x86_64_pie_native: check_cxx, Arch::X86_64, "pie", Mode::Native;
    cxx_x86_64_pie_noaslr: check_cxx, Arch::X86_64, "pie", Mode::NoAslr;
    cxx_x86_64_pie_nobody: check_cxx, Arch::X86_64, "pie", Mode::Nobody;
    cxx_x86_64_pie_chroot: check_cxx, Arch::X86_64, "pie", Mode::Chroot;
    cxx_x86_64_pie_qemu: check_cxx, Arch::X86_64, "pie", Mode::Qemu;
    cxx_x86_64_nopie_native: check_cxx, Arch::X86_64, "nopie", Mode::Native;
    cxx_x86_64_nopie_noaslr: check_cxx, Arch::X86_64, "nopie", Mode::NoAslr;
    cxx_x86_64_nopie_nobody: check_cxx, Arch::X86_64, "nopie", Mode::Nobody;
    cxx_x86_64_nopie_chroot: check_cxx, Arch::X86_64, "nopie", Mode::Chroot;
    cxx_x86_64_nopie_qemu: check_cxx, Arch::X86_64, "nopie", Mode::Qemu;
    c_i386_pie_native: check_c, Arch::I386, "pie", Mode::Native;
    c_i386_pie_noaslr: check_c, Arch::I386, "pie", Mode::NoAslr;
    c_i386_pie_nobody: check_c, Arch::I386, "pie", Mode::Nobody;
    c_i386_pie_chroot: check_c, Arch::I386, "pie", Mode::Chroot;
    c_i386_pie_qemu: check_c, Arch::I386, "pie", Mode::Qemu;
    cxx_i386_pie_native: check_cxx, Arch::I386, "pie", Mode::Native;
    cxx_i386_pie_noaslr: check_cxx, Arch::I386, "pie", Mode::NoAslr;
    cxx_i386_pie_nobody: check_cxx, Arch::I386, "pie", Mode::Nobody;
    cxx_i386_pie_chroot: check_cxx, Arch::I386, "pie", Mode::Chroot;
    cxx_i386_pie_qemu: check_cxx, Arch::I386, "pie", Mode::Qemu;
    c_i386_nopie_native: check_c, Arch::I386, "nopie", Mode::Native;
    c_i386_nopie_noaslr: check_c, Arch::I386, "nopie", Mode::NoAslr;
    c_i386_nopie_nobody: check_c, Arch::I386, "nopie", Mode::Nobody;
    c_i386_nopie_chroot: check_c, Arch::I386, "nopie", Mode::Chroot;
    c_i386_nopie_qemu: check_c, Arch::I386, "nopie", Mode::Qemu;
    cxx_i386_nopie_native: check_cxx, Arch::I386, "nopie", Mode::Native;
    cxx_i386_nopie_noaslr: check_cxx, Arch::I386, "nopie", Mode::NoAslr;
    cxx_i386_nopie_nobody: check_cxx, Arch::I386, "nopie", Mode::Nobody;
    cxx_i386_nopie_chroot: check_cxx, Arch::I386, "nopie", Mode::Chroot;
    cxx_i386_nopie_qemu: check_cxx, Arch::I386, "nopie", Mode::Qemu;
}

/// ld.so's copy of the AT_PLATFORM string, which it keeps from the capture's stack, is
/// this run's: `$PLATFORM` in a dlopen path expands to it.
#[test]
fn platform_token_expands_in_dlopen() {
    for arch in [Arch::X86_64, Arch::I386] {
        let d = scratch();
        let lib = fixture(&format!("lib-{}", arch.tag())).join("libneeded.so");
        for platform in ["x86_64", "i686", "i386"] {
            std::fs::create_dir(d.path().join(platform)).unwrap();
            std::fs::copy(&lib, d.path().join(platform).join("libneeded.so")).unwrap();
        }
        let dir = d.path().display().to_string();
        let orig = fixture(&format!("fixture-{}-pie", arch.tag()));
        let placed = Placed::new(&packed(&orig, &[]), Mode::Native, arch);
        let p = placed.run(&["platform", &dir], b"", None);
        let o = run_original(&orig, placed.argv0(), &["platform", &dir], b"", None);
        assert_same(&format!("{} $PLATFORM", arch.tag()), &p, &o);
        assert_eq!(p.stdout, "dlopen $PLATFORM: loaded\n", "{}", arch.tag());
    }
}

/// 200 consecutive runs of one packed fixture under ASLR all behave like the original.
fn stress(arch: Arch) {
    let orig = fixture(&format!("fixture-{}-pie", arch.tag()));
    let placed = Placed::new(&packed(&orig, &[]), Mode::Native, arch);
    let expected = run_original(&orig, placed.argv0(), &["args", "3", "x"], b"", None);
    for i in 0..200 {
        let r = placed.run(&["args", "3", "x"], b"", None);
        assert_same(&format!("stress run {i}"), &r, &expected);
    }
}

#[test]
fn stress_200_runs_x86_64() {
    stress(Arch::X86_64)
}

#[test]
fn stress_200_runs_i386() {
    stress(Arch::I386)
}
