//! The fixture programs, packed and run in every mode, compared with the unpacked originals.
use elfpack_tests::*;

/// A compared case of `fixtures/fixture.c`: name, arguments of the packed run, arguments
/// of the original run, stdin.
type Case = (&'static str, Vec<String>, Vec<String>, &'static [u8]);

fn c_cases(placed: &Placed) -> Vec<Case> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // fork + execve: of /bin/true where there is one; in the empty root, of the packed
    // program itself (with its `true` case). Both print the child's exit status.
    let fork_packed = if placed.argv0() == "/prog" {
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
    // No /proc in the empty root.
    if placed.argv0() != "/prog" {
        v.push((
            "cmdline",
            s(&["cmdline", "a b", "c"]),
            s(&["cmdline", "a b", "c"]),
            b"",
        ));
    }
    v
}

fn check_c(arch: Arch, pie: &str, mode: Mode) {
    let orig = fixture(&format!("fixture-{}-{pie}", arch.name()));
    let opts = pack_options(mode);
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let packed = packed(&orig, &opts);
    let placed = Placed::new(&packed, mode, arch);
    for (name, packed_args, orig_args, stdin) in c_cases(&placed) {
        let p = placed.run(&packed_args, stdin, None);
        let o = run_original(&orig, placed.argv0(), &orig_args, stdin, None);
        assert_same(
            &format!("{} {pie} {mode:?} case {name}", arch.name()),
            &p,
            &o,
        );
    }
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
                &format!("{} {pie} {mode:?} case {case}", arch.name()),
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
        let canary = u64::from_str_radix(
            line.split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches("canary=0x"),
            16,
        )
        .unwrap();
        let random = line.split("random=").nth(1).unwrap();
        let bytes: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&random[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let word = if arch == Arch::X86_64 { 8 } else { 4 };
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
    let orig = fixture(&format!("cxx-{}-{pie}", arch.name()));
    let opts = pack_options(mode);
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let packed = packed(&orig, &opts);
    let placed = Placed::new(&packed, mode, arch);
    let args = ["first", "second"];
    let p = placed.run(&args, b"", None);
    let o = run_original(&orig, placed.argv0(), &args, b"", None);
    assert_same(&format!("C++ {} {pie} {mode:?}", arch.name()), &p, &o);
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

/// 200 consecutive runs of one packed fixture under ASLR all behave like the original.
fn stress(arch: Arch) {
    let orig = fixture(&format!("fixture-{}-pie", arch.name()));
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
