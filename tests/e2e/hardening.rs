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
    run_with_stdout(cmd, secs, Stdio::piped())
}

/// As [`run_for`], with stdout connected to `stdout`.
fn run_with_stdout(cmd: &mut Command, secs: u64, stdout: Stdio) -> Out {
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let o = elfpack_tests::wait_output_within(
        elfpack_tests::spawn(cmd),
        &what,
        Duration::from_secs(secs),
    );
    Out {
        status: o.status,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
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

// ---------------------------------------------------------------------------------------
// 2, 3. Running exactly PROGRAM, and only glibc's loader.

/// A copy of `src` at `dst` (mode 0755) whose PT_INTERP holds `interp` followed by NULs,
/// and, with `filesz`, whose PT_INTERP p_filesz is changed to it.
fn with_interp(src: &Path, dst: &Path, interp: Option<&[u8]>, filesz: Option<u64>) {
    let mut bytes = std::fs::read(src).unwrap();
    let elf = goblin::elf::Elf::parse(&bytes).unwrap();
    let (idx, ph) = elf
        .program_headers
        .iter()
        .enumerate()
        .find(|(_, p)| p.p_type == goblin::elf::program_header::PT_INTERP)
        .map(|(i, p)| (i, p.clone()))
        .expect("no PT_INTERP");
    let is64 = elf.is_64;
    let phoff = elf.header.e_phoff as usize;
    let phentsize = elf.header.e_phentsize as usize;
    drop(elf);
    if let Some(path) = interp {
        assert!(
            path.len() < ph.p_filesz as usize,
            "interpreter path too long"
        );
        let seg = &mut bytes[ph.p_offset as usize..(ph.p_offset + ph.p_filesz) as usize];
        seg.fill(0);
        seg[..path.len()].copy_from_slice(path);
    }
    if let Some(n) = filesz {
        // p_filesz: offset 32 in Elf64_Phdr, 16 in Elf32_Phdr.
        let at = phoff + idx * phentsize;
        if is64 {
            bytes[at + 32..at + 40].copy_from_slice(&n.to_le_bytes());
        } else {
            bytes[at + 16..at + 20].copy_from_slice(&(n as u32).to_le_bytes());
        }
    }
    std::fs::write(dst, &bytes).unwrap();
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `elfpack build PROG -o OUT EXTRA...` run in `dir`.
fn build_in(dir: &Path, prog: &str, out: &str, extra: &[&str]) -> Out {
    run_for(
        Command::new(elfpack())
            .current_dir(dir)
            .args(["build", prog, "-o", out])
            .args(extra),
        60,
    )
}

#[test]
fn a_program_the_kernel_refuses_is_not_replaced_by_the_shell() {
    // PT_INTERP's string without its NUL: execve fails with ENOEXEC, and execvp would run
    // /bin/sh with the program as a script.
    let d = scratch();
    let fx = fixture("hardening-x86_64-pie");
    let len = goblin::elf::Elf::parse(&std::fs::read(&fx).unwrap())
        .unwrap()
        .program_headers
        .iter()
        .find(|p| p.p_type == goblin::elf::program_header::PT_INTERP)
        .unwrap()
        .p_filesz;
    with_interp(&fx, &d.path().join("prog"), None, Some(len - 1));
    let o = build_in(d.path(), "./prog", "out", &[]);
    assert_eq!(o.code(), Some(3), "{o}");
    assert!(o.stderr.contains("PT_INTERP"), "{o}");
    assert_eq!(o.stderr.lines().count(), 1, "{o}");
    assert!(!d.path().join("out").exists(), "{o}");
}

/// Packs the PIE fixture with PT_INTERP `interp`, naming a copy of the static fixture
/// (`file` in the work directory): the build must be refused (exit 3) before the
/// "interpreter" runs (it would create a mark file) and write nothing.
fn refused_static_interpreter(file: &str, interp: &[u8]) -> Out {
    let d = scratch();
    std::fs::copy(fixture("hardening-static-x86_64"), d.path().join(file)).unwrap();
    std::fs::set_permissions(d.path().join(file), std::fs::Permissions::from_mode(0o755)).unwrap();
    with_interp(
        &fixture("hardening-x86_64-pie"),
        &d.path().join("prog"),
        Some(interp),
        None,
    );
    let mark = d.path().join("ran");
    let env = format!("--env=HARDENING_MARK={}", mark.display());
    let o = build_in(d.path(), "./prog", "out", &[&env]);
    assert_eq!(o.code(), Some(3), "{o}");
    assert!(!mark.exists(), "the interpreter ran during the build: {o}");
    assert!(!d.path().join("out").exists(), "{o}");
    o
}

#[test]
fn a_static_program_as_interpreter_never_runs() {
    let o = refused_static_interpreter("i", b"./i");
    assert!(o.stderr.contains("not glibc's ld.so"), "{o}");
    assert!(o.stderr.contains("./i"), "{o}");
}

#[test]
fn an_interpreter_of_the_other_class_is_refused() {
    // An i386 program whose PT_INTERP names the x86-64 ld.so (a glibc loader, but not for
    // this program).
    let d = scratch();
    std::os::unix::fs::symlink("/lib64/ld-linux-x86-64.so.2", d.path().join("x")).unwrap();
    with_interp(
        &fixture("hardening-i386-pie"),
        &d.path().join("prog"),
        Some(b"./x"),
        None,
    );
    let o = build_in(d.path(), "./prog", "out", &[]);
    assert_eq!(o.code(), Some(3), "{o}");
    assert!(o.stderr.contains("another class or machine"), "{o}");
}

#[test]
fn a_musl_interpreter_is_named_as_unsupported() {
    let o = refused_static_interpreter("ld-musl-x86_64.so.1", b"ld-musl-x86_64.so.1");
    assert!(o.stderr.contains("musl"), "{o}");
    assert!(o.stderr.contains("not supported yet"), "{o}");
}

#[test]
fn a_missing_interpreter_is_named() {
    let d = scratch();
    with_interp(
        &fixture("hardening-x86_64-pie"),
        &d.path().join("prog"),
        Some(b"/nonexistent/ld.so"),
        None,
    );
    let o = build_in(d.path(), "./prog", "out", &[]);
    assert_eq!(o.code(), Some(3), "{o}");
    assert!(o.stderr.contains("/nonexistent/ld.so"), "{o}");
    assert!(o.stderr.contains("no such file"), "{o}");
}

// ---------------------------------------------------------------------------------------
// 6. Privileged programs: setuid, setgid and file capabilities are refused alike.

#[test]
fn file_capabilities_are_refused_like_setuid() {
    let setcap = require("setcap");
    let d = scratch();
    let p = d.path().join("prog");
    copy_mode(&fixture("hardening-x86_64-pie"), &p, 0o755);
    let st = run_for(Command::new(setcap).arg("cap_net_raw+ep").arg(&p), 30);
    assert!(st.status.success(), "{st}");
    let o = build_in(d.path(), "./prog", "out", &[]);
    assert_eq!(o.code(), Some(3), "{o}");
    assert!(o.stderr.contains("file capabilities"), "{o}");
    assert!(!d.path().join("out").exists());
    for mode in [0o4755, 0o2755] {
        copy_mode(&fixture("hardening-x86_64-pie"), &d.path().join("s"), mode);
        let o = build_in(d.path(), "./s", "out", &[]);
        assert_eq!(o.code(), Some(3), "{o}");
        assert!(o.stderr.contains("privileged programs"), "{o}");
    }
}

// ---------------------------------------------------------------------------------------
// 7, 8, 9. The process tree and temporary files.

/// Whether process `pid` is gone (or a zombie about to be reaped by init).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
    }
}

/// Waits up to `secs` seconds for `pid` to be gone.
fn wait_gone(pid: i32, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    gone(pid)
}

#[test]
fn a_fork_during_capture_leaves_no_process() {
    // An IFUNC resolver of the program forks while ld.so relocates it, at capture; the
    // child would sleep for 30 s.
    fork_leaves_no_process(&[]);
}

#[test]
fn a_fork_in_an_audit_library_leaves_no_process() {
    // An LD_AUDIT module forks in la_version, before anything else is loaded.
    let audit = format!("--env=LD_AUDIT={}", fixture("fork_audit.so").display());
    fork_leaves_no_process(&[&audit]);
}

fn fork_leaves_no_process(extra: &[&str]) {
    let d = scratch();
    let pidfile = d.path().join("pid");
    let env = format!("--env=HARDENING_FORK={}", pidfile.display());
    let prog = fixture("hardening-x86_64-pie");
    // The forked child would inherit elfpack's stdout and stderr: files, not pipes, so
    // that the build's end is seen at once.
    let log = d.path().join("log");
    let mut child = elfpack_tests::spawn(
        Command::new(elfpack())
            .current_dir(d.path())
            .arg("build")
            .arg(&prog)
            .args(["-o", "out", &env])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("elfpack hung: {}", std::fs::read_to_string(&log).unwrap());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let o = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{o}");
    let pids = std::fs::read_to_string(&pidfile).unwrap();
    assert!(!pids.trim().is_empty());
    for p in pids.lines() {
        let pid: i32 = p.trim().parse().unwrap();
        assert!(
            wait_gone(pid, 2),
            "process {pid}, forked at capture, is still there after the build: {o}"
        );
    }
}

/// Whether a process whose command line contains `marker` exists (zombies aside).
fn processes_with(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmd.split(|&b| b == 0).any(|a| a == marker.as_bytes()) && !gone(pid) {
            out.push(pid);
        }
    }
    out
}

/// Starts `elfpack build` of the fixture into `dir/out` with the capture argument
/// `marker`, kills it with `sig` after `delay`, and waits for it.
fn build_and_kill(
    dir: &Path,
    program: &Path,
    marker: &str,
    delay: Duration,
    sig: nix::sys::signal::Signal,
) {
    let mut child = elfpack_tests::spawn(
        Command::new(elfpack())
            .current_dir(dir)
            .arg("build")
            .arg(program)
            .args(["-o", "out", "-q", "--", marker])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    std::thread::sleep(delay);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("elfpack did not end within 30 s after {sig}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Delays spread over a build's life (spawn, the two captures, writing), from a fixed
/// sequence so that a failure can be replayed. With `early`, most kills land where
/// elfpack starts the tracees (the first few milliseconds), the rest anywhere.
fn kill_delays(
    n: usize,
    early: bool,
    span_us: u64,
) -> impl Iterator<Item = (usize, Duration, nix::sys::signal::Signal)> {
    use nix::sys::signal::Signal;
    (0..n).map(move |i| {
        let us = if !early || i % 4 == 3 {
            (i as u64 * 7919 + 1237) % span_us
        } else {
            (i as u64 * 7919 + 1237) % 5_000
        };
        let sig = if i % 2 == 0 {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        (i, Duration::from_micros(us), sig)
    })
}

#[test]
fn a_killed_build_leaves_no_process() {
    let d = scratch();
    let prog = fixture("hardening-x86_64-pie");
    for (i, delay, sig) in kill_delays(50, true, 40_000) {
        let marker = format!("hardening-kill-{}-{i}", std::process::id());
        build_and_kill(d.path(), &prog, &marker, delay, sig);
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut left = processes_with(&marker);
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            left = processes_with(&marker);
        }
        if !left.is_empty() {
            let mut report = String::new();
            for &p in &left {
                report += &std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            panic!("kill {i} ({sig} after {delay:?}) left processes {left:?}:\n{report}");
        }
    }
}

#[test]
fn a_killed_build_leaves_no_temporary_file() {
    let d = scratch();
    // python3: its output is large, so that many kills land while it is written.
    let prog = PathBuf::from("/usr/bin/python3");
    for (i, delay, sig) in kill_delays(50, false, 80_000) {
        let marker = format!("hardening-tmp-{}-{i}", std::process::id());
        build_and_kill(d.path(), &prog, &marker, delay, sig);
        let left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "out")
            .collect();
        assert!(
            left.is_empty(),
            "kill {i} ({sig} after {delay:?}) left {left:?}"
        );
        let _ = std::fs::remove_file(d.path().join("out"));
    }
}

// ---------------------------------------------------------------------------------------
// 10, 11, 14, 15. Input and output handling, errors.

/// Asserts a one-line `elfpack: ...` error with exit status `code` and no panic.
fn one_line_error(o: &Out, code: i32, needle: &str) {
    assert_eq!(o.code(), Some(code), "{o}");
    assert_eq!(o.stderr.lines().count(), 1, "{o}");
    assert!(o.stderr.starts_with("elfpack: "), "{o}");
    assert!(o.stderr.contains(needle), "{o}");
    assert!(!o.stderr.contains("panicked"), "{o}");
    assert!(!o.stderr.contains("(os error"), "{o}");
}

#[test]
fn bad_timeouts_are_usage_errors() {
    let d = scratch();
    let fx = fixture("hardening-x86_64-pie");
    for t in ["1e20", "NaN", "inf", "-1", "0", "x"] {
        let o = build_in(
            d.path(),
            fx.to_str().unwrap(),
            "out",
            &[&format!("--timeout={t}")],
        );
        one_line_error(&o, 2, "--timeout");
        assert!(!d.path().join("out").exists());
    }
    let o = build_in(d.path(), fx.to_str().unwrap(), "out", &["--env", "FOO"]);
    one_line_error(&o, 2, "KEY=VALUE");
}

/// A packed copy of the fixture, for `inspect`.
fn packed_fixture(d: &Path) -> PathBuf {
    let p = d.join("packed");
    pack(&fixture("hardening-x86_64-pie"), &p);
    p
}

#[test]
fn full_output_is_one_error_line() {
    let d = scratch();
    let p = packed_fixture(d.path());
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let o = run_with_stdout(
        Command::new(elfpack()).arg("inspect").arg(&p),
        30,
        full().into(),
    );
    one_line_error(&o, 1, "No space left on device");
    for args in [
        &["completions", "bash"][..],
        &["man"],
        &["inspect", "--json"],
    ] {
        let mut cmd = Command::new(elfpack());
        cmd.args(args);
        if args[0] == "inspect" {
            cmd.arg(&p);
        }
        let o = run_with_stdout(&mut cmd, 30, full().into());
        one_line_error(&o, 1, "No space left on device");
    }
}

/// Runs `cmd` with its stdout a pipe whose reading end is already closed.
fn run_into_closed_pipe(cmd: &mut Command) -> Out {
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let mut child = elfpack_tests::spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .stderr(Stdio::piped()),
    );
    let mut err = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "{cmd:?} hung");
        std::thread::sleep(Duration::from_millis(5));
    };
    Out {
        status,
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    }
}

#[test]
fn a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let d = scratch();
    let p = packed_fixture(d.path());
    let cases: Vec<Vec<&OsStr>> = vec![
        vec![OsStr::new("inspect"), p.as_os_str()],
        vec![OsStr::new("inspect"), OsStr::new("--json"), p.as_os_str()],
        vec![OsStr::new("completions"), OsStr::new("bash")],
    ];
    for args in cases {
        let o = run_into_closed_pipe(Command::new(elfpack()).args(&args));
        assert_eq!(o.stderr, "", "{args:?}: {o}");
        // As `cat` into a closed pipe: SIGPIPE.
        assert_eq!(o.status.signal(), Some(13), "{args:?}: {o}");
    }
}

#[test]
fn inspect_refuses_what_is_not_a_regular_file() {
    let d = scratch();
    let fifo = d.path().join("fifo");
    let st = run_for(Command::new("mkfifo").arg(&fifo), 10);
    assert!(st.status.success(), "{st}");
    for f in [
        fifo.as_path(),
        Path::new("/dev/zero"),
        Path::new("/dev/null"),
    ] {
        let o = run_for(Command::new(elfpack()).arg("inspect").arg(f), 10);
        one_line_error(&o, 3, "not a regular file");
    }
    let o = run_for(Command::new(elfpack()).arg("inspect").arg(d.path()), 10);
    one_line_error(&o, 3, "is a directory");
}

#[test]
fn inspect_escapes_control_characters() {
    let d = scratch();
    // A program whose own name holds a terminal escape sequence and a newline.
    let name = "prog\x1b]0;owned\x07\x1b[2J\nx";
    let prog = d.path().join(name);
    copy_mode(&fixture("hardening-x86_64-pie"), &prog, 0o755);
    let out = d.path().join("packed");
    pack(&prog, &out);
    let o = run_for(Command::new(elfpack()).arg("inspect").arg(&out), 30);
    assert!(o.status.success(), "{o}");
    assert!(
        !o.stdout.bytes().any(|b| b == 0x1b || b == 0x07),
        "raw control characters in: {:?}",
        o.stdout
    );
    assert!(
        o.stdout.contains("prog\\x1b]0;owned\\x07\\x1b[2J\\nx"),
        "{o}"
    );
    let j = run_for(
        Command::new(elfpack())
            .args(["inspect", "--json"])
            .arg(&out),
        30,
    );
    assert!(!j.stdout.bytes().any(|b| b < 0x20 && b != b'\n'), "{j}");
}

#[test]
fn output_mode_follows_the_umask() {
    use std::os::unix::process::CommandExt;
    let d = scratch();
    for (mask, want) in [(0o077, 0o700), (0o002, 0o775), (0o022, 0o755)] {
        let out = d.path().join(format!("out-{mask:o}"));
        let mut cmd = Command::new(elfpack());
        cmd.arg("build")
            .arg(fixture("hardening-x86_64-pie"))
            .arg("-o")
            .arg(&out)
            .arg("-q");
        // SAFETY: umask(2) is async-signal-safe and only changes the child's mask.
        unsafe {
            cmd.pre_exec(move || {
                nix::libc::umask(mask);
                Ok(())
            });
        }
        let o = run_for(&mut cmd, 60);
        assert!(o.status.success(), "{o}");
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, want, "umask {mask:o}");
    }
}

#[test]
fn a_write_error_names_the_output() {
    use std::os::unix::process::CommandExt;
    let d = scratch();
    let out = d.path().join("out");
    let mut cmd = Command::new(elfpack());
    cmd.arg("build")
        .arg(fixture("hardening-x86_64-pie"))
        .arg("-o")
        .arg(&out);
    // SAFETY: setrlimit(2) and signal(2) are async-signal-safe; a file-size limit makes
    // writes fail with EFBIG (SIGXFSZ ignored, so the write returns the error).
    unsafe {
        cmd.pre_exec(|| {
            let lim = nix::libc::rlimit {
                rlim_cur: 100_000,
                rlim_max: 100_000,
            };
            nix::libc::setrlimit(nix::libc::RLIMIT_FSIZE, &lim);
            nix::libc::signal(nix::libc::SIGXFSZ, nix::libc::SIG_IGN);
            Ok(())
        });
    }
    let o = run_for(&mut cmd, 60);
    one_line_error(&o, 1, &out.display().to_string());
    assert!(o.stderr.contains("File too large"), "{o}");
    let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_output_that_is_not_a_regular_file_is_refused() {
    let d = scratch();
    let fifo = d.path().join("fifo");
    let st = run_for(Command::new("mkfifo").arg(&fifo), 10);
    assert!(st.status.success(), "{st}");
    let o = build_in(
        d.path(),
        fixture("hardening-x86_64-pie").to_str().unwrap(),
        "fifo",
        &[],
    );
    one_line_error(&o, 3, "not a regular file");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn ld_so_messages_appear_once() {
    // A library that is missing at capture: ld.so says so, once.
    let d = scratch();
    let prog = d.path().join("prog");
    copy_mode(&fixture("needlib-x86_64"), &prog, 0o755);
    let o = build_in(d.path(), "./prog", "out", &[]);
    assert_eq!(o.code(), Some(4), "{o}");
    let n = o.stderr.matches("libneeded.so").count();
    assert_eq!(n, 1, "{o}");
}

// ---------------------------------------------------------------------------------------
// 4. --include runs no program from PATH.

#[test]
fn include_runs_no_ldconfig_from_path() {
    let d = scratch();
    let bin = d.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let mark = d.path().join("ldconfig-ran");
    std::fs::write(
        bin.join("ldconfig"),
        format!("#!/bin/sh\ntouch '{}'\n", mark.display()),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("ldconfig"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let o = run_for(
        Command::new(elfpack())
            .current_dir(d.path())
            .env("PATH", path)
            .arg("build")
            .arg(fixture("hardening-x86_64-pie"))
            .args(["-o", "out", "-q", "--include", "libnss_files.so.2"]),
        60,
    );
    assert!(o.status.success(), "{o}");
    assert!(!mark.exists(), "a program named ldconfig ran from PATH");
    let i = run_for(
        Command::new(elfpack())
            .arg("inspect")
            .arg(d.path().join("out")),
        30,
    );
    assert!(i.stdout.contains("libnss_files.so.2"), "{i}");
}

// ---------------------------------------------------------------------------------------
// 14. The stub's failure messages carry their values.

/// The descriptor format of the packed files, as `inspect --json` reports it.
fn elfpack_stub_format() -> u32 {
    let d = scratch();
    let p = packed_fixture(d.path());
    let o = run_for(
        Command::new(elfpack()).arg("inspect").arg("--json").arg(&p),
        30,
    );
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("inspect --json");
    v["format_version"].as_u64().expect("format_version") as u32
}

#[test]
fn stub_failures_name_their_values() {
    let d = scratch();
    let p = packed_fixture(d.path());
    let mut bytes = std::fs::read(&p).unwrap();
    // The descriptor: its magic, then the format version.
    let version = elfpack_stub_format();
    let mut magic = b"ELFPACK\0".to_vec();
    magic.extend_from_slice(&version.to_le_bytes());
    let at = bytes
        .windows(12)
        .position(|w| w == magic.as_slice())
        .expect("no descriptor");
    bytes[at + 8] = 99;
    let bad = d.path().join("bad");
    std::fs::write(&bad, &bytes).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run_for(&mut Command::new(&bad), 10);
    assert_eq!(o.code(), Some(127), "{o}");
    assert_eq!(
        o.stderr,
        format!(
            "elfpack: packed file is corrupt (bad descriptor): format 99, this stub reads format {version}\n"
        )
    );
}

// ---------------------------------------------------------------------------------------
// 12. Paths are bytes.

/// Runs a packed file and returns its stdout; fails the test unless it exits 0.
fn run_packed(p: &Path) -> String {
    let o = run_for(&mut Command::new(p), 30);
    assert!(o.status.success(), "{}: {o}", p.display());
    o.stdout
}

#[test]
fn a_program_path_that_is_not_utf8_packs() {
    use std::os::unix::ffi::OsStrExt;
    let d = scratch();
    let prog = d.path().join(OsStr::from_bytes(b"prog-\xff\xfe"));
    copy_mode(&fixture("hardening-x86_64-pie"), &prog, 0o755);
    let out = d.path().join(OsStr::from_bytes(b"out-\xff"));
    let o = run_for(
        Command::new(elfpack())
            .arg("build")
            .arg(&prog)
            .arg("-o")
            .arg(&out)
            .arg("-q"),
        60,
    );
    assert!(o.status.success(), "{o}");
    assert_eq!(run_packed(&out), "hello 42\n");
    // Found in PATH by a name that is not UTF-8, too.
    let o = run_for(
        Command::new(elfpack())
            .env("PATH", d.path())
            .arg("build")
            .arg(OsStr::from_bytes(b"prog-\xff\xfe"))
            .arg("-o")
            .arg(&out)
            .arg("-q"),
        60,
    );
    assert!(o.status.success(), "{o}");
    assert_eq!(run_packed(&out), "hello 42\n");
}

#[test]
fn a_program_whose_name_ends_in_a_space_packs_that_file() {
    let d = scratch();
    // "prog " is the fixture; "prog" is another program that must not be packed in its
    // place.
    copy_mode(
        &fixture("hardening-x86_64-pie"),
        &d.path().join("prog "),
        0o755,
    );
    copy_mode(
        &fixture("fixture-x86_64-pie"),
        &d.path().join("prog"),
        0o755,
    );
    let o = build_in(d.path(), "./prog ", "out", &["-q"]);
    assert!(o.status.success(), "{o}");
    assert_eq!(run_packed(&d.path().join("out")), "hello 42\n");
    let i = run_for(
        Command::new(elfpack())
            .args(["inspect", "--json"])
            .arg(d.path().join("out")),
        30,
    );
    assert!(i.stdout.contains("prog \""), "{i}");
}

#[test]
fn a_library_path_with_a_newline_keeps_its_build_id() {
    let d = scratch();
    let dir = d.path().join("lib\ndir");
    std::fs::create_dir(&dir).unwrap();
    let lib = dir.join("libm.so.6");
    std::fs::copy("/lib/x86_64-linux-gnu/libm.so.6", &lib).unwrap();
    let o = run_for(
        Command::new(elfpack())
            .arg("build")
            .arg(fixture("hardening-x86_64-pie"))
            .arg("-o")
            .arg(d.path().join("out"))
            .arg("-q")
            .arg("--include")
            .arg(&lib),
        60,
    );
    assert!(o.status.success(), "{o}");
    let i = run_for(
        Command::new(elfpack())
            .args(["inspect", "--json"])
            .arg(d.path().join("out")),
        30,
    );
    let v: serde_json::Value = serde_json::from_str(&i.stdout).unwrap();
    let libs = v["libraries"].as_array().unwrap();
    let ours = libs
        .iter()
        .find(|l| l["path"].as_str() == Some(lib.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} not among {libs:?}", lib.display()));
    assert!(ours["build_id"].is_string(), "{ours}");
    assert_eq!(ours["soname"].as_str(), Some("libm.so.6"), "{ours}");
}

// ---------------------------------------------------------------------------------------
// 13. Reproducible whatever the capture's environment, directory and arguments.

#[test]
fn builds_do_not_depend_on_the_capture_environment() {
    for arch in ["x86_64", "i386"] {
        let d = scratch();
        let fx = fixture(&format!("hardening-{arch}-pie"));
        let other_dir = d.path().join("elsewhere");
        std::fs::create_dir(&other_dir).unwrap();
        let build = |dir: &Path, out: &str, env: &[(&str, &str)], args: &[&str]| {
            let mut cmd = Command::new(elfpack());
            cmd.current_dir(dir)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .envs(env.iter().copied())
                .arg("build")
                .arg(&fx)
                .arg("-o")
                .arg(d.path().join(out))
                .arg("-q")
                .arg("--")
                .args(args);
            let o = run_for(&mut cmd, 60);
            assert!(o.status.success(), "{o}");
            std::fs::read(d.path().join(out)).unwrap()
        };
        let a = build(d.path(), "a", &[("HOME", "/root"), ("TMPDIR", "/tmp")], &[]);
        let b = build(
            &other_dir,
            "b",
            &[
                ("TMPDIR", "/var/tmp/a/much/longer/directory"),
                ("UNRELATED", "x"),
                ("HOME", "/home/someone-else"),
            ],
            &["one", "two", "three"],
        );
        let differ: Vec<usize> = a
            .iter()
            .zip(&b)
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .map(|(i, _)| i)
            .take(10)
            .collect();
        assert!(
            a.len() == b.len() && differ.is_empty(),
            "{arch}: builds differ (sizes {} and {}) at file offsets {differ:x?}",
            a.len(),
            b.len()
        );
    }
}

#[test]
fn an_image_without_room_for_the_stub_cannot_be_packed() {
    // i386 puts the stub below the image; a program linked at 0x10000 leaves no room.
    let d = scratch();
    let o = build_in(
        d.path(),
        fixture("hardening-low-i386").to_str().unwrap(),
        "out",
        &[],
    );
    one_line_error(&o, 3, "no room below the image for the stub");
    assert!(!d.path().join("out").exists());
}

// ---------------------------------------------------------------------------------------
// 16. The output is lint-clean.

#[test]
fn output_is_elflint_and_readelf_clean() {
    let elflint = require("eu-elflint");
    let readelf = require("readelf");
    let d = scratch();
    let inputs: Vec<(PathBuf, &[&str])> = vec![
        (fixture("hardening-x86_64-pie"), &[]),
        (fixture("hardening-x86_64-nopie"), &["--strip"]),
        (fixture("hardening-i386-pie"), &[]),
        (fixture("hardening-i386-nopie"), &[]),
        (fixture("fixture-x86_64-pie"), &[]),
        (fixture("fixture-i386-nopie"), &[]),
        (fixture("cxx-x86_64-pie"), &[]),
        (PathBuf::from("/bin/ls"), &[]),
        (PathBuf::from("/usr/bin/sort"), &[]),
        (PathBuf::from("/bin/bash"), &["--strip"]),
    ];
    for (i, (input, extra)) in inputs.iter().enumerate() {
        let out = d.path().join(format!("out{i}"));
        let o = run_for(
            Command::new(elfpack())
                .arg("build")
                .arg(input)
                .arg("-o")
                .arg(&out)
                .arg("-q")
                .args(*extra),
            60,
        );
        assert!(o.status.success(), "{}: {o}", input.display());
        let lint = run_for(Command::new(&elflint).arg("--gnu-ld").arg(&out), 60);
        assert!(
            lint.status.success() && lint.stdout == "No errors\n" && lint.stderr.is_empty(),
            "eu-elflint on the packed {}: {lint}",
            input.display()
        );
        let re = run_for(Command::new(&readelf).args(["-a", "-W"]).arg(&out), 60);
        assert!(
            re.status.success() && re.stderr.is_empty(),
            "readelf -a on the packed {}: {}",
            input.display(),
            re.stderr
        );
        // Still runs.
        if input.starts_with(Path::new(env!("FIXTURES_DIR"))) && i < 4 {
            assert_eq!(run_packed(&out), "hello 42\n");
        }
    }
}

#[test]
fn a_program_the_kernel_refuses_at_exec_is_not_run_by_a_shell() {
    // e_phentsize one more than the kernel's struct size: every check of elfpack passes,
    // execve fails with ENOEXEC, and execvp would have run /bin/sh with it.
    let d = scratch();
    let mut bytes = std::fs::read(fixture("hardening-x86_64-pie")).unwrap();
    bytes[54] = 57;
    let p = d.path().join("prog");
    std::fs::write(&p, &bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = build_in(d.path(), "./prog", "out", &[]);
    one_line_error(&o, 3, "the kernel refuses to execute it");
    assert!(!d.path().join("out").exists(), "{o}");
}

#[test]
fn a_loader_with_another_unsecure_list_is_warned_about() {
    // The stub applies glibc 2.36's list; a loader whose own list differs gets a warning.
    let d = scratch();
    let mut ld = std::fs::read("/lib64/ld-linux-x86-64.so.2").unwrap();
    let at = ld
        .windows(14)
        .position(|w| w == b"TMPDIR\0TZDIR\0\0")
        .expect("glibc 2.36's list in ld.so");
    ld[at + 5] = b'S';
    std::fs::write(d.path().join("x"), &ld).unwrap();
    std::fs::set_permissions(d.path().join("x"), std::fs::Permissions::from_mode(0o755)).unwrap();
    with_interp(
        &fixture("hardening-x86_64-pie"),
        &d.path().join("prog"),
        Some(b"./x"),
        None,
    );
    let o = build_in(d.path(), "./prog", "out", &[]);
    assert!(o.status.success(), "{o}");
    assert!(
        o.stderr.contains("warning: ./x is not glibc 2.36's ld.so"),
        "{o}"
    );
    assert_eq!(run_packed(&d.path().join("out")), "hello 42\n");
    // The real loader: no warning.
    let o = build_in(
        d.path(),
        fixture("hardening-x86_64-pie").to_str().unwrap(),
        "out2",
        &[],
    );
    assert!(!o.stderr.contains("warning"), "{o}");
}
