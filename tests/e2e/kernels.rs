//! Packed files on the kernels in use, not only on this machine's: Debian 11's (5.10) and
//! Debian 12's (6.1) kernels booted by qemu-system-x86_64 (TCG) with an initramfs holding a
//! static busybox and the packed files. Before 6.17 the kernel refuses more than one page
//! of program headers, so these boots also prove the header bound. Each kernel boots once
//! and runs every program; stdout and exit status are compared with the unpacked originals
//! run on this machine.
//!
//! Also here: the stub's minimum-kernel check (`setarch --uname-2.6` makes the kernel
//! report 2.6.x), and rseq refused (qemu-user has no rseq): the packed program then says
//! "not registered" as glibc does.
//!
//! `tests/setup --tests` downloads the kernels and busybox once into
//! `${XDG_CACHE_HOME:-$HOME/.cache}/elfpack-tests/`; a missing one fails these tests.
use elfpack_tests::{
    cache_dir, elfpack, fixture, output_within, pack_to, require, run_cmd_within, scratch,
    test_env, Arch, ArchTest, Run,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Seconds for a host child (packing ffmpeg included).
const CHILD_TIMEOUT: u64 = 300;
/// Seconds for one boot with every program (TCG is 10–30× slower than native).
const BOOT_TIMEOUT: u64 = 900;

fn run(cmd: Command, stdin: Option<&[u8]>) -> Run {
    run_cmd_within(
        cmd,
        stdin.unwrap_or_default(),
        std::time::Duration::from_secs(CHILD_TIMEOUT),
    )
}

/// The cached kernel image whose release starts with `release` ("5.10.", "6.1.").
fn kernel(release: &str) -> PathBuf {
    let dir = cache_dir().join("kernels");
    let found = std::fs::read_dir(&dir).ok().and_then(|d| {
        d.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("vmlinuz-{release}")))
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "no Linux {release}x kernel in {} (tests/setup --tests downloads it)",
            dir.display()
        )
    })
}

fn busybox() -> PathBuf {
    let p = cache_dir().join("busybox");
    assert!(
        p.is_file(),
        "{} missing (tests/setup --tests copies it from busybox-static)",
        p.display()
    );
    p
}

/// The path of a program on this machine; fails the test if it is not installed.
fn program(name: &str) -> PathBuf {
    require(name)
}

/// One program run in the guest and on the host.
struct Case {
    /// Name of the packed file in the guest (`/p/NAME`).
    file: String,
    args: Vec<String>,
    stdin: Vec<u8>,
    /// Compare the MD5 of stdout (binary output), not stdout itself.
    md5: bool,
    /// The original's result on the host.
    expected: Run,
}

/// The packed files and cases, built once per test process.
struct Suite {
    _dir: tempfile::TempDir,
    files: PathBuf,
    cases: Vec<Case>,
}

fn md5(bytes: &[u8]) -> String {
    let mut c = Command::new(require("md5sum"));
    c.env_clear();
    let r = run(c, Some(bytes));
    assert_eq!(r.code, Some(0));
    r.stdout
}

fn pack(input: &Path, output: &Path, extra: &[&str]) {
    pack_to(input, output, extra);
}

/// Runs the original on the host as the guest runs the packed file: argv[0] `/p/FILE`,
/// the tests' environment.
fn host_run(orig: &Path, file: &str, args: &[String], stdin: &[u8], md5_out: bool) -> Run {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(orig);
    c.arg0(format!("/p/{file}"))
        .args(args)
        .env_clear()
        .envs(test_env());
    // The raw bytes, for the MD5 of binary output.
    let out = output_within(c, stdin, std::time::Duration::from_secs(CHILD_TIMEOUT));
    Run {
        stdout: if md5_out {
            md5(&out.stdout)
        } else {
            String::from_utf8_lossy(&out.stdout).into_owned()
        },
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The C fixture's cases that mean the same on any kernel and CPU model (not `auxv`: the
/// guest CPU's HWCAP differs; not `getcpu`: no taskset in the guest).
fn c_cases() -> Vec<(Vec<String>, &'static [u8])> {
    vec![
        (s(&["args", "5", "two words", ""]), &b""[..]),
        (s(&["env"]), b""),
        (s(&["tls"]), b""),
        (s(&["malloc"]), b""),
        (s(&["dlopen"]), b""),
        (s(&["clock"]), b""),
        (s(&["fork", "/bin/true"]), b""),
        (s(&["signal"]), b""),
        (s(&["pi"]), b""),
        (s(&["brk"]), b""),
        (s(&["stdin"]), b"some input\nover two lines\n"),
        (s(&["cmdline", "a b", "c"]), b""),
        (s(&["rseq"]), b""),
    ]
}

fn suite() -> &'static Suite {
    static SUITE: OnceLock<Suite> = OnceLock::new();
    SUITE.get_or_init(|| {
        let dir = scratch();
        let files = dir.path().join("p");
        std::fs::create_dir_all(&files).unwrap();
        let mut cases = Vec::new();
        let mut add = |file: &str, orig: &Path, args: Vec<String>, stdin: &[u8], md5: bool| {
            let expected = host_run(orig, file, &args, stdin, md5);
            cases.push(Case {
                file: file.to_string(),
                args,
                stdin: stdin.to_vec(),
                md5,
                expected,
            });
        };
        for arch in [Arch::X86_64, Arch::I386] {
            for pie in ["pie", "nopie"] {
                let name = format!("fixture-{}-{pie}", arch.tag());
                let orig = fixture(&name);
                pack(&orig, &files.join(&name), &[]);
                for (args, stdin) in c_cases() {
                    add(&name, &orig, args, stdin, false);
                }
                let name = format!("cxx-{}-{pie}", arch.tag());
                let orig = fixture(&name);
                pack(&orig, &files.join(&name), &[]);
                add(&name, &orig, s(&["one", "two"]), b"", false);
            }
        }
        // Real programs with many libraries: curl (about 180 regions) and wget, and
        // ffmpeg (about 200 libraries, over 1000 regions) encoding a tone to WAV.
        for (name, args) in [("curl", s(&["--version"])), ("wget", s(&["--version"]))] {
            let orig = program(name);
            pack(&orig, &files.join(name), &[]);
            add(name, &orig, args, b"", false);
        }
        let ffmpeg_args = s(&[
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=1",
            "-fflags",
            "+bitexact",
            "-flags:a",
            "+bitexact",
            "-f",
            "wav",
            "-",
        ]);
        let orig = program("ffmpeg");
        pack(&orig, &files.join("ffmpeg"), &[]);
        add("ffmpeg", &orig, ffmpeg_args, b"", true);
        Suite {
            _dir: dir,
            files,
            cases,
        }
    })
}

/// A shell word for busybox sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Builds the initramfs: busybox, the packed files, each case's stdin, and /init.
fn initramfs(suite: &Suite, root: &Path, out: &Path) {
    for d in ["bin", "dev", "proc", "sys", "tmp", "in"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox(), root.join("bin/busybox")).unwrap();
    // No /bin/sh: glibc's execvp runs a file the kernel refuses (ENOEXEC, as for too many
    // program headers) as a shell script, which must not happen here.
    std::os::unix::fs::symlink("busybox", root.join("bin/true")).unwrap();
    let p = root.join("p");
    std::fs::create_dir_all(&p).unwrap();
    for e in std::fs::read_dir(&suite.files).unwrap() {
        let e = e.unwrap();
        std::fs::hard_link(e.path(), p.join(e.file_name()))
            .or_else(|_| std::fs::copy(e.path(), p.join(e.file_name())).map(drop))
            .unwrap();
    }
    // The tests' environment, in the order the host runs get it (sorted by name).
    let mut env: Vec<(&str, &str)> = test_env();
    env.sort();
    let env: Vec<String> = env
        .iter()
        .map(|(k, v)| quote(&format!("{k}={v}")))
        .collect();
    let mut init = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         exec 3>/dev/ttyS1\n\
         echo \"@@KERNEL $(/bin/busybox uname -r)\" >&3\n",
    );
    for (i, c) in suite.cases.iter().enumerate() {
        std::fs::write(root.join(format!("in/{i}")), &c.stdin).unwrap();
        let args: Vec<String> = c.args.iter().map(|a| quote(a)).collect();
        init.push_str(&format!(
            "echo '@@BEGIN {i}' >&3\n\
             cd /tmp && /bin/busybox env -i {env} /p/{file} {args} </in/{i} >/tmp/out 2>/tmp/err\n\
             s=$?\n\
             {{ {show}; echo; }} >&3\n\
             echo '@@STDERR' >&3\n\
             {{ /bin/busybox head -c 2000 /tmp/err; echo; }} >&3\n\
             echo \"@@END {i} $s\" >&3\n",
            env = env.join(" "),
            file = c.file,
            args = args.join(" "),
            show = if c.md5 {
                "/bin/busybox md5sum </tmp/out"
            } else {
                "/bin/busybox cat /tmp/out"
            },
        ));
    }
    init.push_str("echo '@@DONE' >&3\n/bin/busybox sync\n/bin/busybox poweroff -f\n");
    std::fs::write(root.join("init"), init).unwrap();
    std::fs::set_permissions(
        root.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut c = Command::new(require("sh"));
    c.arg("-c")
        .arg("cd \"$1\" && find . | cpio -o -H newc --quiet > \"$2\"")
        .arg("sh")
        .arg(root)
        .arg(out);
    let r = run(c, None);
    assert_eq!(r.code, Some(0), "cpio: {}", r.stderr);
}

/// The guest's result of each case, from the results port's text.
fn parse(results: &str, n: usize) -> Vec<Option<Run>> {
    let text = results.replace('\r', "");
    let mut out: Vec<Option<Run>> = (0..n).map(|_| None).collect();
    let mut lines = text.split_inclusive('\n');
    while let Some(l) = lines.next() {
        let Some(i) = l.trim_end().strip_prefix("@@BEGIN ") else {
            continue;
        };
        let i: usize = i.parse().unwrap();
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let mut in_err = false;
        for l in lines.by_ref() {
            if l.trim_end() == "@@STDERR" {
                in_err = true;
            } else if let Some(rest) = l.trim_end().strip_prefix(&format!("@@END {i} ")) {
                // Both sections end with the newline the script adds.
                stdout.pop();
                stderr.pop();
                out[i] = Some(Run {
                    stdout,
                    stderr,
                    code: rest.parse().ok(),
                });
                break;
            } else if in_err {
                stderr.push_str(l);
            } else {
                stdout.push_str(l);
            }
        }
    }
    out
}

fn boot(release: &str) {
    let suite = suite();
    let vmlinuz = kernel(release);
    let work = scratch();
    let initrd = work.path().join("initrd");
    initramfs(suite, &work.path().join("root"), &initrd);
    let console = work.path().join("console.txt");
    let results = work.path().join("results.txt");
    let mut c = Command::new(require("qemu-system-x86_64"));
    c.args(["-accel", "tcg", "-cpu", "max", "-m", "2048"])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 rdinit=/init panic=-1 quiet",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()));
    let r = run_cmd_within(c, b"", std::time::Duration::from_secs(BOOT_TIMEOUT));
    let text = std::fs::read_to_string(&results).unwrap_or_default();
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    let tail = |t: &str| t[t.len().saturating_sub(3000)..].to_string();
    assert!(
        text.contains("@@DONE"),
        "Linux {release}x: the guest did not finish (qemu {:?})\nconsole: {}\nresults: {}",
        r.code,
        tail(&console_text),
        tail(&text)
    );
    let kernel_line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("@@KERNEL "))
        .unwrap_or("");
    assert!(
        kernel_line.starts_with(release),
        "booted {kernel_line}, not {release}x"
    );
    let got = parse(&text, suite.cases.len());
    let mut failures = Vec::new();
    for (c, g) in suite.cases.iter().zip(&got) {
        let what = format!("{} {:?}", c.file, c.args);
        match g {
            None => failures.push(format!("{what}: no result")),
            Some(g) if (g.code, &g.stdout) != (c.expected.code, &c.expected.stdout) => failures
                .push(format!(
                    "{what}: packed on Linux {kernel_line} gave {:?} {:?} (stderr {:?}); \
                     the original on this machine {:?} {:?}",
                    g.code, g.stdout, g.stderr, c.expected.code, c.expected.stdout
                )),
            Some(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "Linux {kernel_line}: {} of {} runs differ:\n{}",
        failures.len(),
        suite.cases.len(),
        failures.join("\n")
    );
}

#[test]
fn debian_11_kernel_5_10_runs_packed_programs() {
    boot("5.10.");
}

#[test]
fn debian_12_kernel_6_1_runs_packed_programs() {
    boot("6.1.");
}

#[test]
fn a_kernel_older_than_the_minimum_gets_one_line_and_127() {
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = fixture(&format!("fixture-{}-pie", arch.tag()));
        let dir = scratch();
        let packed = dir.path().join("packed");
        pack(&orig, &packed, &[]);
        // The packed file says what it needs: glibc 2.36's ABI tag asks for 3.2.
        let mut c = Command::new(elfpack());
        c.arg("inspect").arg("--json").arg(&packed);
        let r = run(c, None);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["min_kernel"], "3.2");
        let mut c = Command::new(elfpack());
        c.arg("inspect").arg(&packed);
        let r = run(c, None);
        assert!(
            r.stdout.contains("runs on: Linux 3.2 or later"),
            "{}",
            r.stdout
        );
        // UNAME26 makes uname report 2.6.x.
        let mut c = Command::new(require("setarch"));
        c.arg(arch.setarch())
            .arg("--uname-2.6")
            .arg(&packed)
            .arg("args")
            .env_clear()
            .envs(test_env());
        let r = run(c, None);
        assert_eq!(r.code, Some(127), "{r:?}");
        assert_eq!(r.stdout, "");
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{:?}", r.stderr);
        assert!(
            lines[0]
                .starts_with("elfpack: this program needs Linux 3.2 or later; this kernel is 2.6."),
            "{:?}",
            r.stderr
        );
        // The same file runs on this kernel.
        let mut c = Command::new(&packed);
        c.arg("args").env_clear().envs(test_env());
        assert_eq!(run(c, None).code, Some(0));
    }
}

#[test]
fn refused_rseq_reads_as_not_registered() {
    // qemu-user implements no rseq: glibc's own registration fails there, and so does the
    // stub's replay. Then `__rseq_size` must be 0 and `cpu_id` RSEQ_CPU_ID_REGISTRATION_FAILED,
    // as glibc leaves them, so sched_getcpu() asks the kernel.
    for arch in [Arch::X86_64, Arch::I386] {
        for pie in ["pie", "nopie"] {
            let orig = fixture(&format!("fixture-{}-{pie}", arch.tag()));
            let dir = scratch();
            let packed = dir.path().join("packed");
            pack(&orig, &packed, &[]);
            for case in ["rseq", "getcpu"] {
                // Pinned, so that both runs are on the same CPU.
                let q = |prog: &Path| {
                    let mut c = Command::new(require("taskset"));
                    c.args(["-c", "1"])
                        .arg(require(arch.qemu()))
                        .arg(prog)
                        .arg(case)
                        .env_clear()
                        .envs(test_env());
                    run(c, None)
                };
                let (p, o) = (q(&packed), q(&orig));
                assert_eq!(
                    (p.code, &p.stdout),
                    (o.code, &o.stdout),
                    "{} {pie} {case} under qemu: packed {:?}, original {:?}",
                    arch.tag(),
                    p.stderr,
                    o.stderr
                );
            }
            // Natively, the replay succeeds and the area is live.
            let mut c = Command::new(&packed);
            c.arg("rseq").env_clear().envs(test_env());
            assert_eq!(run(c, None).stdout, "rseq registered=yes\n");
        }
    }
}
