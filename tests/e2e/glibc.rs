//! Packing on other glibc versions. `tests/setup --tests` makes Debian roots with
//! debootstrap: Debian 11 (glibc 2.31) for x86-64 and i386, Debian 12 (2.36) for i386 (this
//! machine is the 2.36 x86-64 case), Debian 13 (2.41) and Debian unstable (2.43) for
//! x86-64 (no Debian 13 i386 root: see tests/setup). In each root the static elfpack (`ELFPACK_STATIC_BIN`, the musl build)
//! packs the root's own programs with the root's own ld.so, as a user of that distribution
//! would. Each packed file then runs in the root, on this machine, in an empty root, under
//! qemu-user (also with qemu's Nehalem CPU model for x86-64), under `setarch -R` and as uid
//! 65534. Its stdout and exit status must equal those of the original program run in the
//! root with the same arguments, stdin and environment. Two packs of one program are
//! byte-identical (ignored for the i386 roots: a known bug, see below), and in the 2.41 and
//! 2.43 roots malloc's tcache key, the stack-protector canary and the pointer guard of a
//! packed program differ from one run to the next.
//!
//! Commands in a root run under `unshare --mount`: /proc is mounted in a mount namespace of
//! their own, so it is unmounted with the last process of the command, even when a test
//! fails or the harness kills the command. The test's files in the root are in a
//! directory under the root's /tmp that is removed when the test ends.
use elfpack_tests::{
    bench, require, run_cmd_within, scratch, test_env, without_qemu_warnings, Arch, ArchTest, Mode,
    Placed, Run, ALL_MODES, PLACED_NAME,
};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Deadline of one command (a pack runs the program twice under ptrace; qemu is slow).
const LIMIT: Duration = Duration::from_secs(300);

fn run(cmd: Command, stdin: &[u8]) -> Run {
    run_cmd_within(cmd, stdin, LIMIT)
}

/// A cached Debian root, with a work directory of this test inside it.
struct Root {
    name: &'static str,
    dir: PathBuf,
    /// Under the root's /tmp; holds elfpack, probes and packed files. Removed on drop.
    work: tempfile::TempDir,
}

impl Root {
    fn new(name: &'static str) -> Root {
        let (dir, work) = bench::root_work_dir(name, "elfpack-glibc-");
        let root = Root { name, dir, work };
        std::fs::copy(bench::static_elfpack(), root.host("elfpack")).unwrap();
        std::fs::set_permissions(root.host("elfpack"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        root
    }

    /// `file` of the work directory, as a path inside the root.
    fn inside(&self, file: &str) -> String {
        let work = self.work.path().file_name().unwrap().to_str().unwrap();
        format!("/tmp/{work}/{file}")
    }

    /// `file` of the work directory, as a path on this machine.
    fn host(&self, file: &str) -> PathBuf {
        self.work.path().join(file)
    }

    /// Runs `argv` chrooted in the root, with /proc mounted (in a mount namespace of its
    /// own) and the tests' environment.
    fn run<S: AsRef<OsStr>>(&self, argv: &[S], stdin: &[u8]) -> Run {
        let mut c = Command::new(require("unshare"));
        c.args(["--mount", "--propagation", "private"])
            .arg(format!("--mount-proc={}", self.dir.join("proc").display()))
            .arg(require("chroot"))
            .arg(&self.dir)
            .args(argv)
            .env_clear()
            .envs(test_env());
        run(c, stdin)
    }

    /// Packs `prog` (a path in the root) into `out` of the work directory, inside the root.
    fn pack(&self, prog: &str, out: &str) {
        let elfpack = self.inside("elfpack");
        let out = self.inside(out);
        let r = self.run(&[&elfpack, "build", prog, "-o", &out, "-q"], b"");
        assert_eq!(
            r.code,
            Some(0),
            "{}: elfpack build {prog} in the root failed: {}",
            self.name,
            r.stderr
        );
    }

    /// Compiles `source` with the root's gcc into `name` of the work directory.
    fn compile(&self, name: &str, source: &str, flags: &[&str]) {
        std::fs::write(self.host(&format!("{name}.c")), source).unwrap();
        let mut argv = vec!["gcc".to_string(), "-O2".to_string()];
        argv.extend(flags.iter().map(|f| f.to_string()));
        argv.extend([
            "-o".into(),
            self.inside(name),
            self.inside(&format!("{name}.c")),
        ]);
        let r = self.run(&argv, b"");
        assert_eq!(
            r.code,
            Some(0),
            "{}: gcc {flags:?} {name}.c: {}",
            self.name,
            r.stderr
        );
    }

    /// The root's Python standard library, hard-linked into `dest`/usr/lib (packed python3
    /// reads it through PYTHONHOME; the files are data, not code).
    fn link_python_lib(&self, dest: &Path) {
        let lib = std::fs::read_dir(self.dir.join("usr/lib"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3."))
            })
            .unwrap_or_else(|| panic!("{}: no /usr/lib/python3.*", self.name));
        std::fs::create_dir_all(dest.join("usr/lib")).unwrap();
        let mut c = Command::new(require("cp"));
        c.arg("-al").arg(&lib).arg(dest.join("usr/lib"));
        let r = run(c, b"");
        assert_eq!(r.code, Some(0), "cp -al {}: {}", lib.display(), r.stderr);
    }
}

/// The C probe: malloc of small and large blocks, the vDSO clock, the CPU number, argv.
const PROBE_C: &str = r#"#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
int main(int argc, char **argv) {
    char *p = malloc(100), *q = malloc(100000), *r = malloc(1 << 20);
    strcpy(p, "hello");
    memcpy(q, p, 6);
    free(p);
    p = malloc(50);
    strcpy(p, q);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    printf("%s %zu argc=%d %s t>0:%d cpu>=0:%d\n", p, strlen(q), argc, argc > 1 ? argv[1] : "-",
           ts.tv_sec > 0, sched_getcpu() >= 0);
    free(r);
    free(q);
    free(p);
    return 0;
}
"#;

/// One program of a root, run with fixed arguments and stdin.
struct Case {
    name: &'static str,
    /// The program's path in the root.
    prog: String,
    args: Vec<&'static str>,
    stdin: &'static [u8],
    /// Reads the Python standard library.
    python: bool,
}

fn cases(root: &Root) -> Vec<Case> {
    let case = |name, prog: &str, args: &[&'static str], stdin| Case {
        name,
        prog: prog.to_string(),
        args: args.to_vec(),
        stdin,
        python: name == "python3",
    };
    vec![
        case("sort", "/usr/bin/sort", &[], b"pear\napple\nfig\napple\n"),
        case("sha256sum", "/usr/bin/sha256sum", &[], b"elfpack\n"),
        case(
            "bash",
            "/bin/bash",
            &["-c", "a=(1 2 3); echo ${#a[@]} $((6 * 7)) ${a[@]/2/two}"],
            b"",
        ),
        case("curl", "/usr/bin/curl", &["--version"], b""),
        case(
            "sqlite3",
            "/usr/bin/sqlite3",
            &[
                ":memory:",
                "create table t(x); insert into t values (3), (1), (2); select group_concat(x * 7), upper('x') from (select x from t order by x);",
            ],
            b"",
        ),
        case(
            "gawk",
            "/usr/bin/gawk",
            &[r#"BEGIN { x["a"] = 2; print 2 + 3, length("abc"), toupper("q"), x["a"] ^ 10 }"#],
            b"",
        ),
        case(
            "python3",
            "/usr/bin/python3",
            &[
                "-c",
                "import sys, os; print(sys.version_info[0] * 7, len(sys.argv), os.sep, sorted({3: 1, 1: 2}))",
                "x",
            ],
            b"",
        ),
        case("probe-pie", &root.inside("probe-pie"), &["arg"], b""),
        case("probe-nopie", &root.inside("probe-nopie"), &["arg"], b""),
    ]
}

/// Records a difference in stdout or exit status between `got` and `want`.
fn compare(failures: &mut Vec<String>, what: String, got: &Run, want: &Run) {
    if (got.code, &got.stdout) != (want.code, &want.stdout) {
        failures.push(format!(
            "{what}: exit {:?}, stdout {:?}, stderr {:?}; the original: exit {:?}, stdout {:?}",
            got.code, got.stdout, got.stderr, want.code, want.stdout
        ));
    }
}

/// Packs the root's programs inside the root and compares every run of the packed files
/// with the original run in the root.
fn matrix(name: &'static str, arch: Arch) {
    let root = Root::new(name);
    root.compile("probe-pie", PROBE_C, &["-fpie", "-pie"]);
    root.compile("probe-nopie", PROBE_C, &["-fno-pie", "-no-pie"]);
    let pylib = scratch();
    root.link_python_lib(pylib.path());
    let mut failures = Vec::new();
    let mut compared = 0;
    for case in cases(&root) {
        let what = |how: &str| format!("{name}: {} {how}", case.name);
        let mut argv = vec![case.prog.clone()];
        argv.extend(case.args.iter().map(|a| a.to_string()));
        let want = root.run(&argv, case.stdin);
        assert_eq!(
            want.code,
            Some(0),
            "{}: the original fails in the root: {}",
            what(""),
            want.stderr
        );
        let packed = format!("{}.packed", case.name);
        root.pack(&case.prog, &packed);

        argv[0] = root.inside(&packed);
        let got = root.run(&argv, case.stdin);
        compare(&mut failures, what("packed, in the root"), &got, &want);
        compared += 1;

        let mut placements: Vec<(String, Placed, Option<&str>)> = ALL_MODES
            .iter()
            .map(|&m| {
                (
                    format!("packed, {m:?}"),
                    Placed::new(&root.host(&packed), m, arch),
                    None,
                )
            })
            .collect();
        if arch == Arch::X86_64 {
            placements.push((
                "packed, qemu -cpu Nehalem".into(),
                Placed::new(&root.host(&packed), Mode::Qemu, arch),
                Some("Nehalem"),
            ));
        }
        for (how, placed, cpu) in placements {
            let mut cmd = match cpu {
                None => placed.command(&case.args, None),
                Some(model) => {
                    let mut c = Command::new(require(arch.qemu()));
                    c.args(["-cpu", model, "-0", placed.argv0()])
                        .arg(placed.dir().join(PLACED_NAME))
                        .args(&case.args)
                        .current_dir(placed.dir())
                        .env_clear()
                        .envs(test_env());
                    c
                }
            };
            if case.python {
                if placed.mode() == Mode::Chroot {
                    root.link_python_lib(placed.dir());
                    cmd.env("PYTHONHOME", "/usr");
                } else {
                    cmd.env("PYTHONHOME", pylib.path().join("usr"));
                }
            }
            let got = without_qemu_warnings(run(cmd, case.stdin));
            compare(&mut failures, what(&how), &got, &want);
            compared += 1;
        }
    }

    eprintln!("{name}: {compared} runs of packed files compared with the originals");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn debian_11_glibc_2_31_x86_64() {
    matrix("bullseye-amd64", Arch::X86_64);
}

#[test]
fn debian_11_glibc_2_31_i386() {
    matrix("bullseye-i386", Arch::I386);
}

#[test]
fn debian_12_glibc_2_36_i386() {
    matrix("bookworm-i386", Arch::I386);
}

#[test]
fn debian_13_glibc_2_41_x86_64() {
    matrix("trixie-amd64", Arch::X86_64);
}

#[test]
fn debian_unstable_glibc_2_43_x86_64() {
    matrix("sid-amd64", Arch::X86_64);
}

/// Packs one program twice, 2 s apart, inside the root; the two files must be the same.
/// (The gap makes time-derived data show: a TSC value's bits from 32 up change every 1.4 s
/// at 3 GHz.)
fn two_packs(name: &'static str) {
    let root = Root::new(name);
    root.pack("/usr/bin/sha256sum", "first");
    std::thread::sleep(Duration::from_secs(2));
    root.pack("/usr/bin/sha256sum", "second");
    let (a, b) = (
        std::fs::read(root.host("first")).unwrap(),
        std::fs::read(root.host("second")).unwrap(),
    );
    let differ: Vec<String> = a
        .iter()
        .zip(&b)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .take(8)
        .map(|(i, (x, y))| format!("{i:#x}: {x:#04x} {y:#04x}"))
        .collect();
    assert!(
        a == b,
        "{name}: two packs of /usr/bin/sha256sum differ ({} and {} bytes; first differences at file offsets {differ:?})",
        a.len(),
        b.len()
    );
}

#[test]
fn debian_11_x86_64_two_packs_are_identical() {
    two_packs("bullseye-amd64");
}

/// The i386 ld.so keeps a 64-bit time stamp (rtld.c's start time, from `rdtsc`) in two
/// 4-byte words; the capture answers `rdtsc` itself, so both halves differ between the two
/// captures and are zeroed, and two packs seconds apart are the same.
#[test]
fn debian_11_i386_two_packs_are_identical() {
    two_packs("bullseye-i386");
}

#[test]
fn debian_12_i386_two_packs_are_identical() {
    two_packs("bookworm-i386");
}

#[test]
fn debian_13_x86_64_two_packs_are_identical() {
    two_packs("trixie-amd64");
}

#[test]
fn debian_unstable_x86_64_two_packs_are_identical() {
    two_packs("sid-amd64");
}

/// Prints malloc's tcache key (the second word of a freed small chunk: glibc's
/// `tcache_entry` is {next, key}, the key random since 2.34), the stack-protector canary
/// (`%fs:0x28`) and the pointer guard (`%fs:0x30`).
const SECRETS_C: &str = r#"#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    uintptr_t *p = malloc(24), canary, guard;
    free(p);
#ifdef __x86_64__
    __asm__ volatile("mov %%fs:0x28, %0" : "=r"(canary));
    __asm__ volatile("mov %%fs:0x30, %0" : "=r"(guard));
#else
    __asm__ volatile("mov %%gs:0x14, %0" : "=r"(canary));
    __asm__ volatile("mov %%gs:0x18, %0" : "=r"(guard));
#endif
    printf("key=%#lx canary=%#lx guard=%#lx\n", (unsigned long)p[1], (unsigned long)canary,
           (unsigned long)guard);
    return 0;
}
"#;

/// The three secrets of one run of `cmd`.
fn secrets(what: &str, r: &Run) -> [String; 3] {
    assert_eq!(r.code, Some(0), "{what}: {}", r.stderr);
    let field = |k: &str| {
        r.stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{what}: no {k} in {:?}", r.stdout))
            .to_string()
    };
    ["key", "canary", "guard"].map(field)
}

/// Two runs of the packed probe, natively and without address-space randomisation (so
/// that no address can pass for a secret), get other values of each secret, none zero.
/// Before glibc 2.34 the tcache entry's `key` is the address of the thread's tcache, not a
/// secret: `with_key` is false there, and only the canary and the pointer guard count.
fn fresh_secrets(name: &'static str, arch: Arch, with_key: bool) {
    let first = if with_key { 0 } else { 1 };
    let root = Root::new(name);
    root.compile("secrets", SECRETS_C, &[]);
    let orig = root.inside("secrets");
    let (o1, o2) = (
        secrets("original", &root.run(&[&orig], b"")),
        secrets("original", &root.run(&[&orig], b"")),
    );
    assert!(
        (first..3).all(|i| o1[i] != o2[i]),
        "{name}: the original's secrets do not change between runs: {o1:?} {o2:?}"
    );
    root.pack(&orig, "secrets.packed");
    let mut failures = Vec::new();
    for mode in [Mode::Native, Mode::NoAslr] {
        let placed = Placed::new(&root.host("secrets.packed"), mode, arch);
        let none: [&str; 0] = [];
        let what = format!("{name}: packed, {mode:?}");
        let a = secrets(&what, &run(placed.command(&none, None), b""));
        let b = secrets(&what, &run(placed.command(&none, None), b""));
        for (i, k) in ["tcache key", "canary", "pointer guard"]
            .iter()
            .enumerate()
            .skip(first)
        {
            if a[i] == b[i] || a[i] == "0" {
                failures.push(format!("{what}: {k} {} then {}", a[i], b[i]));
            }
        }
    }
    let inside = root.inside("secrets.packed");
    let a = secrets("packed, in the root", &root.run(&[&inside], b""));
    let b = secrets("packed, in the root", &root.run(&[&inside], b""));
    for i in first..3 {
        if a[i] == b[i] {
            failures.push(format!("{name}: packed, in the root: {a:?} then {b:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn debian_11_x86_64_fresh_secrets_at_every_run() {
    fresh_secrets("bullseye-amd64", Arch::X86_64, false);
}

#[test]
fn debian_11_i386_fresh_secrets_at_every_run() {
    fresh_secrets("bullseye-i386", Arch::I386, false);
}

#[test]
fn debian_12_i386_fresh_secrets_at_every_run() {
    fresh_secrets("bookworm-i386", Arch::I386, true);
}

#[test]
fn debian_13_fresh_secrets_at_every_run() {
    fresh_secrets("trixie-amd64", Arch::X86_64, true);
}

#[test]
fn debian_unstable_fresh_secrets_at_every_run() {
    fresh_secrets("sid-amd64", Arch::X86_64, true);
}

/// Binding stays lazy where glibc can be asked for a resolver of the level (2.33+), and
/// elfpack binds at capture, with a warning, where it cannot (2.31, whose XSAVE state size
/// is fixed before the tunable is read). Either way the packed program runs on a CPU
/// without XSAVE (qemu's Nehalem model): the matrix runs every output there.
fn binding_at_capture(name: &'static str, bound: bool) {
    let root = Root::new(name);
    let elfpack = root.inside("elfpack");
    let out = root.inside("sort.lazy");
    let r = root.run(&[&elfpack, "build", "/usr/bin/sort", "-o", &out], b"");
    assert_eq!(r.code, Some(0), "{name}: {}", r.stderr);
    let warned = r
        .stderr
        .lines()
        .any(|l| l.contains("lazy-binding resolver") && l.contains("bound at capture"));
    assert_eq!(warned, bound, "{name}: {}", r.stderr);
}

#[test]
fn debian_11_x86_64_binds_at_capture() {
    binding_at_capture("bullseye-amd64", true);
}

#[test]
fn debian_13_and_unstable_keep_lazy_binding() {
    binding_at_capture("trixie-amd64", false);
    binding_at_capture("sid-amd64", false);
}

/// glibc 2.31 (Debian 11, with its backported EVEX string functions) picks them by
/// "usable" bits that its tunables cannot mask: at `--cpu x86-64-v3` on a CPU with
/// AVX-512 its memmove and strchr are EVEX code. The verification refuses that image,
/// naming the function and AVX512VL, rather than writing one that dies on a v3 CPU without
/// AVX-512; at x86-64-v4 (which has AVX-512) it packs. On a CPU without AVX-512 the v3 pack
/// is made.
#[test]
fn debian_11_x86_64_v3_choices_are_verified() {
    let avx512 = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .contains(" avx512vl");
    let root = Root::new("bullseye-amd64");
    let elfpack = root.inside("elfpack");
    let out = root.inside("sort.v3");
    let r = root.run(
        &[
            &elfpack,
            "build",
            "/usr/bin/sort",
            "-o",
            &out,
            "--cpu",
            "x86-64-v3",
        ],
        b"",
    );
    if avx512 {
        assert_eq!(r.code, Some(3), "{}", r.stderr);
        assert!(
            r.stderr.contains("AVX512VL") && r.stderr.contains("above the CPU level x86-64-v3"),
            "{}",
            r.stderr
        );
        let r = root.run(
            &[
                &elfpack,
                "build",
                "/usr/bin/sort",
                "-o",
                &out,
                "--cpu",
                "x86-64-v4",
            ],
            b"",
        );
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    } else {
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
}
