//! Address-space randomisation of packed programs. The `aslr-ARCH-{pie,nopie}` fixture
//! prints where one run put its code (`main`), a libc function, a `__thread` variable, a
//! small malloc block (from the break) and a large one (mmap'd). A default pack moves them
//! at every run as the kernel moves the original's: the program (with its data and its
//! break) by one slide, ld.so, the libraries and the TLS by another, with as many varying
//! address bits as the original shows here; under `setarch -R` and with `--no-aslr` nothing
//! moves; a non-PIE program stays at its link address while its libraries move; `inspect`
//! says which; and the packed file runs under qemu-user.
use elfpack_tests::*;
use std::collections::HashSet;
use std::process::Command;

/// The lines the fixture prints, in order.
const KINDS: [&str; 5] = ["main", "libc", "tls", "heap", "mmap"];

/// What a fixed layout keeps in place: the image. The break and the large block follow the
/// kernel's randomisation of this run (its break, its mmap base), packed or not.
const FIXED_KINDS: [&str; 3] = ["main", "libc", "tls"];

/// Runs per program in the entropy comparison.
const RUNS: usize = 100;

/// One run's addresses, in the order of [`KINDS`].
type Layout = Vec<u64>;

fn orig_pie(arch: Arch) -> std::path::PathBuf {
    fixture(&format!("aslr-{}-pie", arch.tag()))
}

/// The addresses a run printed; fails the test unless it exited 0 printing exactly
/// the lines of [`KINDS`].
fn layout(what: &str, r: &Run) -> Layout {
    let fail = |why: &str| -> ! {
        panic!(
            "{what}: {why}\nexit status: {:?}\nstdout:\n{}\nstderr:\n{}",
            r.code, r.stdout, r.stderr
        )
    };
    if r.code != Some(0) {
        fail("the fixture did not exit 0");
    }
    let lines: Vec<&str> = r.stdout.lines().collect();
    if lines.len() != KINDS.len() {
        fail(&format!("expected {} lines", KINDS.len()));
    }
    lines
        .iter()
        .zip(KINDS)
        .map(|(line, kind)| {
            let hex = line
                .strip_prefix(kind)
                .and_then(|s| s.strip_prefix("=0x"))
                .unwrap_or_else(|| fail(&format!("expected a `{kind}=0x...` line, got {line:?}")));
            u64::from_str_radix(hex, 16)
                .unwrap_or_else(|_| fail(&format!("not an address: {line:?}")))
        })
        .collect()
}

fn index(kind: &str) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap()
}

fn show(l: &Layout) -> String {
    KINDS
        .iter()
        .zip(l)
        .map(|(k, a)| format!("{k}={a:#x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The original, natively, as the placed packed file is run (same argv[0], environment).
fn run_orig(orig: &std::path::Path) -> Run {
    run_original(orig, "./prog", &[] as &[&str], b"", None)
}

/// The original under `setarch ARCH -R`.
fn run_orig_norandom(orig: &std::path::Path, arch: Arch) -> Run {
    let mut cmd = Command::new(require("setarch"));
    cmd.args([arch.setarch(), "-R"])
        .arg(orig)
        .env_clear()
        .envs(test_env());
    run_cmd(cmd, b"")
}

/// The original under qemu-user.
fn run_orig_qemu(orig: &std::path::Path, arch: Arch) -> Run {
    let mut cmd = Command::new(require(arch.qemu()));
    cmd.args(["-0", "./prog"])
        .arg(orig)
        .env_clear()
        .envs(test_env());
    without_qemu_warnings(run_cmd(cmd, b""))
}

/// How much a set of addresses varies, at page granularity.
#[derive(Clone, Copy, Debug)]
struct Spread {
    /// Distinct page numbers.
    distinct: usize,
    /// Page-number bits that differ from the first run's in some run (the popcount of the
    /// OR of the XORs against the first run).
    bits: u32,
    /// log2 of the range of page numbers (max − min + 1).
    range_log2: f64,
}

impl Spread {
    /// The entropy estimate compared: the smaller of `bits` (which carries into the bits
    /// above a random addend inflate: the original's PIE base shows 30 on x86-64 for 28
    /// random bits) and `range_log2` (which two far-apart clusters would inflate).
    fn entropy(self) -> f64 {
        (self.bits as f64).min(self.range_log2)
    }
}

fn spread(addrs: &[u64]) -> Spread {
    let pages: Vec<u64> = addrs.iter().map(|a| a >> 12).collect();
    let distinct = pages.iter().collect::<HashSet<_>>().len();
    let bits = pages
        .iter()
        .fold(0u64, |acc, p| acc | (p ^ pages[0]))
        .count_ones();
    let (lo, hi) = (*pages.iter().min().unwrap(), *pages.iter().max().unwrap());
    Spread {
        distinct,
        bits,
        range_log2: ((hi - lo + 1) as f64).log2(),
    }
}

fn column(runs: &[Layout], kind: &str) -> Vec<u64> {
    runs.iter().map(|l| l[index(kind)]).collect()
}

fn distinct(v: &[u64]) -> usize {
    v.iter().collect::<HashSet<_>>().len()
}

/// `main − libc` of each run: constant when one slide moves both.
fn main_minus_libc(runs: &[Layout]) -> Vec<u64> {
    runs.iter()
        .map(|l| l[index("main")].wrapping_sub(l[index("libc")]))
        .collect()
}

/// Fewest distinct page-granular values of 100 runs a packed PIE must give for each kind:
/// x86-64 has 28 bits of mmap and PIE entropy (a repeat in 100 runs is a 1-in-50,000
/// event); i386 has 8 (256 slides give about 83 distinct values of 100; fewer than 60
/// happens about once in 10^9).
fn min_distinct(arch: Arch) -> usize {
    match arch {
        Arch::X86_64 => 95,
        Arch::I386 => 60,
    }
}

/// How many bits of entropy ([`Spread::entropy`]) fewer than the original's a packed
/// address may show.
const BITS_MARGIN: f64 = 2.0;

/// Run the original and the default pack 100 times each (interleaved), natively. Each
/// address kind of the packed program must take at least [`min_distinct`] page-granular
/// values and show at least the original's entropy ([`Spread::entropy`]: varying
/// page-number bits, bounded by log2 of the range) less [`BITS_MARGIN`] (for the small
/// malloc block, the reference is the smaller of the original's heap and main: the packed
/// break moves with the program's slide, without the kernel's extra break randomisation); and `main − libc` must vary as it does in the
/// original (at least half its distinct values, and never constant): two independent
/// slides, not one.
#[test]
fn addresses_differ_between_runs_like_the_originals() {
    let mut failures = Vec::new();
    let mut report = String::new();
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = orig_pie(arch);
        let packed = packed(&orig, &[]);
        let placed = Placed::new(&packed, Mode::Native, arch);
        let (mut o, mut p) = (Vec::new(), Vec::new());
        for i in 0..RUNS {
            o.push(layout(
                &format!("{} original run {i}", arch.tag()),
                &run_orig(&orig),
            ));
            p.push(layout(
                &format!("{} packed run {i}", arch.tag()),
                &placed.run::<&str>(&[], b"", None),
            ));
        }
        report += &format!(
            "{}: {RUNS} runs each; distinct pages / varying page-number bits / log2 of the page range\n\
             {:<6} {:>24} {:>24}\n",
            arch.tag(),
            "",
            "original",
            "packed"
        );
        let need = min_distinct(arch);
        for kind in KINDS {
            let so = spread(&column(&o, kind));
            let sp = spread(&column(&p, kind));
            report += &format!(
                "{kind:<6} {:>10} {:>4} {:>8.1} {:>10} {:>4} {:>8.1}\n",
                so.distinct, so.bits, so.range_log2, sp.distinct, sp.bits, sp.range_log2
            );
            if sp.distinct < need {
                failures.push(format!(
                    "{} {kind}: packed gives {} distinct pages in {RUNS} runs, at least {need} expected (original: {})",
                    arch.tag(),
                    sp.distinct,
                    so.distinct
                ));
            }
            let reference = if kind == "heap" {
                so.entropy().min(spread(&column(&o, "main")).entropy())
            } else {
                so.entropy()
            };
            if sp.entropy() + BITS_MARGIN < reference {
                failures.push(format!(
                    "{} {kind}: packed shows {:.1} bits of entropy, the original {reference:.1} (at most {BITS_MARGIN} fewer allowed)",
                    arch.tag(),
                    sp.entropy()
                ));
            }
        }
        let (dob, dp) = (
            distinct(&main_minus_libc(&o)),
            distinct(&main_minus_libc(&p)),
        );
        report += &format!("main−libc distinct values: original {dob}, packed {dp}\n");
        if dp < 2 || dp < dob / 2 {
            failures.push(format!(
                "{} main−libc: packed takes {dp} distinct values in {RUNS} runs, the original {dob}: the program and the libraries do not move independently",
                arch.tag()
            ));
        }
        report += &format!(
            "first runs:\n  original {}\n  packed   {}\n\n",
            show(&o[0]),
            show(&p[0])
        );
    }
    println!("{report}");
    assert!(
        failures.is_empty(),
        "the packed program's layout is not randomised like the original's:\n{}\n\n{report}",
        failures.join("\n")
    );
}

/// Under `setarch -R` (ADDR_NO_RANDOMIZE) nothing moves: 10 runs of the default pack print
/// one identical set of addresses, as 10 runs of the original do.
#[test]
fn setarch_r_keeps_addresses_stable() {
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = orig_pie(arch);
        let packed = packed(&orig, &[]);
        let placed = Placed::new(&packed, Mode::NoAslr, arch);
        let (mut o, mut p) = (Vec::new(), Vec::new());
        for i in 0..10 {
            o.push(layout(
                &format!("{} original under setarch -R, run {i}", arch.tag()),
                &run_orig_norandom(&orig, arch),
            ));
            p.push(layout(
                &format!("{} packed under setarch -R, run {i}", arch.tag()),
                &placed.run::<&str>(&[], b"", None),
            ));
        }
        for (what, runs) in [("original", &o), ("packed", &p)] {
            let differ: Vec<String> = runs
                .iter()
                .enumerate()
                .filter(|(_, l)| **l != runs[0])
                .map(|(i, l)| format!("  run {i}: {}", show(l)))
                .collect();
            assert!(
                differ.is_empty(),
                "{} {what} under setarch -R: the addresses moved\n  run 0: {}\n{}",
                arch.tag(),
                show(&runs[0]),
                differ.join("\n")
            );
        }
    }
}

/// The value `inspect` gives on its `address randomisation:` line (`on` or `off`).
fn inspect_randomisation(packed: &std::path::Path) -> String {
    let r = run_cmd(
        {
            let mut c = Command::new(elfpack());
            c.arg("inspect").arg(packed);
            c
        },
        b"",
    );
    assert_eq!(
        r.code,
        Some(0),
        "inspect {}: {}",
        packed.display(),
        r.stderr
    );
    let line = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("address randomisation:"))
        .unwrap_or_else(|| {
            panic!(
                "inspect {} prints no `address randomisation:` line:\n{}",
                packed.display(),
                r.stdout
            )
        });
    line.split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ';')
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .to_string()
}

/// `inspect` says `on` for a default pack and `off` for a `--no-aslr` pack, and 10 native
/// runs of the `--no-aslr` pack print the same program, libc and TLS addresses. (The heap
/// block and the large block are left out: the kernel randomises the break and the mmap
/// base of every process, and a fixed-layout pack keeps this run's break and mappings made
/// after the restore go where the kernel says.)
#[test]
fn no_aslr_keeps_the_fixed_layout() {
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = orig_pie(arch);
        let default = packed(&orig, &[]);
        assert_eq!(
            inspect_randomisation(&default),
            "on",
            "{}: inspect of a default pack",
            arch.tag()
        );
        let fixed = packed(&orig, &["--no-aslr"]);
        assert_eq!(
            inspect_randomisation(&fixed),
            "off",
            "{}: inspect of a --no-aslr pack",
            arch.tag()
        );
        let placed = Placed::new(&fixed, Mode::Native, arch);
        let runs: Vec<Layout> = (0..10)
            .map(|i| {
                layout(
                    &format!("{} --no-aslr run {i}", arch.tag()),
                    &placed.run::<&str>(&[], b"", None),
                )
            })
            .collect();
        for kind in FIXED_KINDS {
            let v = column(&runs, kind);
            assert_eq!(
                distinct(&v),
                1,
                "{} --no-aslr: {kind} moved between runs: {:x?}",
                arch.tag(),
                v
            );
        }
    }
}

/// Under qemu-user (no vDSO, its own address-space layout) the default pack runs, exits 0
/// and prints the same lines (one address each) as the original under qemu-user.
#[test]
fn randomised_pack_runs_under_qemu_user() {
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = orig_pie(arch);
        let packed = packed(&orig, &[]);
        let placed = Placed::new(&packed, Mode::Qemu, arch);
        for i in 0..3 {
            let p = without_qemu_warnings(placed.run::<&str>(&[], b"", None));
            let o = run_orig_qemu(&orig, arch);
            let what = format!("{} under {}, run {i}", arch.tag(), arch.qemu());
            assert_eq!(
                (p.code, p.stdout.lines().count()),
                (o.code, o.stdout.lines().count()),
                "{what}: packed and original differ in exit status or line count\npacked:\n{}{}\noriginal:\n{}{}",
                p.stdout,
                p.stderr,
                o.stdout,
                o.stderr
            );
            layout(&format!("{what}, packed"), &p);
            layout(&format!("{what}, original"), &o);
        }
    }
}

/// A non-PIE program stays at its link address: over 10 runs of the default pack `main` is
/// the original's, every time; libc and the TLS move (as in the original).
#[test]
fn non_pie_program_stays_at_its_link_address() {
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = fixture(&format!("aslr-{}-nopie", arch.tag()));
        let packed = packed(&orig, &[]);
        let placed = Placed::new(&packed, Mode::Native, arch);
        let (mut o, mut p) = (Vec::new(), Vec::new());
        for i in 0..10 {
            o.push(layout(
                &format!("{} non-PIE original run {i}", arch.tag()),
                &run_orig(&orig),
            ));
            p.push(layout(
                &format!("{} non-PIE packed run {i}", arch.tag()),
                &placed.run::<&str>(&[], b"", None),
            ));
        }
        let link_main = o[0][index("main")];
        for (what, runs) in [("original", &o), ("packed", &p)] {
            let mains = column(runs, "main");
            assert!(
                mains.iter().all(|m| *m == link_main),
                "{} non-PIE {what}: main is not always at the link address {link_main:#x}: {mains:x?}",
                arch.tag()
            );
        }
        // 10 runs over 2^28 (x86-64) or 2^8 (i386) slides: fewer than 9 (resp. 5) distinct
        // values is a 1-in-10^6 event.
        let need = match arch {
            Arch::X86_64 => 9,
            Arch::I386 => 5,
        };
        for kind in ["libc", "tls"] {
            let (vo, vp) = (column(&o, kind), column(&p, kind));
            assert!(
                distinct(&vo) >= need,
                "{} non-PIE original: {kind} takes only {} values in 10 runs: {vo:x?}",
                arch.tag(),
                distinct(&vo)
            );
            assert!(
                distinct(&vp) >= need,
                "{} non-PIE packed: {kind} takes {} distinct values in 10 runs (the original {}), at least {need} expected: {vp:x?}",
                arch.tag(),
                distinct(&vp),
                distinct(&vo)
            );
        }
    }
}

/// The benchmark's readers of the stub's trace: the restore time in any of its units, and a
/// relocation count where a line gives one (and none where no line does).
#[test]
fn trace_readers_take_the_stub_formats() {
    use elfpack_tests::bench::{relocation_count, trace_restore_ns};
    assert_eq!(
        trace_restore_ns("elfpack: restore took 41234 ns\n"),
        Some(41234.0)
    );
    assert_eq!(
        trace_restore_ns("elfpack: restore took 41 us, 1234 relocations\n"),
        Some(41000.0)
    );
    assert_eq!(trace_restore_ns("elfpack: restore took 2 ms"), Some(2e6));
    assert_eq!(trace_restore_ns("nothing here"), None);
    for text in [
        "elfpack: restore took 41 us, 1234 relocations",
        "elfpack: relocations: 1234",
        "elfpack: relocations applied: 1234",
        "elfpack: restore took 41 us (relocated 1234 words)",
    ] {
        assert_eq!(relocation_count(text), Some(1234), "{text}");
    }
    assert_eq!(relocation_count("elfpack: restore took 41234 ns"), None);
}

/// With `ELFPACK_TRACE=1` the stub of a default (randomised) pack reports its restore time
/// and how many relocations it applied (at least one: the program's own pointers move with
/// its slide), on stderr; the program still runs.
#[test]
fn trace_reports_the_relocations_applied() {
    use elfpack_tests::bench::{relocation_count, trace_restore_ns};
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = orig_pie(arch);
        let packed = packed(&orig, &[]);
        let placed = Placed::new(&packed, Mode::Native, arch);
        let mut cmd = placed.command::<&str>(&[], None);
        cmd.env("ELFPACK_TRACE", "1");
        let r = run_cmd(cmd, b"");
        layout(&format!("{} traced run", arch.tag()), &r);
        let trace: String = r
            .stderr
            .lines()
            .filter(|l| l.starts_with("elfpack:"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            trace_restore_ns(&trace).is_some(),
            "{}: the trace gives no restore time:\n{}",
            arch.tag(),
            r.stderr
        );
        let n = relocation_count(&trace).unwrap_or_else(|| {
            panic!(
                "{}: the trace names no relocation count (a number next to a word starting with `reloc`):\n{}",
                arch.tag(),
                r.stderr
            )
        });
        assert!(
            n > 0,
            "{}: the trace says {n} relocations:\n{trace}",
            arch.tag()
        );
    }
}

/// Under an address-space limit (`ulimit -v`) the stub's reservations count while the image
/// is still where the file put it. At every limit from 4 to 64 MiB at which the original
/// runs, the packed program runs too (a part with no room to move stays where it is), and
/// prints the same five lines.
#[test]
fn runs_under_an_address_space_limit_like_the_original() {
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = orig_pie(arch);
        let packed = packed(&orig, &[]);
        let mut ran = 0;
        for kib in (4..=64).step_by(4).map(|mib| mib * 1024) {
            let limited = |prog: &std::path::Path| {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(format!("ulimit -v {kib} && exec \"$0\""))
                    .arg(prog)
                    .env_clear()
                    .envs(test_env());
                run_cmd(cmd, b"")
            };
            let o = limited(&orig);
            if o.code != Some(0) {
                continue;
            }
            ran += 1;
            let p = limited(&packed);
            assert_eq!(
                p.code,
                Some(0),
                "{} under ulimit -v {kib}: the original runs, the packed program does not: {}",
                arch.tag(),
                p.stderr
            );
            layout(&format!("{} ulimit -v {kib}", arch.tag()), &p);
        }
        assert!(ran > 0, "{}: the original ran at no limit", arch.tag());
    }
}
