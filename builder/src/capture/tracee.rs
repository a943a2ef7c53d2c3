//! The traced child: spawning it stopped at its first instruction, waiting for it,
//! registers, breakpoints, and system calls injected into it. It is always killed and
//! reaped when dropped.
use crate::arch::ArchSpec;
use crate::error::{capture_err, Result};
use nix::sys::ptrace;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

pub type Regs = nix::libc::user_regs_struct;

pub struct Tracee {
    pub pid: Pid,
    alive: bool,
    /// Processes and threads the program started (traced automatically, never resumed).
    descendants: Vec<Pid>,
}

/// How the tracee stopped.
#[derive(Debug)]
pub enum Stop {
    /// A system-call stop (entry or exit: the caller keeps track).
    Syscall,
    /// A signal-delivery stop (SIGTRAP for breakpoints and single steps).
    Signal(Signal),
    /// The tracee is gone.
    Exited(i32),
    Killed(Signal),
}

/// What execve(2) gets, built before the fork: the child only makes system calls.
struct Exec {
    path: CString,
    /// The strings the pointer arrays point into (their heap buffers do not move with
    /// the struct).
    _strings: (Vec<CString>, Vec<CString>),
    argv_p: Vec<usize>,
    env_p: Vec<usize>,
}

impl Exec {
    fn new(program: &Path, argv: &[OsString], env: &[(OsString, OsString)]) -> Result<Exec> {
        let cstring = |b: Vec<u8>| {
            CString::new(b).map_err(|_| {
                capture_err!(
                    "cannot run {}: an argument or environment string holds a NUL byte",
                    program.display()
                )
            })
        };
        let argv = argv
            .iter()
            .map(|a| cstring(a.as_bytes().to_vec()))
            .collect::<Result<Vec<_>>>()?;
        let env = env
            .iter()
            .map(|(k, v)| cstring([k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Exec {
            path: cstring(program.as_os_str().as_bytes().to_vec())?,
            argv_p: pointers(&argv),
            env_p: pointers(&env),
            _strings: (argv, env),
        })
    }
}

/// The NULL-terminated pointer array of `v`.
fn pointers(v: &[CString]) -> Vec<usize> {
    v.iter()
        .map(|s| s.as_ptr() as usize)
        .chain(std::iter::once(0))
        .collect()
}

/// The first CPU the caller may use. The capture runs there: ld.so records CPUID
/// results, and leaf 1 holds the APIC ID of the CPU it ran on.
fn first_cpu() -> Option<usize> {
    nix::sched::sched_getaffinity(Pid::from_raw(0))
        .ok()
        .and_then(|set| (0..nix::sched::CpuSet::count()).find(|&c| set.is_set(c).unwrap_or(false)))
}

/// In the child, between fork and exec (system calls only, on memory allocated before the
/// fork): pins it to `cpu`, ties its life to the parent's, makes time-stamp reads fault,
/// asks to be traced, turns off address-space randomisation and executes `exec`.
fn child_setup(exec: &Exec, cpu: Option<usize>, parent: Pid) -> std::io::Result<()> {
    if let Some(c) = cpu {
        let mut one = nix::sched::CpuSet::new();
        let _ = one.set(c);
        let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), &one);
    }
    // Die with elfpack: a tracee must never outlive its tracer (prctl(2),
    // PR_SET_PDEATHSIG; kept across this execve, the program is not setuid).
    // A parent that died before the prctl is seen in getppid().
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
    if nix::unistd::getppid() != parent {
        return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
    }
    // rdtsc/rdtscp fault (SIGSEGV) from here on, across the execve, and the tracer answers
    // them (handover.rs, `Loader::on_time_stamp`): prctl(2) PR_SET_TSC, kept across execve
    // (linux `arch/x86/kernel/process.c`, `disable_TSC`).
    // SAFETY: prctl(PR_SET_TSC) takes integer arguments only and changes only this thread's
    // TSC flag.
    if unsafe { nix::libc::prctl(nix::libc::PR_SET_TSC, nix::libc::PR_TSC_SIGSEGV, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    ptrace::traceme().map_err(std::io::Error::from)?;
    let p = nix::sys::personality::get().map_err(std::io::Error::from)?;
    nix::sys::personality::set(p | nix::sys::personality::Persona::ADDR_NO_RANDOMIZE)
        .map_err(std::io::Error::from)?;
    // Exactly PROGRAM: execve, never execvp, whose ENOEXEC fallback runs
    // /bin/sh with the program as a script (glibc `posix/execvpe.c`).
    // SAFETY: execve(2) gets NUL-terminated strings and NULL-terminated pointer arrays
    // into `exec`, which outlives the call; on success it does not return.
    unsafe {
        nix::libc::execve(
            exec.path.as_ptr(),
            exec.argv_p.as_ptr() as *const *const nix::libc::c_char,
            exec.env_p.as_ptr() as *const *const nix::libc::c_char,
        );
    }
    Err(std::io::Error::last_os_error())
}

impl Tracee {
    /// Starts `program` with `argv` and `env`, without address-space randomisation, stopped
    /// at the first instruction after execve (ld.so's entry).
    pub fn spawn(
        program: &Path,
        argv: &[OsString],
        env: &[(OsString, OsString)],
        quiet: bool,
    ) -> Result<Tracee> {
        let exec = Exec::new(program, argv, env)?;
        let parent = nix::unistd::getpid();
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null());
        if quiet {
            cmd.stderr(Stdio::null());
        }
        let cpu = first_cpu();
        // SAFETY: between fork and exec the closure only makes system calls
        // (sched_setaffinity, prctl, getppid, ptrace(PTRACE_TRACEME), personality, execve),
        // all async-signal-safe (signal-safety(7)), on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || child_setup(&exec, cpu, parent));
        }
        let child = cmd.spawn().map_err(|e| match e.raw_os_error() {
            // The kernel refuses the file itself: it cannot be packed.
            Some(nix::libc::ENOEXEC) | Some(nix::libc::EACCES) => crate::error::unpackable!(
                "{}: the kernel refuses to execute it ({})",
                program.display(),
                crate::program::io_reason(&e).to_lowercase()
            ),
            _ => capture_err!(
                "cannot run {}: {}",
                program.display(),
                crate::program::io_reason(&e)
            ),
        })?;
        let mut t = Tracee {
            pid: Pid::from_raw(child.id() as i32),
            alive: true,
            descendants: Vec::new(),
        };
        t.attach(program)?;
        Ok(t)
    }

    /// Waits for the child's stop after its execve, traces what it starts, and checks
    /// that the process runs `program`.
    fn attach(&mut self, program: &Path) -> Result<()> {
        // After a successful execve a PTRACE_TRACEME child stops with SIGTRAP
        // (ptrace(2), "execve(2) under ptrace").
        match self.wait()? {
            Stop::Signal(Signal::SIGTRAP) => {}
            other => {
                return Err(capture_err!(
                    "unexpected first stop of the program: {other:?}"
                ))
            }
        }
        // Every process the program starts is traced too (so it stays stopped, and is
        // killed with the program), and all of them die if elfpack does.
        ptrace::setoptions(
            self.pid,
            ptrace::Options::PTRACE_O_TRACESYSGOOD
                | ptrace::Options::PTRACE_O_EXITKILL
                | ptrace::Options::PTRACE_O_TRACEFORK
                | ptrace::Options::PTRACE_O_TRACEVFORK
                | ptrace::Options::PTRACE_O_TRACECLONE,
        )
        .map_err(|e| capture_err!("ptrace(SETOPTIONS): {e}"))?;
        // The image must be PROGRAM's: the file the kernel executed is the one checked.
        let exe = std::fs::metadata(format!("/proc/{}/exe", self.pid));
        let want = std::fs::metadata(program);
        match (exe, want) {
            (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino() => Ok(()),
            _ => Err(capture_err!(
                "{}: the process started is not this program (it changed, or the kernel ran another file)",
                program.display()
            )),
        }
    }

    pub fn wait(&mut self) -> Result<Stop> {
        loop {
            let st = waitpid(self.pid, Some(WaitPidFlag::__WALL))
                .map_err(|e| capture_err!("waitpid: {e}"))?;
            return Ok(match st {
                WaitStatus::PtraceSyscall(_) => Stop::Syscall,
                WaitStatus::Stopped(_, sig) => Stop::Signal(sig),
                WaitStatus::Exited(_, code) => {
                    self.alive = false;
                    Stop::Exited(code)
                }
                WaitStatus::Signaled(_, sig, _) => {
                    self.alive = false;
                    Stop::Killed(sig)
                }
                WaitStatus::PtraceEvent(pid, _, ev)
                    if [
                        nix::libc::PTRACE_EVENT_FORK,
                        nix::libc::PTRACE_EVENT_VFORK,
                        nix::libc::PTRACE_EVENT_CLONE,
                    ]
                    .contains(&ev) =>
                {
                    // The new process is attached and stopped; it stays so until it is
                    // killed with the program. The program goes on to the next stop.
                    if let Ok(child) = ptrace::getevent(pid) {
                        self.descendants.push(Pid::from_raw(child as i32));
                    }
                    ptrace::syscall(pid, None).map_err(|e| capture_err!("ptrace(SYSCALL): {e}"))?;
                    continue;
                }
                _ => continue,
            });
        }
    }

    pub fn regs(&self) -> Result<Regs> {
        ptrace::getregs(self.pid).map_err(|e| capture_err!("ptrace(GETREGS): {e}"))
    }

    pub fn set_regs(&self, r: Regs) -> Result<()> {
        ptrace::setregs(self.pid, r).map_err(|e| capture_err!("ptrace(SETREGS): {e}"))
    }

    /// Resumes until the next system-call stop or signal, delivering `sig`.
    pub fn resume_syscall(&self, sig: Option<Signal>) -> Result<()> {
        ptrace::syscall(self.pid, sig).map_err(|e| capture_err!("ptrace(SYSCALL): {e}"))
    }

    /// Runs one system call in the tracee by pointing it at a system-call instruction at
    /// `insn` (`syscall` for 64-bit, `int $0x80` for 32-bit tracees) and single-stepping
    /// over it; every register is restored afterwards.
    pub fn inject_syscall(
        &mut self,
        spec: &ArchSpec,
        insn: u64,
        nr: u64,
        args: [u64; 6],
    ) -> Result<i64> {
        let saved = self.regs()?;
        let mut r = saved;
        r.rip = insn;
        r.rax = nr;
        r.orig_rax = u64::MAX;
        spec.set_args(&mut r, args);
        self.set_regs(r)?;
        ptrace::step(self.pid, None).map_err(|e| capture_err!("ptrace(SINGLESTEP): {e}"))?;
        match self.wait()? {
            Stop::Signal(Signal::SIGTRAP) => {}
            other => {
                return Err(capture_err!(
                    "injected system call {nr} stopped with {other:?}"
                ))
            }
        }
        let ret = spec.ret(self.regs()?.rax);
        self.set_regs(saved)?;
        Ok(ret)
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        let mut all = self.descendants.clone();
        if self.alive {
            all.insert(0, self.pid);
        }
        for &p in &all {
            let _ = signal::kill(p, Signal::SIGKILL);
        }
        for &p in &all {
            while let Ok(st) = waitpid(p, Some(WaitPidFlag::__WALL)) {
                if matches!(st, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                    break;
                }
            }
        }
    }
}
