//! Harness for elfpack's end-to-end tests: the fixtures, packing them (once per input and
//! options), and running packed files in each run mode next to the unpacked original.
//!
//! A missing tool (qemu-user, setarch, setpriv, chroot, taskset) is a test failure, never a
//! skip: `tests/run` installs them.
//!
//! Every child process a test starts runs under a deadline ([`child_timeout`]): it is
//! started in a process group of its own, and when the deadline passes the whole group is
//! killed and the test fails with what the child had printed. Tests start children only
//! through [`Timed`], [`run_cmd`] and the other helpers here (`tests/e2e/harness.rs` checks
//! the sources for that).
pub mod bench;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Duration;

/// The architectures, as elfpack knows them.
pub use elfpack::Arch;

/// What the tests need to know of an architecture besides what elfpack knows: the name
/// of its fixtures (`fixture-x86_64-pie`), which is also its `setarch` and `uname -m` name,
/// and its qemu-user binary.
pub trait ArchTest {
    fn tag(self) -> &'static str;
    fn qemu(self) -> &'static str;
    fn setarch(self) -> &'static str;
}

impl ArchTest for Arch {
    fn tag(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::I386 => "i386",
        }
    }
    fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-x86_64",
            Arch::I386 => "qemu-i386",
        }
    }
    fn setarch(self) -> &'static str {
        self.tag()
    }
}

/// How a packed file is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Native,
    /// `setarch -R`: no address-space randomisation.
    NoAslr,
    /// As uid/gid 65534 (the suite runs as root).
    Nobody,
    /// Chrooted into an empty directory holding only the packed file.
    Chroot,
    /// Under qemu-user.
    Qemu,
}

pub const ALL_MODES: [Mode; 5] = [
    Mode::Native,
    Mode::NoAslr,
    Mode::Nobody,
    Mode::Chroot,
    Mode::Qemu,
];

/// The elfpack binary under test: `ELFPACK_BIN`, else the one built next to this test.
pub fn elfpack() -> PathBuf {
    if let Some(p) = std::env::var_os("ELFPACK_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/elfpack
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let cand = profile_dir.join("elfpack");
    assert!(
        cand.exists(),
        "elfpack binary not found at {} (build it first: cargo build -p elfpack, or set ELFPACK_BIN)",
        cand.display()
    );
    cand
}

pub fn fixture(name: &str) -> PathBuf {
    let p = Path::new(env!("FIXTURES_DIR")).join(name);
    assert!(p.exists(), "fixture {} missing", p.display());
    p
}

/// Where tests/setup caches downloads outside the clone (kernels, busybox, Debian roots):
/// `$XDG_CACHE_HOME/elfpack-tests`, else `$HOME/.cache/elfpack-tests`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    base.join("elfpack-tests")
}

/// A scratch directory every user can enter (tests also run packed files as uid 65534).
pub fn scratch() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("elfpack-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// The full path of `tool`; fails the test if it is not installed.
pub fn require(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = std::ffi::OsString::from("/usr/sbin:/sbin:/usr/bin:/bin");
    std::env::split_paths(&path)
        .chain(std::env::split_paths(&extra))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("required tool `{tool}` is not installed (tests/run installs it)")
        })
}

/// How long any child process of a test may run: `ELFPACK_TEST_TIMEOUT` seconds, default
/// 120 (the slowest case, 300 MB of mallocs under qemu-user, takes a few seconds).
pub fn child_timeout() -> Duration {
    let secs = std::env::var("ELFPACK_TEST_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// Reads a pipe to its end on a thread of its own; the result arrives on the receiver.
fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Waits for `child` (started by [`spawn`] in a process group of its own) and collects its
/// piped stdout and stderr. Past [`child_timeout`], kills its whole process group and
/// panics with `what` and the output so far: a hung child is a failed test, never a hung
/// suite.
pub fn wait_output(child: Child, what: &str) -> Output {
    wait_output_within(child, what, child_timeout())
}

/// [`wait_output`] with an explicit deadline.
pub fn wait_output_within(mut child: Child, what: &str, limit: Duration) -> Output {
    let pid = child.id() as i32;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(limit) {
        Ok(st) => st.expect("wait for a child process"),
        Err(_) => {
            // The group is the child's own (`process_group(0)` in `spawn`).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = rx.recv_timeout(Duration::from_secs(10));
            let grace = Duration::from_secs(2);
            let o = out.recv_timeout(grace).unwrap_or_default();
            let e = err.recv_timeout(grace).unwrap_or_default();
            panic!(
                "{what}: still running after {} s, killed\nstdout: {}\nstderr: {}",
                limit.as_secs(),
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            );
        }
    };
    // Output still open after the child exited belongs to a descendant that outlived it.
    let grace = Duration::from_secs(10);
    let stdout = out.recv_timeout(grace).unwrap_or_default();
    let stderr = err.recv_timeout(grace).unwrap_or_default();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// `Command::output` and `Command::status` under the deadline of [`wait_output`].
pub trait Timed {
    /// Runs with stdin closed and stdout/stderr captured.
    fn output_t(&mut self) -> Output;
    /// Runs with stdin closed and stdout/stderr captured; returns the exit status.
    fn status_t(&mut self) -> ExitStatus {
        self.output_t().status
    }
}

impl Timed for Command {
    fn output_t(&mut self) -> Output {
        let what = format!("{self:?}");
        self.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        wait_output(spawn(self), &what)
    }
}

/// Runs `elfpack build INPUT -o OUTPUT EXTRA...`; panics with its stderr on failure.
pub fn pack_to(input: &Path, output: &Path, extra: &[&str]) {
    let out = Command::new(elfpack())
        .arg("build")
        .arg(input)
        .arg("-o")
        .arg(output)
        .arg("-q")
        .args(extra)
        .output_t();
    assert!(
        out.status.success(),
        "elfpack build {} {:?} failed: {}",
        input.display(),
        extra,
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Packed {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

static PACKED: OnceLock<Mutex<HashMap<String, &'static Packed>>> = OnceLock::new();

/// Packs `input` with `extra` options once per test process; returns the packed file.
pub fn packed(input: &Path, extra: &[&str]) -> PathBuf {
    let key = format!("{}|{}", input.display(), extra.join(" "));
    let map = PACKED.get_or_init(Default::default);
    if let Some(p) = map.lock().unwrap().get(&key) {
        return p.path.clone();
    }
    let dir = scratch();
    let path = dir.path().join("packed");
    pack_to(input, &path, extra);
    let p: &'static Packed = Box::leak(Box::new(Packed {
        _dir: dir,
        path: path.clone(),
    }));
    map.lock().unwrap().insert(key, p);
    path
}

/// The fixed environment every compared run gets.
pub fn test_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LC_ALL", "C"),
        ("ELFPACK_TEST_VAR", "value with spaces"),
        ("HOME", "/nonexistent"),
    ]
}

/// The result of one run.
#[derive(Debug, PartialEq, Eq)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            code: o.status.code(),
        }
    }
}

/// Spawns `cmd` in a process group of its own (so that [`wait_output`] can end it and
/// everything it started), retrying while the file is "busy": a file just written by this
/// process stays open for writing in children that other test threads forked at that
/// moment, until they exec (the classic ETXTBSY race of multi-threaded test runners).
pub fn spawn(cmd: &mut Command) -> std::process::Child {
    cmd.process_group(0);
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Ok(c) => return c,
            Err(e) if e.raw_os_error() == Some(26) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot run {cmd:?}: {e}"),
        }
    }
}

/// Runs `cmd` with `stdin` fed from another thread (so a large input cannot deadlock
/// against a full stdout pipe); returns its output.
fn communicate(cmd: Command, stdin: &[u8], stderr: Stdio) -> Output {
    communicate_within(cmd, stdin, stderr, child_timeout())
}

/// [`communicate`] with an explicit deadline.
fn communicate_within(mut cmd: Command, stdin: &[u8], stderr: Stdio, limit: Duration) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let what = format!("{cmd:?}");
    let mut child = spawn(&mut cmd);
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // Not joined: a child that never reads its input must not hang the test.
    std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    wait_output_within(child, &what, limit)
}

fn finish(cmd: Command, stdin: &[u8]) -> Run {
    Run::from(communicate(cmd, stdin, Stdio::piped()))
}

/// Where a packed file is placed to run in `mode`, and the argv[0] it then sees.
pub struct Placed {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    mode: Mode,
    arch: Arch,
}

pub const PLACED_NAME: &str = "prog";

impl Placed {
    pub fn new(packed: &Path, mode: Mode, arch: Arch) -> Placed {
        let d = scratch();
        let dir = d.path().to_path_buf();
        std::fs::copy(packed, dir.join(PLACED_NAME)).unwrap();
        std::fs::set_permissions(
            dir.join(PLACED_NAME),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        match mode {
            Mode::NoAslr => drop(require("setarch")),
            Mode::Nobody => drop(require("setpriv")),
            Mode::Chroot => drop(require("chroot")),
            Mode::Qemu => drop(require(arch.qemu())),
            Mode::Native => {}
        }
        Placed {
            _dir: d,
            dir,
            mode,
            arch,
        }
    }

    /// How the placed file is run.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The directory that holds the placed file (the root of a [`Mode::Chroot`] run).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// argv[0] as the packed program sees it.
    pub fn argv0(&self) -> &'static str {
        match self.mode {
            Mode::Chroot => "/prog",
            _ => "./prog",
        }
    }

    /// The path of the placed file as seen from inside its run (for exec'ing itself).
    pub fn self_path(&self) -> String {
        match self.mode {
            Mode::Chroot => "/prog".into(),
            _ => self.dir.join(PLACED_NAME).display().to_string(),
        }
    }

    /// The command that runs the placed program with `args`, optionally under `taskset -c`.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S], cpu: Option<u32>) -> Command {
        let mut argv: Vec<String> = Vec::new();
        let tool = |t: &str| require(t).display().to_string();
        if let Some(c) = cpu {
            argv.extend([tool("taskset"), "-c".into(), c.to_string()]);
        }
        match self.mode {
            Mode::Native => {}
            Mode::NoAslr => argv.extend([tool("setarch"), self.arch.setarch().into(), "-R".into()]),
            Mode::Nobody => argv.extend([tool("setpriv")].into_iter().chain(
                ["--reuid", "65534", "--regid", "65534", "--clear-groups"].map(String::from),
            )),
            Mode::Chroot => argv.extend([tool("chroot"), self.dir.display().to_string()]),
            Mode::Qemu => argv.extend([tool(self.arch.qemu()), "-0".into(), self.argv0().into()]),
        }
        // Native and qemu runs name the file by absolute path (so a test may change the
        // working directory) and pass argv[0] explicitly; the other wrappers exec the
        // relative path from the placed directory.
        let abs = self.dir.join(PLACED_NAME).display().to_string();
        match self.mode {
            Mode::Native | Mode::Qemu => argv.push(abs),
            _ => argv.push(self.argv0().into()),
        }
        let mut cmd = Command::new(&argv[0]);
        if argv.len() == 1 {
            cmd.arg0(self.argv0());
        }
        cmd.args(&argv[1..])
            .args(args)
            .current_dir(&self.dir)
            .env_clear()
            .envs(test_env());
        cmd
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S], stdin: &[u8], cpu: Option<u32>) -> Run {
        finish(self.command(args, cpu), stdin)
    }
}

/// Runs the unpacked original natively with the given argv[0].
pub fn run_original<S: AsRef<OsStr>>(
    prog: &Path,
    argv0: &str,
    args: &[S],
    stdin: &[u8],
    cpu: Option<u32>,
) -> Run {
    let mut cmd = if let Some(c) = cpu {
        let mut t = Command::new(require("taskset"));
        t.arg("-c").arg(c.to_string()).arg(prog);
        // taskset execs prog; argv[0] becomes the path, so compare runs that print argv[0]
        // without a CPU pin.
        t
    } else {
        let mut c = Command::new(prog);
        c.arg0(argv0);
        c
    };
    cmd.args(args).env_clear().envs(test_env());
    finish(cmd, stdin)
}

/// Asserts that two runs printed the same on stdout and stderr and exited the same.
pub fn assert_same(what: &str, packed: &Run, original: &Run) {
    assert_eq!(
        (packed.code, &packed.stdout, &packed.stderr),
        (original.code, &original.stdout, &original.stderr),
        "{what}: packed run differs from the original (exit status, stdout, stderr)"
    );
}

/// As [`assert_same`], for programs whose stderr is not deterministic (it names the
/// program's own path, or timings): exit status and stdout only.
pub fn assert_same_stdout(what: &str, packed: &Run, original: &Run) {
    assert_eq!(
        (packed.code, &packed.stdout),
        (original.code, &original.stdout),
        "{what}: packed run differs from the original\npacked stderr: {}\noriginal stderr: {}",
        packed.stderr,
        original.stderr
    );
}

/// The run with qemu's own warnings about CPU features its TCG lacks (asked for by a
/// `-cpu` model) taken out of stderr: they are the emulator's lines, not the program's.
pub fn without_qemu_warnings(mut r: Run) -> Run {
    r.stderr = r
        .stderr
        .lines()
        .filter(|l| !(l.starts_with("qemu-") && l.contains(": warning: TCG doesn't support")))
        .map(|l| format!("{l}\n"))
        .collect();
    r
}

/// Runs a prepared command with `stdin`, under a deadline of its own (a qemu-system boot).
pub fn run_cmd_within(cmd: Command, stdin: &[u8], limit: Duration) -> Run {
    Run::from(output_within(cmd, stdin, limit))
}

/// [`run_cmd_within`], returning the raw output (for binary stdout).
pub fn output_within(cmd: Command, stdin: &[u8], limit: Duration) -> Output {
    communicate_within(cmd, stdin, Stdio::piped(), limit)
}

/// Runs a prepared command with `stdin`.
pub fn run_cmd(cmd: Command, stdin: &[u8]) -> Run {
    finish(cmd, stdin)
}

/// Runs a prepared command with `stdin`; returns its raw stdout, asserting success.
pub fn run_cmd_raw(cmd: Command, stdin: &[u8]) -> Vec<u8> {
    let what = format!("{cmd:?}");
    let out = communicate(cmd, stdin, Stdio::inherit());
    assert!(out.status.success(), "{what} failed: {:?}", out.status);
    out.stdout
}

/// Runs an unpacked program by path with `stdin`; returns its raw stdout.
pub fn run_cmd_bytes(prog: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut cmd = Command::new(prog);
    cmd.args(args).env_clear().envs(test_env());
    run_cmd_raw(cmd, stdin)
}
