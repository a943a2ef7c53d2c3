//! The traced child: spawning it stopped at its first instruction, waiting for it,
//! registers, breakpoints, and system calls injected into it. It is always killed and
//! reaped when dropped.
use crate::error::{capture_err, Result};
use nix::sys::ptrace;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

pub type Regs = nix::libc::user_regs_struct;

pub struct Tracee {
    pub pid: Pid,
    alive: bool,
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

impl Tracee {
    /// Starts `program` with `argv` and `env`, without address-space randomisation, stopped
    /// at the first instruction after execve (ld.so's entry).
    pub fn spawn(
        program: &Path,
        argv: &[OsString],
        env: &[(OsString, OsString)],
    ) -> Result<Tracee> {
        let mut cmd = Command::new(program);
        if let Some(a0) = argv.first() {
            cmd.arg0(a0);
        }
        cmd.args(argv.iter().skip(1))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null());
        // The capture runs on the first CPU the caller may use: ld.so records CPUID
        // results, and leaf 1 holds the APIC ID of the CPU it ran on.
        let cpu = nix::sched::sched_getaffinity(Pid::from_raw(0))
            .ok()
            .and_then(|set| {
                (0..nix::sched::CpuSet::count()).find(|&c| set.is_set(c).unwrap_or(false))
            });
        // SAFETY: between fork and exec the closure only makes system calls
        // (sched_setaffinity, ptrace(PTRACE_TRACEME), personality(2)), all async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(c) = cpu {
                    let mut one = nix::sched::CpuSet::new();
                    let _ = one.set(c);
                    let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), &one);
                }
                ptrace::traceme().map_err(std::io::Error::from)?;
                let p = nix::sys::personality::get().map_err(std::io::Error::from)?;
                nix::sys::personality::set(p | nix::sys::personality::Persona::ADDR_NO_RANDOMIZE)
                    .map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            capture_err!(
                "cannot run {}: {}",
                program.display(),
                crate::program::io_reason(&e)
            )
        })?;
        let mut t = Tracee {
            pid: Pid::from_raw(child.id() as i32),
            alive: true,
        };
        // After a successful execve a PTRACE_TRACEME child stops with SIGTRAP
        // (ptrace(2), "execve(2) under ptrace").
        match t.wait()? {
            Stop::Signal(Signal::SIGTRAP) => {}
            other => {
                return Err(capture_err!(
                    "unexpected first stop of the program: {other:?}"
                ))
            }
        }
        ptrace::setoptions(
            t.pid,
            ptrace::Options::PTRACE_O_TRACESYSGOOD | ptrace::Options::PTRACE_O_EXITKILL,
        )
        .map_err(|e| capture_err!("ptrace(SETOPTIONS): {e}"))?;
        Ok(t)
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
        is64: bool,
        insn: u64,
        nr: u64,
        args: [u64; 6],
    ) -> Result<i64> {
        let saved = self.regs()?;
        let mut r = saved;
        r.rip = insn;
        r.rax = nr;
        r.orig_rax = u64::MAX;
        if is64 {
            (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) =
                (args[0], args[1], args[2], args[3], args[4], args[5]);
        } else {
            (r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp) =
                (args[0], args[1], args[2], args[3], args[4], args[5]);
        }
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
        let rax = self.regs()?.rax;
        let ret = if is64 {
            rax as i64
        } else {
            i64::from(rax as u32 as i32)
        };
        self.set_regs(saved)?;
        Ok(ret)
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.alive {
            let _ = signal::kill(self.pid, Signal::SIGKILL);
            while let Ok(st) = waitpid(self.pid, Some(WaitPidFlag::__WALL)) {
                if matches!(st, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                    break;
                }
            }
        }
    }
}
