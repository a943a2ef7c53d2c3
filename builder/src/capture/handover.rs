//! Running ld.so to the handover: a breakpoint where `_dl_start` returns into
//! `_dl_start_user`, and the system-call loop until it is hit, which steers ld.so's
//! placements ([`super::steer::Steering`]) and records the kernel registrations it makes.
use super::procfs::Memory;
use super::steer::Steering;
use super::tracee::{Regs, Stop, Tracee};
use crate::arch::ArchSpec;
use crate::error::{capture_err, Result};
use crate::program::Program;
use crate::warning::Warning;
use elfpack_stub::abi;
use nix::sys::signal::Signal;

/// What every getrandom(2) made before the snapshot returns at capture, repeated: glibc
/// 2.42+ draws malloc's `tcache_key` then (`malloc/arena.c` `__ptmalloc_init`,
/// `malloc/malloc.c` `tcache_key_initialize`, through the system call, not the vDSO). A
/// fixed value keeps two captures equal (else normalisation would zero the key, and
/// glibc's double-free check loops forever on a zero key), and lets the builder find the
/// words for the stub to draw afresh. It meets glibc's own conditions on the key as a
/// 64-bit and as a 32-bit word (far from 0 and all-ones, 35 and 18 bits set), so glibc
/// keeps it instead of falling back to its clock-based `random_bits`.
pub const GETRANDOM_PATTERN: [u8; 8] = [0x5b, 0xd1, 0xe9, 0x95, 0x3c, 0x6f, 0xa2, 0x47];

/// The `int3` instruction.
const INT3: u8 = 0xcc;
/// The `call rel32` opcode.
const CALL: u8 = 0xe8;

/// Kernel registrations seen at system-call stops.
#[derive(Default)]
pub struct Recorded {
    pub regs: abi::Registrations,
    /// The thread ID set_tid_address returned.
    pub tid: Option<u64>,
    pub brk: Option<u64>,
    pub thread_area: Option<abi::Tls>,
}

/// Where and how the tracee stopped for the snapshot.
pub struct Handover {
    pub rec: Recorded,
    /// `abi::RESUME_DL_START_USER` or `abi::RESUME_ENTRY`, and the `%rdx` for the latter.
    pub resume_kind: u64,
    pub resume_dx: u64,
}

#[derive(Clone, Copy)]
struct Breakpoint {
    addr: u64,
    orig: u8,
}

impl Breakpoint {
    fn set(mem: &Memory, addr: u64) -> Result<Breakpoint> {
        let orig = mem.read(addr, 1)?[0];
        mem.write(addr, &[INT3])?;
        Ok(Breakpoint { addr, orig })
    }

    /// Whether the tracee stopped at it (the program counter is past the `int3`).
    fn hit(&self, spec: &ArchSpec, r: &Regs) -> bool {
        r.rip.wrapping_sub(1) & spec.mask == self.addr
    }

    /// Puts the instruction back and the program counter on it.
    fn clear(&self, t: &Tracee, mem: &Memory, r: &mut Regs) -> Result<()> {
        mem.write(self.addr, &[self.orig])?;
        r.rip = self.addr;
        t.set_regs(*r)
    }
}

/// The breakpoint where `_dl_start` returns into `_dl_start_user`: right after the first
/// call at ld.so's entry (glibc `sysdeps/x86_64/dl-machine.h`, `sysdeps/i386/dl-machine.h`,
/// RTLD_START).
fn at_dl_start_return(mem: &Memory, spec: &ArchSpec, regs: &Regs) -> Result<Breakpoint> {
    let entry = regs.rip & spec.mask;
    let head = mem.read(entry, 32)?;
    let call = head
        .iter()
        .position(|&b| b == CALL)
        .ok_or_else(|| capture_err!("ld.so's entry does not start with a call to _dl_start"))?;
    Breakpoint::set(mem, entry + call as u64 + 5)
}

/// The run from ld.so's entry to the handover.
pub struct Loader<'a> {
    pub t: &'a mut Tracee,
    pub mem: &'a Memory,
    pub spec: &'static ArchSpec,
    pub prog: &'a Program,
    pub steering: Steering,
    /// AT_ENTRY: what `_dl_start` returns at glibc's handover.
    pub at_entry: u64,
    /// Capture at the program entry rather than at `_dl_start_user`.
    pub at_entry_mode: bool,
    pub warnings: Vec<Warning>,
    /// The time-stamp counter this capture's `rdtsc` reads.
    pub clock: TimeStamps,
}

/// The time-stamp counter a capture sees: the tracee's `rdtsc`/`rdtscp` fault
/// (PR_TSC_SIGSEGV, tracee.rs) and read these values. They are the same in every pack, so
/// two packs of one input are identical, and they differ in both 32-bit halves (and in
/// their differences: a time taken) between the two captures, so that normalisation sees
/// every word of a stored time stamp vary; an i386 ld.so keeps a 64-bit one in two words
/// (glibc `elf/rtld.c`, `_dl_start`, HP_TIMING_NOW).
pub struct TimeStamps {
    next: u64,
    step: u64,
}

impl TimeStamps {
    pub fn new(second: bool) -> TimeStamps {
        if second {
            TimeStamps {
                next: 0x2000_0002_0000_0000,
                step: 0x3_0003_0000,
            }
        } else {
            TimeStamps {
                next: 0x1000_0001_0000_0000,
                step: 0x1_0001_0000,
            }
        }
    }

    fn read(&mut self) -> u64 {
        self.next += self.step;
        self.next
    }
}

/// `rdtsc` and `rdtscp`.
const RDTSC: [u8; 2] = [0x0f, 0x31];
const RDTSCP: [u8; 3] = [0x0f, 0x01, 0xf9];

impl Loader<'_> {
    /// Runs the tracee until the handover (or the program entry).
    pub fn run(&mut self, regs: Regs) -> Result<Handover> {
        let bp = at_dl_start_return(self.mem, self.spec, &regs)?;
        let mut rec = Recorded::default();
        let mut entry_regs: Option<Regs> = None;
        let mut entry_stop: Option<Breakpoint> = None;
        let mut sig = None;
        loop {
            self.t.resume_syscall(sig.take())?;
            match self.t.wait()? {
                Stop::Syscall => self.on_syscall(&mut entry_regs, &mut rec)?,
                Stop::Signal(Signal::SIGTRAP) => {
                    if let Some(kind) = self.on_trap(bp, &mut entry_stop)? {
                        let (resume_kind, resume_dx) = kind;
                        return Ok(Handover {
                            rec,
                            resume_kind,
                            resume_dx,
                        });
                    }
                }
                Stop::Signal(Signal::SIGSEGV) if self.on_time_stamp()? => {}
                Stop::Signal(s) => sig = Some(s),
                Stop::Exited(code) => {
                    return Err(capture_err!(
                        "{} could not be loaded: ld.so exited with status {code} before the program started",
                        self.prog.path.display()
                    ))
                }
                Stop::Killed(s) => {
                    return Err(capture_err!(
                        "{} was killed by {s} during loading",
                        self.prog.path.display()
                    ))
                }
            }
        }
    }

    /// A SIGSEGV stop: answers a faulting `rdtsc`/`rdtscp` at the program counter with the
    /// capture's own counter and steps over it. False if the fault was something else.
    fn on_time_stamp(&mut self) -> Result<bool> {
        let mut r = self.t.regs()?;
        let pc = r.rip & self.spec.mask;
        let Ok(insn) = self.mem.read(pc, 3) else {
            return Ok(false);
        };
        let len = if insn[..2] == RDTSC {
            2
        } else if insn[..] == RDTSCP {
            // IA32_TSC_AUX: the CPU number, as Linux sets it; the capture runs on one CPU.
            r.rcx = 0;
            3
        } else {
            return Ok(false);
        };
        let value = self.clock.read();
        r.rax = value & 0xffff_ffff;
        r.rdx = value >> 32;
        r.rip = pc + len;
        self.t.set_regs(r)?;
        Ok(true)
    }

    /// A system-call stop: an entry (`entry_regs` is `None`) or the matching exit.
    fn on_syscall(&mut self, entry_regs: &mut Option<Regs>, rec: &mut Recorded) -> Result<()> {
        let r = self.t.regs()?;
        match entry_regs.take() {
            None => {
                *entry_regs = Some(r);
                if let Some(r2) = self.steering.on_entry(self.spec, &r) {
                    self.t.set_regs(r2)?;
                }
            }
            Some(enter) => {
                let mut out = if let Some(r2) = self.steering.brk_result(&r) {
                    Some(r2)
                } else {
                    record(rec, self.spec, &enter, &r, self.mem)?;
                    self.warnings
                        .extend(self.steering.after_mmap(self.spec, &r));
                    None
                };
                // A rewritten call gets its own argument registers back: the kernel
                // preserves them, and code after an i386 `int $0x80` keeps using them
                // (glibc's `__brk` reads its GOT pointer from %edx).
                let args = self.spec.args(&enter);
                if self.spec.args(&r) != args {
                    let r2 = out.get_or_insert(r);
                    self.spec.set_args(r2, args);
                }
                if let Some(r2) = out {
                    self.t.set_regs(r2)?;
                }
            }
        }
        Ok(())
    }

    /// A SIGTRAP: `Some((resume kind, %rdx))` when it is the handover.
    fn on_trap(
        &mut self,
        bp: Breakpoint,
        entry_stop: &mut Option<Breakpoint>,
    ) -> Result<Option<(u64, u64)>> {
        let mut r = self.t.regs()?;
        if let Some(e) = entry_stop.filter(|e| e.hit(self.spec, &r)) {
            e.clear(self.t, self.mem, &mut r)?;
            return Ok(Some((abi::RESUME_ENTRY, r.rdx & self.spec.mask)));
        }
        if !bp.hit(self.spec, &r) {
            return Ok(None);
        }
        bp.clear(self.t, self.mem, &mut r)?;
        let ret = r.rax & self.spec.mask;
        let at_entry = self.at_entry;
        if ret == at_entry && !self.at_entry_mode {
            return Ok(Some((abi::RESUME_DL_START_USER, 0)));
        }
        if ret != at_entry {
            self.warnings.push(Warning::NotHandover {
                returned: ret,
                entry: at_entry,
            });
        }
        *entry_stop = Some(Breakpoint::set(self.mem, at_entry)?);
        Ok(None)
    }
}

/// Notes the kernel state a system call registered, at its exit stop.
fn record(
    rec: &mut Recorded,
    spec: &ArchSpec,
    enter: &Regs,
    exit: &Regs,
    mem: &Memory,
) -> Result<()> {
    let (nr, n) = (enter.orig_rax, spec.nr);
    let ok = (exit.rax as i64) >= 0 && spec.ret(exit.rax) >= 0;
    let a = spec.args(enter);
    let ret = exit.rax & spec.mask;
    if nr == n.brk {
        rec.brk = Some(ret);
    } else if !ok {
    } else if nr == n.getrandom {
        // No per-capture randomness in the image: see GETRANDOM_PATTERN.
        let fill: Vec<u8> = GETRANDOM_PATTERN
            .iter()
            .copied()
            .cycle()
            .take(ret as usize)
            .collect();
        mem.write(a[0], &fill)?;
    } else if nr == n.set_tid_address {
        rec.regs.tid_address = a[0];
        rec.tid = Some(ret);
    } else if nr == n.set_robust_list {
        rec.regs.robust_list_head = a[0];
        rec.regs.robust_list_len = a[1];
    } else if nr == n.rseq && a[2] == 0 {
        // rseq(rseq, rseq_len, flags, sig): a registration (no RSEQ_FLAG_UNREGISTER).
        rec.regs.rseq_area = a[0];
        rec.regs.rseq_len = a[1] as u32;
        rec.regs.rseq_sig = a[3] as u32;
    } else if Some(nr) == n.set_thread_area {
        rec.thread_area = Some(read_user_desc(mem, a[0])?);
    }
    Ok(())
}

/// The `struct user_desc` set_thread_area was given (linux `arch/x86/include/uapi/asm/ldt.h`:
/// entry_number, base_addr, limit, then the flag bits, 32 bits each).
fn read_user_desc(mem: &Memory, addr: u64) -> Result<abi::Tls> {
    let d = mem.read(addr, 16)?;
    let f = |i: usize| u32::from_le_bytes(d[i..i + 4].try_into().unwrap());
    Ok(abi::Tls {
        entry: f(0),
        base: u64::from(f(4)),
        limit: f(8),
        flags: f(12),
        selector: 0,
    })
}
