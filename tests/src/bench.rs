//! The benchmark: packed programs against their originals, measured side by side in one
//! run, printed as ratios. `cargo bench -p elfpack-tests` runs it in full; the test suite
//! runs it with `Config::smoke()` so that it cannot rot.
use crate::Timed;
use crate::{cache_dir, elfpack, fixture, require, run_cmd_within, scratch, test_env, Run};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Config {
    /// Start-up runs per program and variant.
    pub runs: usize,
    /// Start-up runs per program and variant in the per-glibc table (a run is about 1 ms,
    /// and more runs steady the median on a loaded machine).
    pub glibc_runs: usize,
    /// Concurrent instances for the memory measurement.
    pub instances: usize,
    /// clock_gettime calls in the vDSO loop.
    pub vdso_calls: u64,
    /// Rounds of the memcpy workload.
    pub memcpy_rounds: u64,
    /// Bytes hashed and sorted for the CPU-level comparison.
    pub level_bytes: usize,
    /// Debian roots of `tests/setup --tests` (other glibc versions) in which programs are
    /// packed and timed, besides this machine.
    pub roots: Vec<&'static str>,
}

/// Every Debian root `tests/setup --tests` makes, oldest glibc first.
pub const ROOTS: [&str; 5] = [
    "bullseye-amd64",
    "bullseye-i386",
    "bookworm-i386",
    "trixie-amd64",
    "sid-amd64",
];

impl Config {
    pub fn full() -> Config {
        Config {
            runs: 50,
            glibc_runs: 200,
            instances: 10,
            vdso_calls: 10_000_000,
            memcpy_rounds: 200,
            level_bytes: 100 << 20,
            roots: ROOTS.to_vec(),
        }
    }
    pub fn smoke() -> Config {
        Config {
            runs: 3,
            glibc_runs: 3,
            instances: 2,
            vdso_calls: 10_000,
            memcpy_rounds: 2,
            level_bytes: 1 << 20,
            roots: vec!["bullseye-i386"],
        }
    }
}

/// Median and 10th/90th percentiles of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
}

pub fn stats(mut v: Vec<f64>) -> Stats {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
    }
}

fn time_run(cmd: &mut Command) -> f64 {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t = Instant::now();
    let what = format!("{cmd:?}");
    let st = crate::wait_output(crate::spawn(cmd), &what).status;
    let e = t.elapsed().as_secs_f64();
    assert!(st.success(), "{cmd:?} failed: {st}");
    e
}

fn pack(input: &Path, out: &Path, extra: &[&str]) -> (f64, String) {
    let t = Instant::now();
    let o = Command::new(elfpack())
        .arg("build")
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("-v")
        .args(extra)
        .output_t();
    let e = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "packing {}: {err}", input.display());
    (e, err)
}

/// Files the program maps: itself, its libraries and ld.so (from ldd).
fn mapped_files(prog: &Path, env: &[(&str, String)]) -> Vec<PathBuf> {
    let o = Command::new("ldd")
        .arg(prog)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output_t();
    let mut v = vec![prog.to_path_buf()];
    v.extend(ldd_paths(&String::from_utf8_lossy(&o.stdout)));
    v
}

/// The files (libraries and ld.so) named in `ldd`'s output.
fn ldd_paths(text: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for line in text.lines() {
        let path = line
            .split("=>")
            .nth(1)
            .unwrap_or(line)
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            v.push(PathBuf::from(path));
        }
    }
    v
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Sum of Rss and Pss (kB) over `n` concurrent instances of `cmd`, measured while they
/// all sleep.
fn memory(prog: &Path, args: &[&str], n: usize) -> (f64, f64) {
    let kids: Vec<_> = (0..n)
        .map(|_| {
            let mut c = Command::new(prog);
            c.args(args).stdin(Stdio::null()).stdout(Stdio::null());
            crate::spawn(&mut c)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let (mut rss, mut pss) = (0.0, 0.0);
    for k in &kids {
        let text =
            std::fs::read_to_string(format!("/proc/{}/smaps_rollup", k.id())).unwrap_or_default();
        for line in text.lines() {
            let val = || {
                line.split_whitespace()
                    .nth(1)
                    .unwrap()
                    .parse::<f64>()
                    .unwrap()
            };
            if line.starts_with("Rss:") {
                rss += val();
            } else if line.starts_with("Pss:") {
                pss += val();
            }
        }
    }
    for k in kids {
        crate::wait_output(k, "a concurrent instance");
    }
    (rss / n as f64, pss / n as f64)
}

struct Program {
    name: &'static str,
    path: PathBuf,
    args: Vec<&'static str>,
    env: Vec<(&'static str, String)>,
}

fn programs() -> Vec<Program> {
    let p = |name, path: &str, args: Vec<&'static str>| Program {
        name,
        path: PathBuf::from(path),
        args,
        env: vec![],
    };
    let mut v = vec![
        p("ls", "/bin/ls", vec!["--version"]),
        p("sort", "/usr/bin/sort", vec!["--version"]),
        p("gzip", "/bin/gzip", vec!["--version"]),
        p("bash", "/bin/bash", vec!["--version"]),
        p("python3", "/usr/bin/python3", vec!["--version"]),
        p(
            "python3 -c pass",
            "/usr/bin/python3",
            vec!["-S", "-c", "pass"],
        ),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/i386-sysroot");
    if root.join("usr/bin/sqlite3").exists() {
        let lp = format!(
            "{}:{}",
            root.join("lib/i386-linux-gnu").display(),
            root.join("usr/lib/i386-linux-gnu").display()
        );
        v.push(Program {
            name: "sqlite3 (i386)",
            path: root.join("usr/bin/sqlite3"),
            args: vec!["--version"],
            env: vec![("LD_LIBRARY_PATH", lp.clone())],
        });
        v.push(Program {
            name: "sort (i386)",
            path: root.join("usr/bin/sort"),
            args: vec!["--version"],
            env: vec![("LD_LIBRARY_PATH", lp)],
        });
    }
    v
}

/// The timer of the per-glibc start-up table, compiled by each root's own gcc (and by this
/// machine's for the host row): `timer RUNS ORIGINAL PACKED [ARGS...]` forks, execs and
/// waits for the two programs in turn, RUNS times each after one unmeasured run of each,
/// the first of the pair alternating; prints `o NS` and `p NS`, one line per run. Run in
/// the root, it times the programs as a user of that distribution starts them, with
/// neither chroot nor unshare in the measured time.
const TIMER_C: &str = r#"#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static long long run(char **argv) {
    struct timespec a, b;
    int st = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pid_t p = fork();
    if (p == 0) {
        int fd = open("/dev/null", O_RDWR);
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    if (p < 0 || waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "%s failed: status %#x\n", argv[0], st);
        exit(1);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
}
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    int n = atoi(argv[1]);
    char *prog[2] = {argv[2], argv[3]}, **args = argv + 3;
    for (int i = -1; i < n; i++)
        for (int j = 0; j < 2; j++) {
            int k = (i & 1) ? 1 - j : j;
            args[0] = prog[k];
            long long t = run(args);
            if (i >= 0) printf("%c %lld\n", k ? 'p' : 'o', t);
        }
    return 0;
}
"#;

/// Deadline of one command in a root (a pack runs the program twice under ptrace).
const ROOT_LIMIT: Duration = Duration::from_secs(300);

/// A cached Debian root (made by `tests/setup --tests`) and a new work directory in its
/// /tmp, named with `prefix`, that every user of the root can enter.
pub fn root_work_dir(name: &str, prefix: &str) -> (PathBuf, tempfile::TempDir) {
    let dir = cache_dir().join("roots").join(name);
    assert!(
        dir.join(".complete").exists(),
        "Debian root {} missing (tests/setup --tests makes it)",
        dir.display()
    );
    let work = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(dir.join("tmp"))
        .unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, work)
}

/// The static elfpack (the musl build), which runs in every root: `ELFPACK_STATIC_BIN`,
/// else the musl build in this workspace.
pub fn static_elfpack() -> PathBuf {
    let p = std::env::var_os("ELFPACK_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/x86_64-unknown-linux-musl/release/elfpack")
        });
    assert!(
        p.is_file(),
        "static elfpack {} missing (cargo build --release --target x86_64-unknown-linux-musl -p elfpack, or set ELFPACK_STATIC_BIN)",
        p.display()
    );
    p
}

/// Where the programs of one row group of the per-glibc table run: a Debian root of
/// `tests/setup --tests` (chrooted, /proc mounted in a mount namespace of its own, as
/// tests/e2e/glibc.rs does), or this machine.
struct Place {
    name: String,
    /// The root; None for this machine.
    root: Option<PathBuf>,
    /// The work directory (under the root's /tmp); removed on drop.
    work: tempfile::TempDir,
}

impl Place {
    fn root(name: &str) -> Place {
        let (dir, work) = root_work_dir(name, "elfpack-bench-");
        let place = Place {
            name: name.to_string(),
            root: Some(dir),
            work,
        };
        std::fs::copy(static_elfpack(), place.host("elfpack")).unwrap();
        std::fs::set_permissions(
            place.host("elfpack"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        place
    }

    fn this_machine() -> Place {
        Place {
            name: "this machine".into(),
            root: None,
            work: scratch(),
        }
    }

    /// `file` of the work directory, as the programs that run there see it.
    fn inside(&self, file: &str) -> String {
        match self.root {
            Some(_) => format!(
                "/tmp/{}/{file}",
                self.work.path().file_name().unwrap().to_str().unwrap()
            ),
            None => self.host(file).display().to_string(),
        }
    }

    /// `file` of the work directory, as a path on this machine.
    fn host(&self, file: &str) -> PathBuf {
        self.work.path().join(file)
    }

    /// Runs `argv` there with the tests' environment; asserts success.
    fn run<S: AsRef<std::ffi::OsStr>>(&self, argv: &[S]) -> Run {
        let mut c = match &self.root {
            Some(dir) => {
                let mut c = Command::new(require("unshare"));
                c.args(["--mount", "--propagation", "private"])
                    .arg(format!("--mount-proc={}", dir.join("proc").display()))
                    .arg(require("chroot"))
                    .arg(dir)
                    .args(argv);
                c
            }
            None => {
                let mut c = Command::new(argv[0].as_ref());
                c.args(&argv[1..]);
                c
            }
        };
        c.env_clear().envs(test_env());
        let what = format!("{}: {c:?}", self.name);
        let r = run_cmd_within(c, b"", ROOT_LIMIT);
        assert_eq!(r.code, Some(0), "{what}: {}", r.stderr);
        r
    }

    /// The glibc version, from `ldd --version`.
    fn glibc(&self) -> String {
        let r = self.run(&["ldd", "--version"]);
        let first = r.stdout.lines().next().unwrap_or("").to_string();
        first.rsplit(' ').next().unwrap_or("?").to_string()
    }
}

/// Packs a few programs of each root inside the root with the static elfpack (as
/// tests/e2e/glibc.rs does; on this machine with the normal build) and times the original
/// and the packed file there, interleaved. Returns the table's rows.
fn startup_per_glibc(cfg: &Config) -> String {
    let mut rows = String::new();
    let places = std::iter::once(None).chain(cfg.roots.iter().map(Some));
    for which in places {
        let place = match which {
            None => Place::this_machine(),
            Some(name) => Place::root(name),
        };
        let (arch, label) = match which {
            None => ("x86-64", "this machine (Debian 12)".to_string()),
            Some(name) => (
                if name.ends_with("-i386") {
                    "i386"
                } else {
                    "x86-64"
                },
                format!("`{name}` root"),
            ),
        };
        let glibc = place.glibc();
        std::fs::write(place.host("timer.c"), TIMER_C).unwrap();
        place.run(&[
            "gcc".to_string(),
            "-O2".into(),
            "-o".into(),
            place.inside("timer"),
            place.inside("timer.c"),
        ]);
        for (name, prog) in [
            ("sort", "/usr/bin/sort"),
            ("bash", "/bin/bash"),
            ("sqlite3", "/usr/bin/sqlite3"),
            ("python3", "/usr/bin/python3"),
            ("curl", "/usr/bin/curl"),
        ] {
            if which.is_none() && !Path::new(prog).exists() {
                continue;
            }
            let packed = place.inside(&format!("{name}.packed"));
            match which {
                None => {
                    pack(Path::new(prog), Path::new(&packed), &[]);
                }
                Some(_) => {
                    place.run(&[&place.inside("elfpack"), "build", prog, "-o", &packed, "-q"]);
                }
            }
            let libs = ldd_paths(&place.run(&["ldd", prog]).stdout).len();
            let r = place.run(&[
                place.inside("timer"),
                cfg.glibc_runs.to_string(),
                prog.to_string(),
                packed,
                "--version".into(),
            ]);
            let times = |k: &str| -> Vec<f64> {
                r.stdout
                    .lines()
                    .filter_map(|l| l.strip_prefix(k))
                    .map(|t| t.trim().parse::<f64>().unwrap() / 1e9)
                    .collect()
            };
            let (o, p) = (times("o "), times("p "));
            assert!(
                o.len() == cfg.glibc_runs && p.len() == cfg.glibc_runs,
                "{}: timer output: {}",
                place.name,
                r.stdout
            );
            let (so, sp) = (stats(o), stats(p));
            rows += &format!(
                "| {label} | {glibc} | {arch} | {name} | {} | {:.2} ({:.2}–{:.2}) | {:.2} ({:.2}–{:.2}) | {:.2} |\n",
                libs,
                so.median * 1e3,
                so.p10 * 1e3,
                so.p90 * 1e3,
                sp.median * 1e3,
                sp.p10 * 1e3,
                sp.p90 * 1e3,
                sp.median / so.median
            );
        }
    }
    rows
}

/// Runs the benchmark; returns the report (a Markdown table per measurement).
pub fn run(cfg: &Config) -> String {
    let dir = scratch();
    let mut out = String::new();
    let static_ref = fixture("static-x86_64");

    out += "### Start-up (wall time of one run, median over interleaved runs)\n\n";
    out += "| program | libs | original ms (p10–p90) | packed ms (p10–p90) | packed ÷ original |\n|---|---|---|---|---|\n";
    let mut sizes = String::new();
    let mut packing = String::new();
    for prog in programs() {
        let packed = dir.path().join(prog.name.replace([' ', '(', ')'], "_"));
        let env_args: Vec<String> = prog
            .env
            .iter()
            .map(|(k, v)| format!("--env={k}={v}"))
            .collect();
        let env_refs: Vec<&str> = env_args.iter().map(String::as_str).collect();
        let (pack_s, verbose) = pack(&prog.path, &packed, &env_refs);
        let (mut o, mut p) = (Vec::new(), Vec::new());
        for _ in 0..cfg.runs {
            o.push(time_run(
                Command::new(&prog.path)
                    .args(&prog.args)
                    .envs(prog.env.iter().map(|(k, v)| (k, v))),
            ));
            p.push(time_run(Command::new(&packed).args(&prog.args)));
        }
        let (so, sp) = (stats(o), stats(p));
        let files = mapped_files(&prog.path, &prog.env);
        out += &format!(
            "| {} | {} | {:.2} ({:.2}–{:.2}) | {:.2} ({:.2}–{:.2}) | {:.2} |\n",
            prog.name,
            files.len() - 1,
            so.median * 1e3,
            so.p10 * 1e3,
            so.p90 * 1e3,
            sp.median * 1e3,
            sp.p10 * 1e3,
            sp.p90 * 1e3,
            sp.median / so.median
        );
        // Packing time against: one run of the program + copying its mapped files.
        let copy_dir = dir.path().join("copy");
        std::fs::create_dir_all(&copy_dir).unwrap();
        let t = Instant::now();
        for (i, f) in files.iter().enumerate() {
            std::fs::copy(f, copy_dir.join(i.to_string())).unwrap();
        }
        let copy_s = t.elapsed().as_secs_f64();
        let reference = so.median + copy_s;
        packing += &format!(
            "| {} | {:.1} | {:.1} | {:.2} |\n",
            prog.name,
            pack_s * 1e3,
            reference * 1e3,
            pack_s / reference
        );
        let total: u64 = files.iter().map(|f| file_size(f)).sum();
        let packed_size = file_size(&packed);
        let stored = verbose
            .split(" bytes stored")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .unwrap_or("?")
            .to_string();
        let zero = verbose
            .split(" zero-filled")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .unwrap_or("?")
            .to_string();
        sizes += &format!(
            "| {} | {} | {} | {:.3} | {} | {} |\n",
            prog.name,
            packed_size,
            total,
            packed_size as f64 / total as f64,
            stored,
            zero
        );
    }
    // The floor: a statically linked program of similar work.
    let st: Vec<f64> = (0..cfg.runs)
        .map(|_| time_run(Command::new(&static_ref).arg("true")))
        .collect();
    let st = stats(st);
    out += &format!(
        "| static reference (`fixture true`, static) | 0 | {:.2} ({:.2}–{:.2}) | | |\n\n",
        st.median * 1e3,
        st.p10 * 1e3,
        st.p90 * 1e3
    );

    out += "### Start-up per glibc (`PROGRAM --version` packed in a Debian root, timed there by a fork-exec-wait loop; median over interleaved runs)\n\n";
    out += "| where | glibc | arch | program | libs | original ms (p10–p90) | packed ms (p10–p90) | packed ÷ original |\n|---|---|---|---|---|---|---|---|\n";
    out += &startup_per_glibc(cfg);
    out += "\n";

    out += "### Packing time (`elfpack build` ÷ one run of the program + `cp` of its mapped files)\n\n";
    out += "| program | elfpack build ms | reference ms | ratio |\n|---|---|---|---|\n";
    out += &packing;
    out += "\n### Size (packed file ÷ program + every library it maps)\n\n";
    out += "| program | packed bytes | program + libraries bytes | ratio | bytes stored | zero bytes not stored |\n|---|---|---|---|---|---|\n";
    out += &sizes;

    // Memory of concurrent instances.
    let py = Path::new("/usr/bin/python3");
    let pypacked = dir.path().join("py-mem");
    pack(py, &pypacked, &[]);
    let args = ["-S", "-c", "import time; time.sleep(1.5)"];
    let (ro, po) = memory(py, &args, cfg.instances);
    let (rp, pp) = memory(&pypacked, &args, cfg.instances);
    out += &format!(
        "\n### Memory ({} concurrent `python3 -S -c 'sleep'`, per instance)\n\n| | Rss kB | Pss kB |\n|---|---|---|\n| original | {ro:.0} | {po:.0} |\n| packed | {rp:.0} | {pp:.0} |\n| packed ÷ original | {:.2} | {:.2} |\n",
        cfg.instances,
        rp / ro,
        pp / po
    );

    // Run-time overhead, packed at the level the original picks here (native).
    let fx = fixture("fixture-x86_64-pie");
    let fxn = dir.path().join("fx-native");
    pack(&fx, &fxn, &["--cpu", "native"]);
    let reps = cfg.runs.clamp(3, 15);
    let mut rows = String::new();
    for (name, args) in [
        (
            "vDSO loop (clock_gettime)",
            vec!["vdsoloop".to_string(), cfg.vdso_calls.to_string()],
        ),
        (
            "memcpy/strlen workload",
            vec!["memcpyloop".to_string(), cfg.memcpy_rounds.to_string()],
        ),
    ] {
        let (mut o, mut p) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            o.push(time_run(Command::new(&fx).args(&args)));
            p.push(time_run(Command::new(&fxn).args(&args)));
        }
        let (so, sp) = (stats(o), stats(p));
        rows += &format!(
            "| {name} | {:.1} | {:.1} | {:.3} |\n",
            so.median * 1e3,
            sp.median * 1e3,
            sp.median / so.median
        );
    }
    out += "\n### Run-time overhead (packed with `--cpu native`, the original's own choice)\n\n| workload | original ms | packed ms | ratio |\n|---|---|---|---|\n";
    out += &rows;

    // CPU levels: baseline against native on hashing and sorting.
    let data: Vec<u8> = (0..cfg.level_bytes as u32)
        .map(|i| b'a' + (i.wrapping_mul(2654435761) >> 27) as u8 % 26)
        .collect();
    let data: Vec<u8> = data
        .chunks(40)
        .flat_map(|c| c.iter().copied().chain(std::iter::once(b'\n')))
        .collect();
    let input = dir.path().join("input");
    std::fs::write(&input, &data).unwrap();
    let mut rows = String::new();
    for (name, prog, args) in [
        (
            "sha256sum",
            "/usr/bin/sha256sum",
            vec![input.display().to_string()],
        ),
        ("sort", "/usr/bin/sort", vec![input.display().to_string()]),
    ] {
        let b = dir.path().join(format!("{name}-baseline"));
        let n = dir.path().join(format!("{name}-native"));
        pack(Path::new(prog), &b, &["--cpu", "baseline"]);
        pack(Path::new(prog), &n, &["--cpu", "native"]);
        let (mut tb, mut tn) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            tn.push(time_run(Command::new(&n).args(&args).env("LC_ALL", "C")));
            tb.push(time_run(Command::new(&b).args(&args).env("LC_ALL", "C")));
        }
        let (sb, sn) = (stats(tb), stats(tn));
        rows += &format!(
            "| {name} {} MB | {:.1} | {:.1} | {:.3} |\n",
            data.len() >> 20,
            sn.median * 1e3,
            sb.median * 1e3,
            sb.median / sn.median
        );
    }
    out += "\n### CPU level: `--cpu baseline` ÷ `--cpu native`\n\n| workload | native ms | baseline ms | baseline ÷ native |\n|---|---|---|---|\n";
    out += &rows;

    // The stub's own work, as it reports it.
    let trace: Vec<f64> = (0..cfg.runs)
        .map(|_| {
            let o = Command::new(&pypacked)
                .args(["-S", "-c", "pass"])
                .env("ELFPACK_TRACE", "1")
                .output_t();
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            let ns = err
                .split("restore took ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse::<f64>().ok());
            ns.unwrap_or_else(|| panic!("no restore time reported: {err}"))
        })
        .collect();
    let t = stats(trace);
    out += &format!(
        "\n### Stub\n\nRestore work of packed python3 (exec to resume, `ELFPACK_TRACE=1`): median {:.1} µs (p10 {:.1}, p90 {:.1}).\n",
        t.median / 1e3,
        t.p10 / 1e3,
        t.p90 / 1e3
    );
    out
}

/// The restore time (ns) in the stub's `ELFPACK_TRACE` output: `restore took N UNIT`, with
/// UNIT ns, us, µs or ms.
pub fn trace_restore_ns(stderr: &str) -> Option<f64> {
    let rest = stderr.split("restore took ").nth(1)?;
    let mut words = rest.split_whitespace();
    let n = words.next()?.parse::<f64>().ok()?;
    let scale = match words
        .next()
        .map(|u| u.trim_end_matches([',', ';', ')', '.']))
    {
        Some("ns") => 1.0,
        Some("us") | Some("µs") => 1e3,
        Some("ms") => 1e6,
        _ => return None,
    };
    Some(n * scale)
}

/// A relocation count in `elfpack:` lines (the stub's trace) or in `inspect`'s text: the
/// number next to a word that starts with `reloc` (`1234 relocations`, `relocations: 1234`,
/// `relocations applied: 1234`). None when no line gives one.
pub fn relocation_count(text: &str) -> Option<u64> {
    for line in text.lines() {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || ",:;()=".contains(c))
            .filter(|w| !w.is_empty())
            .collect();
        let Some(i) = words
            .iter()
            .position(|w| w.to_ascii_lowercase().starts_with("reloc"))
        else {
            continue;
        };
        let num = |w: &str| w.parse::<u64>().ok();
        if let Some(n) = i.checked_sub(1).and_then(|j| num(words[j])) {
            return Some(n);
        }
        if let Some(n) = words[i + 1..].iter().take(3).find_map(|w| num(w)) {
            return Some(n);
        }
    }
    None
}

/// Median restore time (ns) of `runs` runs of a packed file with `ELFPACK_TRACE=1`, and the
/// relocation count of the last run's trace.
fn traced(packed: &Path, args: &[&str], runs: usize) -> (Stats, Option<u64>) {
    let mut count = None;
    let times = (0..runs)
        .map(|_| {
            let o = Command::new(packed)
                .args(args)
                .env("ELFPACK_TRACE", "1")
                .output_t();
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(o.status.success(), "{}: {err}", packed.display());
            count = relocation_count(
                &err.lines()
                    .filter(|l| l.starts_with("elfpack:"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            trace_restore_ns(&err)
                .unwrap_or_else(|| panic!("{}: no restore time reported: {err}", packed.display()))
        })
        .collect();
    (stats(times), count)
}

/// The ASLR section: start-up of the original, the default (randomised) pack and a
/// `--no-aslr` pack side by side for programs with many libraries; the stub's restore work
/// and relocation count with and without randomisation; memory of concurrent instances.
pub fn aslr(cfg: &Config) -> String {
    let dir = scratch();
    let mut out = String::new();
    out += "### Address randomisation: start-up (wall time of one run, median over interleaved runs)\n\n";
    out += "| program | libs | original ms (p10–p90) | default pack ms (p10–p90) | `--no-aslr` pack ms (p10–p90) | default ÷ original | `--no-aslr` ÷ original | default ÷ `--no-aslr` |\n|---|---|---|---|---|---|---|---|\n";
    for (name, prog, args) in [
        ("python3 -c pass", "/usr/bin/python3", vec!["-c", "pass"]),
        ("curl --version", "/usr/bin/curl", vec!["--version"]),
        ("ffmpeg -version", "/usr/bin/ffmpeg", vec!["-version"]),
    ] {
        let prog = Path::new(prog);
        if !prog.exists() {
            continue;
        }
        let file = name.split(' ').next().unwrap();
        let (rnd, fixed) = (
            dir.path().join(format!("{file}-aslr")),
            dir.path().join(format!("{file}-fixed")),
        );
        pack(prog, &rnd, &[]);
        pack(prog, &fixed, &["--no-aslr"]);
        let (mut o, mut r, mut f) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..cfg.runs {
            // The order of the three rotates from run to run.
            for k in 0..3 {
                match (i + k) % 3 {
                    0 => o.push(time_run(Command::new(prog).args(&args))),
                    1 => r.push(time_run(Command::new(&rnd).args(&args))),
                    _ => f.push(time_run(Command::new(&fixed).args(&args))),
                }
            }
        }
        let (so, sr, sf) = (stats(o), stats(r), stats(f));
        let ms = |s: Stats| {
            format!(
                "{:.2} ({:.2}–{:.2})",
                s.median * 1e3,
                s.p10 * 1e3,
                s.p90 * 1e3
            )
        };
        out += &format!(
            "| {name} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |\n",
            mapped_files(prog, &[]).len() - 1,
            ms(so),
            ms(sr),
            ms(sf),
            sr.median / so.median,
            sf.median / so.median,
            sr.median / sf.median
        );
    }

    // The stub's own work, as it reports it, with and without randomisation.
    let py = Path::new("/usr/bin/python3");
    let (rnd, fixed) = (
        dir.path().join("python3-aslr"),
        dir.path().join("python3-fixed"),
    );
    for (p, extra) in [(&rnd, &[][..]), (&fixed, &["--no-aslr"][..])] {
        if !p.exists() {
            pack(py, p, extra);
        }
    }
    let args = ["-S", "-c", "pass"];
    let (tr, nr) = traced(&rnd, &args, cfg.runs);
    let (tf, nf) = traced(&fixed, &args, cfg.runs);
    let inspect_count = |p: &Path| {
        let o = Command::new(elfpack()).arg("inspect").arg(p).output_t();
        relocation_count(&String::from_utf8_lossy(&o.stdout))
    };
    let count = |trace: Option<u64>, p: &Path| match (trace, inspect_count(p)) {
        (Some(n), _) => format!("{n} (trace)"),
        (None, Some(n)) => format!("{n} (inspect)"),
        (None, None) => "n/a (neither the trace nor inspect gives a count)".into(),
    };
    let us = |s: Stats| {
        format!(
            "{:.1} ({:.1}–{:.1})",
            s.median / 1e3,
            s.p10 / 1e3,
            s.p90 / 1e3
        )
    };
    out += &format!(
        "\n### Address randomisation: restore work of packed `python3 -S -c pass` (`ELFPACK_TRACE=1`, {} runs each)\n\n| pack | restore µs median (p10–p90) | relocations applied |\n|---|---|---|\n| default | {} | {} |\n| `--no-aslr` | {} | {} |\n| default ÷ `--no-aslr` | {:.2} | |\n",
        cfg.runs,
        us(tr),
        count(nr, &rnd),
        us(tf),
        count(nf, &fixed),
        tr.median / tf.median
    );

    // Memory of concurrent instances: relocated pages are private to each process.
    let args = ["-S", "-c", "import time; time.sleep(1.5)"];
    let (ro, po) = memory(py, &args, cfg.instances);
    let (rr, pr) = memory(&rnd, &args, cfg.instances);
    let (rf, pf) = memory(&fixed, &args, cfg.instances);
    out += &format!(
        "\n### Address randomisation: memory ({} concurrent `python3 -S -c 'sleep'`, per instance)\n\n| | Rss kB | Pss kB | Pss ÷ original |\n|---|---|---|---|\n| original | {ro:.0} | {po:.0} | 1.00 |\n| default pack | {rr:.0} | {pr:.0} | {:.2} |\n| `--no-aslr` pack | {rf:.0} | {pf:.0} | {:.2} |\n| default ÷ `--no-aslr` | {:.2} | {:.2} | |\n",
        cfg.instances,
        pr / po,
        pf / po,
        rr / rf,
        pr / pf
    );
    out
}
