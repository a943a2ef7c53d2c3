//! Layout steering: before ld.so runs, the program (a PIE, on x86-64), the vDSO and ld.so
//! are moved into one window next to the program; while it runs, the address hints of its
//! `mmap(NULL, ...)` calls are rewritten so that the libraries sit back to back in that
//! window, and (when the program was moved) its `brk` calls are answered with a break
//! right after the moved program.
use super::procfs::{self, Mapping, Memory};
use super::stack::{self, StackInfo};
use super::tracee::{Regs, Tracee};
use crate::arch::{ArchSpec, Steer};
use crate::error::{capture_err, unpackable, Result};
use crate::image::PROT_EXEC;
use crate::warning::Warning;
use nix::libc;
use std::ffi::OsStr;

pub const PAGE: u64 = 4096;
/// The lowest address used: mmap_min_addr and the first 16 MiB stay free.
const FLOOR: u64 = 1 << 24;
/// Enough for ld.so, the vDSO and a few libraries; a program that leaves less cannot be
/// packed into one compact image.
const MIN_WINDOW: u64 = 64 << 20;
/// Room left after the vDSO and after ld.so, and the alignment of what follows.
const GAP: u64 = 0x10000;
const NEXT_ALIGN: u64 = 0x20_0000;

pub fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The range of the mapping that holds `sp`, with the anonymous mappings right next to it.
pub fn stack_extent(maps: &[Mapping], sp: u64) -> Option<(u64, u64)> {
    let i = maps.iter().position(|m| m.start <= sp && sp < m.end)?;
    let (mut lo, mut hi) = (i, i);
    while lo > 0 && maps[lo - 1].end == maps[lo].start && maps[lo - 1].path.is_empty() {
        lo -= 1;
    }
    while hi + 1 < maps.len()
        && maps[hi + 1].start == maps[hi].end
        && (maps[hi + 1].path.is_empty() || maps[hi + 1].path == "[stack]")
    {
        hi += 1;
    }
    Some((maps[lo].start, maps[hi].end))
}

/// `maps` with the program's extent moved by `delta` (wrapping).
pub fn shift_program(maps: &[Mapping], exe_path: &OsStr, delta: u64) -> Vec<Mapping> {
    let (lo, hi) = program_extent(maps, exe_path);
    let mut out: Vec<Mapping> = maps
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if lo <= m.start && m.end <= hi {
                m.start = m.start.wrapping_add(delta);
                m.end = m.end.wrapping_add(delta);
            }
            m
        })
        .collect();
    out.sort_by_key(|m| m.start);
    out
}

/// The program's extent: its file mappings and the anonymous mappings (bss) right after.
/// A moved bss that now holds the kernel's (empty) break is named `[heap]` in the maps
/// (linux `fs/proc/task_mmu.c`), and counts too.
pub fn program_extent(maps: &[Mapping], exe_path: &OsStr) -> (u64, u64) {
    let lo = maps
        .iter()
        .find(|m| m.path == exe_path)
        .map_or(0, |m| m.start);
    let mut hi = lo;
    for m in maps.iter().filter(|m| m.start >= lo) {
        let anonymous = m.path.is_empty() || m.path == "[heap]";
        if m.path == exe_path || (anonymous && m.start == hi) {
            hi = hi.max(m.end);
        } else if m.start > hi {
            break;
        }
    }
    (lo, hi)
}

/// The file mappings of `path` and the anonymous bss right after them.
fn object_mappings(maps: &[Mapping], path: &OsStr) -> Vec<Mapping> {
    let mut v: Vec<Mapping> = Vec::new();
    for m in maps {
        if m.path == path
            || (!v.is_empty() && m.path.is_empty() && m.start == v.last().unwrap().end)
        {
            v.push(m.clone());
        }
    }
    v
}

/// Where ld.so, the vDSO and the libraries go: a range that no mapping uses, above the
/// program with room for its heap when that holds a whole window, else (when the program
/// leaves too little room above it, as a large i386 bss does) the larger of the room above
/// and the room below it; at most the steering's window.
pub fn choose_window(maps: &[Mapping], exe_path: &OsStr, steer: &Steer) -> Result<(u64, u64)> {
    let top = steer.top;
    let (lo, hi) = program_extent(maps, exe_path);
    let free_until = |from: u64| {
        maps.iter()
            .filter(|m| m.end > from)
            .map(|m| m.start)
            .min()
            .unwrap_or(top)
            .min(top)
    };
    let above_lo = align_up(hi, steer.window_align) + steer.heap_room;
    let occupied = |a: u64| maps.iter().any(|m| m.start <= a && a < m.end);
    let above = if above_lo < top && !occupied(above_lo) {
        (above_lo, free_until(above_lo))
    } else {
        (0, 0)
    };
    let below_hi = lo / steer.window_align * steer.window_align;
    let below_lo = maps
        .iter()
        .filter(|m| m.end <= below_hi)
        .map(|m| m.end)
        .max()
        .map_or(FLOOR, |e| align_up(e, steer.window_align))
        .max(FLOOR);
    let below = if below_lo < below_hi {
        (below_lo, below_hi)
    } else {
        (0, 0)
    };
    // Above, where the layout has always been, whenever it has a whole window of room.
    let (a, b) = if above.1 - above.0 >= steer.window_size.min(below.1 - below.0) {
        above
    } else {
        below
    };
    if b - a < MIN_WINDOW {
        return Err(unpackable!(
            "the program's mappings ({lo:#x}-{hi:#x}, its bss included) leave no room of {} MiB for its libraries next to it",
            MIN_WINDOW >> 20
        ));
    }
    Ok((a, b.min(a + steer.window_size)))
}

/// The lowest free range of `len` bytes above [`FLOOR`] and below `top` that no mapping
/// uses and that does not meet `avoid`.
fn free_range(maps: &[Mapping], len: u64, avoid: (u64, u64), top: u64) -> Option<u64> {
    let mut used: Vec<(u64, u64)> = maps.iter().map(|m| (m.start, m.end)).collect();
    used.push(avoid);
    used.sort_unstable();
    let mut at = FLOOR;
    for (a, b) in used {
        if a >= at + len {
            break;
        }
        at = at.max(align_up(b, PAGE));
    }
    (at + len <= top).then_some(at)
}

/// Finds a system-call instruction inside an executable mapping that `pick` selects.
fn find_syscall_insn(
    mem: &Memory,
    maps: &[Mapping],
    spec: &ArchSpec,
    pick: impl Fn(&Mapping) -> bool,
) -> Result<u64> {
    for m in maps.iter().filter(|m| m.prot & PROT_EXEC != 0 && pick(m)) {
        let bytes = mem.read(m.start, (m.end - m.start) as usize)?;
        if let Some(off) = find_bytes(&bytes, &spec.syscall_insn) {
            return Ok(m.start + off as u64);
        }
    }
    Err(capture_err!(
        "no syscall instruction found to move ld.so with"
    ))
}

/// Moves a mapping with an injected mremap(MREMAP_MAYMOVE | MREMAP_FIXED).
fn move_mapping(t: &mut Tracee, spec: &ArchSpec, insn: u64, m: &Mapping, to: u64) -> Result<()> {
    let (from, len) = (m.start, m.end - m.start);
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    let ret = t.inject_syscall(spec, insn, spec.nr.mremap, [from, len, len, flags, to, 0])?;
    // An i386 result above 2 GiB comes back sign-extended.
    if ret as u64 & spec.mask != to {
        return Err(capture_err!(
            "cannot move mapping {from:#x}+{len:#x} to {to:#x} (mremap: {ret})"
        ));
    }
    Ok(())
}

/// What the tracee looks like when it is stopped at ld.so's entry.
pub struct Start {
    pub regs: Regs,
    pub maps: Vec<Mapping>,
    pub stack: StackInfo,
    pub at_entry: u64,
    pub at_phdr: u64,
    pub at_base: u64,
    pub interp_path: std::ffi::OsString,
    pub exe_path: std::ffi::OsString,
    /// How far the program was moved from its usual place (the capture's `shift`, or 0
    /// when there was no room to move it there).
    pub program_shift: u64,
}

/// Moves a position-independent program to the architecture's `pie_base`, or for a
/// sanitizer build its `sanitizer_base` (if it has one and the program is not there
/// yet), fixing AT_PHDR and AT_ENTRY; returns the page where its emulated break starts.
///
/// Moving the program leaves the kernel's break where it was (no system call moves
/// `start_brk` without privileges or CONFIG_CHECKPOINT_RESTORE). ld.so itself may grow
/// the break before the snapshot: up to glibc 2.34, `tunables_strdup` copies
/// GLIBC_TUNABLES (which `--cpu` sets) with `__sbrk` (glibc `elf/dl-tunables.c`). A heap
/// at the kernel's break would put one page of the image tens of TiB away from the rest.
/// So while the program is moved, ld.so's `brk` calls are answered by the capture with a
/// break that starts right after the moved program ([`Steering::on_entry`]).
pub fn move_program(
    t: &mut Tracee,
    mem: &Memory,
    spec: &ArchSpec,
    s: &mut Start,
    sanitizer: bool,
    opts: &super::Options,
) -> Result<Option<u64>> {
    let base = if sanitizer {
        spec.steer.sanitizer_base
    } else {
        spec.steer.pie_base
    };
    let exe = object_mappings(&s.maps, &s.exe_path);
    let lo = exe.first().unwrap().start;
    // Where the kernel put it, when the architecture has no place of its own for it.
    let Some(pie_base) = base.or(opts.emulate_brk.then_some(lo)) else {
        return Ok(None);
    };
    let pie_base = pie_base + opts.shift.program;
    s.program_shift = opts.shift.program;
    if lo == pie_base {
        return Ok(opts
            .emulate_brk
            .then(|| align_up(exe.last().unwrap().end, PAGE)));
    }
    let insn = find_syscall_insn(mem, &s.maps, spec, |m| m.path == s.interp_path)?;
    let delta = pie_base.wrapping_sub(lo);
    let hi = exe.last().unwrap().end;
    let (to_lo, to_hi) = (pie_base, hi.wrapping_add(delta));
    if to_lo < hi && lo < to_hi {
        // A move by less than the program's size (the relocation capture's shift of a
        // large program): mremap refuses overlapping ranges, so it goes through a free
        // range first.
        let Some(scratch) = free_range(&s.maps, hi - lo, (to_lo, to_hi), spec.steer.top) else {
            // No room (a huge i386 bss): the program stays, and so stays in the output.
            s.program_shift = 0;
            return Ok(opts.emulate_brk.then(|| align_up(hi, PAGE)));
        };
        for m in &exe {
            move_mapping(t, spec, insn, m, m.start - lo + scratch)?;
        }
        for m in &exe {
            let at = m.start - lo + scratch;
            let moved = Mapping {
                start: at,
                end: at + (m.end - m.start),
                ..m.clone()
            };
            move_mapping(t, spec, insn, &moved, m.start.wrapping_add(delta))?;
        }
    } else {
        for m in &exe {
            move_mapping(t, spec, insn, m, m.start.wrapping_add(delta))?;
        }
    }
    s.at_phdr = s.at_phdr.wrapping_add(delta);
    s.at_entry = s.at_entry.wrapping_add(delta);
    stack::set_aux(mem, &mut s.stack, spec.word, stack::AT_PHDR, s.at_phdr)?;
    stack::set_aux(mem, &mut s.stack, spec.word, stack::AT_ENTRY, s.at_entry)?;
    s.maps = procfs::maps(t.pid.as_raw())?;
    Ok(Some(align_up(
        exe.last().unwrap().end.wrapping_add(delta),
        PAGE,
    )))
}

/// Moves the vDSO and then ld.so to the start of the window, fixing the auxv and the
/// program counter (both architectures: the vDSO would otherwise lie far from the
/// image). Returns ld.so's new base and the first address after them.
pub fn move_vdso_and_ldso(
    t: &mut Tracee,
    mem: &Memory,
    spec: &ArchSpec,
    s: &mut Start,
    window_lo: u64,
    shift: u64,
) -> Result<(u64, u64)> {
    let word = spec.word;
    let Some(v) = s.maps.iter().find(|m| m.path == "[vdso]").cloned() else {
        return Err(capture_err!(
            "the capture kernel gives no vDSO; cannot move ld.so"
        ));
    };
    let ldso = object_mappings(&s.maps, &s.interp_path);
    // Places are computed where an unshifted capture has them, then shifted.
    let mut next = window_lo;
    let insn = find_syscall_insn(mem, &s.maps, spec, |m| m.path == s.interp_path)?;
    move_mapping(t, spec, insn, &v, next + shift)?;
    stack::set_aux(
        mem,
        &mut s.stack,
        word,
        stack::AT_SYSINFO_EHDR,
        next + shift,
    )?;
    // i386: the system-call entry __kernel_vsyscall moves with the vDSO.
    let vsyscall = s.stack.aux(stack::AT_SYSINFO);
    if let Some(entry) = vsyscall.filter(|&e| e >= v.start && e < v.end) {
        stack::set_aux(
            mem,
            &mut s.stack,
            word,
            stack::AT_SYSINFO,
            entry - v.start + next + shift,
        )?;
    }
    next = align_up(next + (v.end - v.start) + GAP, NEXT_ALIGN);
    // ld.so is moved with the instruction in the vDSO's new place.
    let maps = procfs::maps(t.pid.as_raw())?;
    let insn = find_syscall_insn(mem, &maps, spec, |m| m.path == "[vdso]")?;
    let lo = ldso.first().unwrap().start;
    let hi = ldso.last().unwrap().end;
    // ld.so moves down (wrapping arithmetic).
    let delta = (next + shift).wrapping_sub(lo);
    for m in &ldso {
        move_mapping(t, spec, insn, m, m.start.wrapping_add(delta))?;
    }
    let ldso_base = s.at_base.wrapping_add(delta);
    stack::set_aux(mem, &mut s.stack, word, stack::AT_BASE, ldso_base)?;
    s.regs.rip = s.regs.rip.wrapping_add(delta) & spec.mask;
    t.set_regs(s.regs)?;
    let end = hi.wrapping_add(delta) - shift;
    Ok((ldso_base, align_up(end + GAP, NEXT_ALIGN) + shift))
}

/// The steering while ld.so runs: the next mmap hint, and the emulated break.
pub struct Steering {
    /// Next address hint for ld.so's `mmap(NULL, ...)`.
    pub cursor: u64,
    pub window: (u64, u64),
    /// The emulated program break, when the program was moved.
    pub fake_brk: Option<u64>,
    /// Where the emulated break started.
    pub brk_start: Option<u64>,
    /// The hint given to the mmap in progress, and its length.
    pending_hint: Option<(u64, u64)>,
    /// An answered `brk`: the requested break, and whether it was turned into an mmap.
    pending_brk: Option<(u64, bool)>,
}

impl Steering {
    pub fn new(cursor: u64, window: (u64, u64), fake_brk: Option<u64>) -> Steering {
        Steering {
            cursor,
            window,
            fake_brk,
            brk_start: fake_brk,
            pending_hint: None,
            pending_brk: None,
        }
    }

    /// At a system-call entry: the registers to run it with instead, if any.
    pub fn on_entry(&mut self, spec: &ArchSpec, r: &Regs) -> Option<Regs> {
        let args = spec.args(r);
        if let Some(cur) = self.fake_brk.filter(|_| r.orig_rax == spec.nr.brk) {
            // brk(addr) above the current break becomes
            // mmap(cur, addr - cur, RW, PRIVATE|ANONYMOUS|FIXED_NOREPLACE);
            // anything else (brk(0), a shrink) becomes getpid and returns `cur`.
            let req = args[0];
            let mut r2 = *r;
            if req > cur {
                let flags =
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
                let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
                r2.orig_rax = spec.nr.mmap;
                spec.set_args(
                    &mut r2,
                    [cur, align_up(req, PAGE) - cur, rw, flags, u64::MAX, 0],
                );
            } else {
                r2.orig_rax = spec.nr.getpid;
            }
            self.pending_brk = Some((req, req > cur));
            return Some(r2);
        }
        // mmap(addr, len, prot, flags, ...) (mmap2 on i386).
        let (addr, len, flags) = (args[0], args[1], args[3]);
        let fixed = (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) as u64;
        if r.orig_rax == spec.nr.mmap && addr == 0 && flags & fixed == 0 {
            let mut r2 = *r;
            spec.set_arg0(&mut r2, self.cursor);
            self.pending_hint = Some((self.cursor, len));
            return Some(r2);
        }
        None
    }

    /// At a system-call exit: the result to return instead, when the call was an
    /// emulated `brk`.
    pub fn brk_result(&mut self, r: &Regs) -> Option<Regs> {
        let (Some((req, grew)), Some(cur)) = (self.pending_brk, self.fake_brk) else {
            return None;
        };
        self.pending_brk = None;
        // What the kernel's brk would return: the new break, or the old one when it
        // cannot grow.
        let mut r2 = *r;
        r2.rax = if grew && r.rax == cur {
            self.fake_brk = Some(align_up(req, PAGE));
            req
        } else {
            cur
        };
        Some(r2)
    }

    /// At a system-call exit: moves the cursor past a steered mmap's result; a warning
    /// when the kernel did not take the hint.
    pub fn after_mmap(&mut self, spec: &ArchSpec, r: &Regs) -> Option<Warning> {
        let (hint, len) = self.pending_hint.take()?;
        // Only -4095..-1 are errors: an i386 address above 2 GiB comes back
        // sign-extended, negative as a number.
        let ret = spec.ret(r.rax);
        if (-4095..0).contains(&ret) {
            return None;
        }
        let got = ret as u64 & spec.mask;
        // The next hint is the page right after: libraries and ld.so's own mappings sit
        // back to back, so the image has few holes and few segments.
        self.cursor = self.cursor.max(align_up(got + len, PAGE));
        (got != hint).then_some(Warning::MmapElsewhere { len, got, hint })
    }
}
