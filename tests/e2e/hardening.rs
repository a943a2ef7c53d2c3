//! Hardening: secure (setuid) runs, running exactly PROGRAM and only glibc's loader, the
//! process tree and temporary files when a build is killed, and exact errors on bad input.
//! Every child process started here has a deadline: a hung child fails the test with its
//! output shown.
use elfpack_tests::{elfpack, fixture, require, scratch};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a finished child left.
struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` (stdin closed) and waits at most `secs` seconds; a child still running then
/// is killed and the test fails with what it printed.
fn run_for(cmd: &mut Command, secs: u64) -> Out {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = elfpack_tests::spawn(cmd);
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    match status {
        Some(status) => Out {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{cmd:?} did not finish within {secs} s\n--- stdout\n{stdout}--- stderr\n{stderr}"
        ),
    }
}

/// `elfpack ARGS...`, at most 60 s.
fn elfpack_run<S: AsRef<OsStr>>(args: &[S]) -> Out {
    run_for(Command::new(elfpack()).args(args), 60)
}

/// Packs `input` into `output`; fails the test with elfpack's stderr otherwise.
fn pack(input: &Path, output: &Path) {
    let o = run_for(
        Command::new(elfpack())
            .arg("build")
            .arg(input)
            .arg("-o")
            .arg(output)
            .arg("-q"),
        60,
    );
    assert!(o.status.success(), "packing {}: {o}", input.display());
}

/// A copy of `src` at `dst` with mode `mode`.
fn copy_mode(src: &Path, dst: &Path, mode: u32) {
    std::fs::copy(src, dst).unwrap();
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------------------
// 1. Secure runs.

/// The environment given to the setuid programs: every variable glibc 2.36 removes in
/// secure mode, some twice, next to variables it keeps, and a GLIBC_TUNABLES with tunables
/// it erases and tunables it keeps.
const SECURE_ENV: &[&str] = &[
    "HOME=/root",
    "GCONV_PATH=/attacker/gconv",
    "GETCONF_DIR=/attacker",
    "GLIBC_TUNABLES=glibc.malloc.check=3:glibc.malloc.perturb=2:glibc.cpu.hwcaps=-AVX2:foo=1:glibc.mem.tagging=0",
    "HOSTALIASES=/attacker/hosts",
    "LD_AUDIT=libattacker.so",
    "LD_DEBUG_OUTPUT=/attacker/out",
    "LD_DYNAMIC_WEAK=1",
    "LD_HWCAP_MASK=1",
    "LD_LIBRARY_PATH=/attacker/lib",
    "LD_ORIGIN_PATH=/attacker",
    "LD_PRELOAD=libattacker.so",
    "LD_PROFILE=libc.so.6",
    "LOCALDOMAIN=attacker",
    "LOCPATH=/attacker/locale",
    "KEEP_ME=1",
    "MALLOC_TRACE=/attacker/trace",
    "MALLOC_CHECK_=3",
    "NIS_PATH=/attacker",
    "NLSPATH=/attacker/%N",
    "RESOLV_HOST_CONF=/attacker/host.conf",
    "RES_OPTIONS=debug",
    "TMPDIR=/attacker/tmp",
    "TZDIR=/attacker/zoneinfo",
    "GCONV_PATH=/attacker/again",
    "MALLOC_PERTURB_=3",
    "LD_BIND_NOW=1",
    "GLIBC_TUNABLES=glibc.rtld.nns=2",
    "LAST=1",
];

/// Runs `prog env` as uid/gid 65534 with exactly [`SECURE_ENV`], through the unprivileged
/// fixture's `exec` mode (so no other program sees that environment); its stdout.
fn secure_run(launcher: &Path, prog: &Path) -> String {
    let setpriv = require("setpriv");
    let o = run_for(
        Command::new(setpriv)
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(launcher)
            .arg("exec")
            .arg(prog)
            .args(SECURE_ENV)
            .env_clear(),
        30,
    );
    assert!(o.status.success(), "{} as uid 65534: {o}", prog.display());
    o.stdout
}

fn setuid_environment_is_the_originals(arch: &str, pie: &str) {
    let d = scratch();
    let fx = fixture(&format!("hardening-{arch}-{pie}"));
    let launcher = d.path().join("launcher");
    copy_mode(&fx, &launcher, 0o755);
    let orig = d.path().join("orig");
    copy_mode(&fx, &orig, 0o4755);
    let packed = d.path().join("packed");
    pack(&fx, &packed);
    std::fs::set_permissions(&packed, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let want = secure_run(&launcher, &orig);
    // The original's view, as glibc 2.36 leaves it: the test's premise.
    assert!(
        want.contains("AT_SECURE=1 __libc_enable_secure=1 secure_getenv(HOME)=hidden"),
        "{want}"
    );
    assert!(!want.contains("attacker"), "{want}");
    assert!(
        want.contains("GLIBC_TUNABLES=glibc.malloc.perturb=2:glibc.mem.tagging=0\n"),
        "{want}"
    );
    assert_eq!(secure_run(&launcher, &packed), want, "{arch} {pie}");
    // Not setuid: nothing removed, and the flag is 0.
    std::fs::set_permissions(&packed, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plain = secure_run(&launcher, &packed);
    assert!(plain.contains("GCONV_PATH=/attacker/gconv\n"), "{plain}");
    assert!(
        plain.contains("AT_SECURE=0 __libc_enable_secure=0 secure_getenv(HOME)=set"),
        "{plain}"
    );
}

#[test]
fn setuid_environment_x86_64_nopie() {
    setuid_environment_is_the_originals("x86_64", "nopie");
}

#[test]
fn setuid_environment_x86_64_pie() {
    setuid_environment_is_the_originals("x86_64", "pie");
}

#[test]
fn setuid_environment_i386_pie() {
    setuid_environment_is_the_originals("i386", "pie");
}

#[allow(dead_code)]
fn _unused(_: PathBuf) {}
