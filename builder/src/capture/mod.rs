//! Capture: runs the program under ptrace until glibc's ld.so has loaded, relocated and
//! bound everything (the return from `_dl_start` into `_dl_start_user`), steering where it
//! places things so that the image is compact, and reads the process into an [`Image`].
//!
//! Sequence:
//! 1. spawn without ASLR (so two captures see the same addresses), stopped at ld.so's entry;
//! 2. (x86-64) move the vDSO and ld.so next to the program's window and fix the auxv;
//!    replace the AT_RANDOM bytes with a fixed pattern (no per-capture randomness);
//! 3. run to the breakpoint at `_dl_start`'s return, rewriting the address hints of ld.so's
//!    `mmap(NULL, ...)` calls and recording the kernel registrations ld.so makes;
//! 4. read registers, mappings and memory; the tracee is killed and reaped.
pub mod procfs;
pub mod tracee;

use crate::error::{capture_err, Result};
use crate::image::{self, Image, Object, Region};
use crate::program::{Arch, Program};
use elfpack_stub::abi;
use goblin::elf::program_header::{PF_R, PF_W, PF_X};
use nix::sys::signal::Signal;
use procfs::{Mapping, Memory};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracee::{Stop, Tracee};

/// The bytes that replace AT_RANDOM during capture. ld.so derives the stack-protector
/// canary and the pointer guard from them, so the image holds these known values, which
/// the builder finds and the stub replaces with values from each run's own AT_RANDOM.
pub const RANDOM_PATTERN: [u8; 16] = [
    0x9e, 0x37, 0x79, 0xb9, 0x7f, 0x4a, 0x7c, 0x15, 0xf3, 0x9c, 0xc0, 0x60, 0x5c, 0xed, 0xc8, 0x34,
];

/// What every getrandom(2) made before the snapshot returns at capture, repeated: glibc
/// 2.42+ draws malloc's `tcache_key` then (`malloc/arena.c` `__ptmalloc_init`,
/// `malloc/malloc.c` `tcache_key_initialize`, through the system call, not the vDSO). A
/// fixed value keeps two captures equal (else normalisation would zero the key, and
/// glibc's double-free check loops forever on a zero key), and lets the builder find the
/// words for the stub to draw afresh. It meets glibc's own conditions on the key as a
/// 64-bit and as a 32-bit word (far from 0 and all-ones, 35 and 18 bits set), so glibc
/// keeps it instead of falling back to its clock-based `random_bits`.
pub const GETRANDOM_PATTERN: [u8; 8] = [0x5b, 0xd1, 0xe9, 0x95, 0x3c, 0x6f, 0xa2, 0x47];

const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;
const GETPID_X86_64: u64 = 39;

/// Per-architecture facts of the layout steering.
struct Steer {
    is64: bool,
    /// How far above the program's own mappings the libraries start: room for the heap.
    /// On x86-64 the image stays well inside the 256 GiB that qemu-x86_64 can load; on
    /// i386 it leaves qemu-i386 most of the 4 GiB for the program's own mappings.
    heap_room: u64,
    window_align: u64,
    window_size: u64,
    syscall_insn: [u8; 2],
    mremap: u64,
    mmap: u64,
}

const STEER_X86_64: Steer = Steer {
    is64: true,
    heap_room: 32 * GIB,
    window_align: GIB,
    window_size: 200 * GIB,
    syscall_insn: [0x0f, 0x05],
    mremap: 25,
    mmap: 9,
};
const STEER_I386: Steer = Steer {
    is64: false,
    heap_room: 512 << 20,
    window_align: 16 << 20,
    window_size: 1536 << 20,
    syscall_insn: [0xcd, 0x80],
    mremap: 163,
    mmap: 192,
};
/// Where a position-independent x86-64 program is moved at capture. The kernel's own
/// choice without ASLR (0x555555554000) lies where the host's PIE binaries are loaded
/// (0x55..-0x56..), including qemu-user itself, which then cannot map the image at its
/// fixed addresses reliably; low addresses are free in every process.
const PIE_BASE: u64 = 0x1000_0000;

#[derive(Clone)]
pub struct Options {
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub timeout: Duration,
    /// Capture at the program's entry point rather than at `_dl_start_user`.
    pub at_entry: bool,
    /// Leave out the contents of executable mappings (a capture made only to compare
    /// data with another: ld.so does not write code).
    pub skip_code: bool,
    /// Give ld.so other values of the auxv entries it copies ([`VARIED_AUX`]), so that a
    /// comparison with a capture that saw the kernel's own values finds where it keeps
    /// them.
    pub vary_aux: bool,
    /// Send the program's stderr to /dev/null.
    pub quiet: bool,
}

/// The capture-time initial stack, for classifying pointers into it.
#[derive(Clone, Debug, Default)]
pub struct StackInfo {
    pub lo: u64,
    pub hi: u64,
    pub sp: u64,
    pub argv: Vec<(u64, Vec<u8>)>,
    pub envp: Vec<(u64, Vec<u8>)>,
    pub auxv_addr: u64,
    pub auxv: Vec<(u64, u64)>,
}

impl StackInfo {
    pub fn aux(&self, tag: u64) -> Option<u64> {
        self.auxv
            .iter()
            .rev()
            .find(|(t, _)| *t == tag)
            .map(|&(_, v)| v)
    }
}

/// What the capture hands to the image builder.
pub struct Captured {
    pub image: Image,
    pub stack: StackInfo,
    /// Memory read at capture, per region, is in `image.regions`.
    pub warnings: Vec<String>,
}

/// Kernel registrations seen at system-call stops.
#[derive(Default)]
struct Recorded {
    regs: abi::Registrations,
    /// The thread ID set_tid_address returned.
    tid: Option<u64>,
    brk: Option<u64>,
    thread_area: Option<abi::Tls>,
}

/// System-call numbers the capture looks at, per architecture of the tracee.
struct Nrs {
    brk: u64,
    getrandom: u64,
    set_tid_address: u64,
    set_robust_list: u64,
    rseq: u64,
    set_thread_area: Option<u64>,
}

const X86_64_NRS: Nrs = Nrs {
    brk: 12,
    getrandom: 318,
    set_tid_address: 218,
    set_robust_list: 273,
    rseq: 334,
    set_thread_area: None,
};
const I386_NRS: Nrs = Nrs {
    brk: 45,
    getrandom: 355,
    set_tid_address: 258,
    set_robust_list: 311,
    rseq: 386,
    set_thread_area: Some(243),
};

const AT_PHDR: u64 = 3;
const AT_PHENT: u64 = 4;
const AT_PHNUM: u64 = 5;
const AT_BASE: u64 = 7;
const AT_ENTRY: u64 = 9;
const AT_RANDOM: u64 = 25;
const AT_SYSINFO: u64 = 32;
const AT_SYSINFO_EHDR: u64 = 33;

/// Auxv entries whose values ld.so copies into its own variables (glibc
/// `sysdeps/unix/sysv/linux/dl-parse_auxv.h`, `_dl_parse_auxv`) and that differ between
/// machines, with how a comparison capture changes each: AT_CLKTCK (GLRO(dl_clktck),
/// `sysconf(_SC_CLK_TCK)`), AT_HWCAP2 (GLRO(dl_hwcap2), `getauxval`), AT_MINSIGSTKSZ
/// (GLRO(dl_minsigstacksize), `sysconf(_SC_MINSIGSTKSZ)` and `_SC_SIGSTKSZ`). The changes
/// touch no bit that ld.so acts on while starting.
pub const VARIED_AUX: &[(u64, u64)] = &[(17, 0x40), (26, 1 << 30), (51, 0x400)];

pub fn capture(prog: &Program, opts: &Options) -> Result<Captured> {
    let mut t = Tracee::spawn(&prog.path, &opts.args, &opts.env, opts.quiet)?;
    let pid = t.pid.as_raw();
    let word = prog.arch.word();
    let mem = Memory::open(pid)?;

    // A watchdog kills the tracee when the timeout expires; the wait below then returns.
    // It ends as soon as the capture does (its channel closes) and is joined, so no thread
    // of elfpack outlives the capture.
    let fired = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let watchdog = {
        let (fired, timeout) = (fired.clone(), opts.timeout);
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(timeout) {
                fired.store(true, Ordering::Relaxed);
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        })
    };
    let result = run(&mut t, prog, &mem, word, opts);
    drop(stop);
    let _ = watchdog.join();
    if fired.load(Ordering::Relaxed) {
        return Err(capture_err!(
            "capture timed out after {:?} (the program never reached the end of dynamic loading)",
            opts.timeout
        ));
    }
    result
}

fn read_stack(mem: &Memory, sp: u64, word: usize, maps: &[Mapping]) -> Result<StackInfo> {
    let stack = maps
        .iter()
        .find(|m| m.start <= sp && sp < m.end)
        .ok_or_else(|| capture_err!("stack pointer {sp:#x} is outside every mapping"))?;
    // Everything from the stack pointer up is the kernel's vector and string area: one read.
    let bytes = mem.read(sp, (stack.end - sp) as usize)?;
    let w = word as u64;
    let at = |addr: u64| -> Result<usize> {
        addr.checked_sub(sp)
            .map(|o| o as usize)
            .filter(|&o| o < bytes.len())
            .ok_or_else(|| capture_err!("initial stack pointer {addr:#x} outside the stack"))
    };
    let word_at = |addr: u64| -> Result<u64> {
        let o = at(addr)?;
        let b = bytes
            .get(o..o + word)
            .ok_or_else(|| capture_err!("initial stack truncated"))?;
        let mut v = [0u8; 8];
        v[..word].copy_from_slice(b);
        Ok(u64::from_le_bytes(v))
    };
    let string_at = |addr: u64| -> Result<&[u8]> {
        let o = at(addr)?;
        let n = bytes[o..]
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| capture_err!("unterminated string on the initial stack"))?;
        Ok(&bytes[o..o + n])
    };
    let mut info = StackInfo {
        lo: stack.start,
        hi: stack.end,
        sp,
        ..Default::default()
    };
    let argc = word_at(sp)?;
    for i in 0..argc {
        let p = word_at(sp + w * (1 + i))?;
        info.argv.push((p, string_at(p)?.to_vec()));
    }
    let mut a = sp + w * (argc + 2);
    loop {
        let p = word_at(a)?;
        a += w;
        if p == 0 {
            break;
        }
        info.envp.push((p, string_at(p)?.to_vec()));
    }
    info.auxv_addr = a;
    loop {
        let tag = word_at(a)?;
        let val = word_at(a + w)?;
        info.auxv.push((tag, val));
        a += 2 * w;
        if tag == 0 {
            break;
        }
    }
    Ok(info)
}

/// Rewrites every auxv entry with `tag` on the tracee's stack.
fn set_aux(mem: &Memory, info: &mut StackInfo, word: usize, tag: u64, value: u64) -> Result<()> {
    for (i, e) in info.auxv.iter_mut().enumerate() {
        if e.0 == tag {
            e.1 = value;
            mem.write_word(
                info.auxv_addr + (2 * i * word) as u64 + word as u64,
                word,
                value,
            )?;
        }
    }
    Ok(())
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// The range of the mapping that holds `sp`, with the anonymous mappings right next to it.
fn stack_extent(maps: &[Mapping], sp: u64) -> Option<(u64, u64)> {
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

/// The program's extent: its file mappings and the anonymous mappings (bss) right after.
fn program_extent(maps: &[Mapping], exe_path: &std::ffi::OsStr) -> (u64, u64) {
    let lo = maps
        .iter()
        .find(|m| m.path == exe_path)
        .map_or(0, |m| m.start);
    let mut hi = lo;
    for m in maps.iter().filter(|m| m.start >= lo) {
        if m.path == exe_path || (m.path.is_empty() && m.start == hi) {
            hi = hi.max(m.end);
        } else if m.start > hi {
            break;
        }
    }
    (lo, hi)
}

/// Where ld.so, the vDSO and the libraries go: a range that no mapping uses, above the
/// program with room for its heap when that holds a whole window, else (when the program
/// leaves too little room above it, as a large i386 bss does) the larger of the room above
/// and the room below it; at most the steering's window.
fn choose_window(
    maps: &[Mapping],
    exe_path: &std::ffi::OsStr,
    steer: &Steer,
) -> Result<(u64, u64)> {
    // The lowest address used (mmap_min_addr and the first 16 MiB stay free) and the top
    // of the range (i386: the 4 GiB address space, where the kernel also puts the stack).
    let (floor, top) = if steer.is64 {
        (1 << 24, 1u64 << 47)
    } else {
        (1 << 24, 1u64 << 32)
    };
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
        .map_or(floor, |e| align_up(e, steer.window_align))
        .max(floor);
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
    // Enough for ld.so, the vDSO and a few libraries; a program that leaves less cannot
    // be packed into one compact image.
    const MIN_WINDOW: u64 = 64 << 20;
    if b - a < MIN_WINDOW {
        return Err(crate::error::unpackable!(
            "the program's mappings ({lo:#x}-{hi:#x}, its bss included) leave no room of {} MiB for its libraries next to it",
            MIN_WINDOW >> 20
        ));
    }
    Ok((a, b.min(a + steer.window_size)))
}

/// Finds a system-call instruction inside an executable mapping that `pick` selects.
fn find_syscall_insn(
    mem: &Memory,
    maps: &[Mapping],
    steer: &Steer,
    pick: impl Fn(&Mapping) -> bool,
) -> Result<u64> {
    for m in maps
        .iter()
        .filter(|m| m.prot & image::PROT_EXEC != 0 && pick(m))
    {
        let bytes = mem.read(m.start, (m.end - m.start) as usize)?;
        if let Some(off) = find_bytes(&bytes, &steer.syscall_insn) {
            return Ok(m.start + off as u64);
        }
    }
    Err(capture_err!(
        "no syscall instruction found to move ld.so with"
    ))
}

/// Moves a mapping with an injected mremap(MREMAP_MAYMOVE | MREMAP_FIXED).
fn move_mapping(
    t: &mut Tracee,
    steer: &Steer,
    insn: u64,
    from: u64,
    len: u64,
    to: u64,
) -> Result<()> {
    let ret = t.inject_syscall(steer.is64, insn, steer.mremap, [from, len, len, 3, to, 0])?;
    // An i386 result above 2 GiB comes back sign-extended.
    let got = if steer.is64 {
        ret as u64
    } else {
        ret as u64 & 0xffff_ffff
    };
    if got != to {
        return Err(capture_err!(
            "cannot move mapping {from:#x}+{len:#x} to {to:#x} (mremap: {ret})"
        ));
    }
    Ok(())
}

struct Layout {
    /// Next address hint for ld.so's `mmap(NULL, ...)`.
    cursor: u64,
    window: (u64, u64),
}

fn run(
    t: &mut Tracee,
    prog: &Program,
    mem: &Memory,
    word: usize,
    opts: &Options,
) -> Result<Captured> {
    let (opts_at_entry, opts_skip_code) = (opts.at_entry, opts.skip_code);
    let pid = t.pid.as_raw();
    let mut regs = t.regs()?;
    let maps = procfs::maps(pid)?;
    let sp = regs.rsp & if word == 4 { 0xffff_ffff } else { u64::MAX };
    let mut stack = read_stack(mem, sp, word, &maps)?;
    let at_entry = stack
        .aux(AT_ENTRY)
        .ok_or_else(|| capture_err!("no AT_ENTRY"))?;
    let at_phdr = stack
        .aux(AT_PHDR)
        .ok_or_else(|| capture_err!("no AT_PHDR"))?;
    let at_base = stack.aux(AT_BASE).unwrap_or(0);
    if at_base == 0 {
        return Err(capture_err!("the kernel started no program interpreter"));
    }
    let interp_path = maps
        .iter()
        .find(|m| m.start == at_base)
        .map(|m| m.path.clone())
        .ok_or_else(|| capture_err!("cannot find ld.so's mapping"))?;
    let exe_path = maps
        .iter()
        .find(|m| m.start <= at_phdr && at_phdr < m.end)
        .map(|m| m.path.clone())
        .ok_or_else(|| capture_err!("cannot find the program's mapping"))?;
    let mut warnings = Vec::new();

    // 2. Layout: everything next to the program, on x86-64.
    let mut at_phdr = at_phdr;
    let mut at_entry = at_entry;
    let mut maps = maps;
    // Moving the program leaves the kernel's break where it was (no system call moves
    // `start_brk` without privileges or CONFIG_CHECKPOINT_RESTORE). ld.so itself may grow
    // the break before the snapshot: up to glibc 2.34, `tunables_strdup` copies
    // GLIBC_TUNABLES (which `--cpu` sets) with `__sbrk` (glibc `elf/dl-tunables.c`). A heap
    // at the kernel's break would put one page of the image tens of TiB away from the rest.
    // So while the program is moved, ld.so's `brk` calls are answered by the capture with a
    // break that starts right after the moved program, backed by anonymous mappings there.
    let mut fake_brk: Option<u64> = None;
    if prog.arch == Arch::X86_64 && prog.pie && !opts_at_entry {
        // The program's file mappings and the anonymous bss right after them.
        let mut exe: Vec<Mapping> = Vec::new();
        for m in &maps {
            if m.path == exe_path
                || (!exe.is_empty() && m.path.is_empty() && m.start == exe.last().unwrap().end)
            {
                exe.push(m.clone());
            }
        }
        let lo = exe.first().unwrap().start;
        if lo != PIE_BASE {
            let insn = find_syscall_insn(mem, &maps, &STEER_X86_64, |m| m.path == interp_path)?;
            let delta = PIE_BASE.wrapping_sub(lo);
            for m in &exe {
                move_mapping(
                    t,
                    &STEER_X86_64,
                    insn,
                    m.start,
                    m.end - m.start,
                    m.start.wrapping_add(delta),
                )?;
            }
            at_phdr = at_phdr.wrapping_add(delta);
            at_entry = at_entry.wrapping_add(delta);
            set_aux(mem, &mut stack, word, AT_PHDR, at_phdr)?;
            set_aux(mem, &mut stack, word, AT_ENTRY, at_entry)?;
            maps = procfs::maps(pid)?;
            fake_brk = Some(align_up(exe.last().unwrap().end.wrapping_add(delta), PAGE));
        }
    }
    let steer = if prog.arch == Arch::X86_64 {
        &STEER_X86_64
    } else {
        &STEER_I386
    };
    let mut layout;
    let ldso_base;
    {
        let (window_lo, window_hi) = choose_window(&maps, &exe_path, steer)?;
        let vdso = maps.iter().find(|m| m.path == "[vdso]").cloned();
        let ldso: Vec<Mapping> = {
            // ld.so's file mappings and the anonymous bss that follows them.
            let mut v: Vec<Mapping> = Vec::new();
            for m in &maps {
                if m.path == interp_path
                    || (!v.is_empty() && m.path.is_empty() && m.start == v.last().unwrap().end)
                {
                    v.push(m.clone());
                }
            }
            v
        };
        let mut next = window_lo;
        if let Some(v) = &vdso {
            let insn = find_syscall_insn(mem, &maps, steer, |m| m.path == interp_path)?;
            move_mapping(t, steer, insn, v.start, v.end - v.start, next)?;
            set_aux(mem, &mut stack, word, AT_SYSINFO_EHDR, next)?;
            // i386: the system-call entry __kernel_vsyscall moves with the vDSO.
            if let Some(entry) = stack.aux(AT_SYSINFO).filter(|&e| e >= v.start && e < v.end) {
                set_aux(mem, &mut stack, word, AT_SYSINFO, entry - v.start + next)?;
            }
            next = align_up(next + (v.end - v.start) + 0x10000, 0x20_0000);
        }
        let insn = if vdso.is_some() {
            let maps2 = procfs::maps(pid)?;
            find_syscall_insn(mem, &maps2, steer, |m| m.path == "[vdso]")?
        } else {
            return Err(capture_err!(
                "the capture kernel gives no vDSO; cannot move ld.so"
            ));
        };
        let lo = ldso.first().unwrap().start;
        let hi = ldso.last().unwrap().end;
        let delta = next - lo;
        for m in &ldso {
            move_mapping(t, steer, insn, m.start, m.end - m.start, m.start + delta)?;
        }
        ldso_base = at_base + delta;
        set_aux(mem, &mut stack, word, AT_BASE, ldso_base)?;
        regs.rip = (regs.rip + delta) & mask(word);
        t.set_regs(regs)?;
        let cursor = align_up(hi + delta + 0x10000, 0x20_0000);
        layout = Some(Layout {
            cursor,
            window: (window_lo, window_hi),
        });
    }
    // No per-capture randomness in the image: see RANDOM_PATTERN.
    let random = stack
        .aux(AT_RANDOM)
        .ok_or_else(|| capture_err!("no AT_RANDOM"))?;
    mem.write(random, &RANDOM_PATTERN)?;
    if opts.vary_aux {
        for &(tag, change) in VARIED_AUX {
            if let Some(v) = stack.aux(tag) {
                set_aux(mem, &mut stack, word, tag, v ^ change)?;
            }
        }
    }

    // 3. Breakpoint where `_dl_start` returns into `_dl_start_user`: right after the first
    // call at ld.so's entry (glibc `sysdeps/x86_64/dl-machine.h`, `sysdeps/i386/dl-machine.h`,
    // RTLD_START).
    let entry = regs.rip & if word == 4 { 0xffff_ffff } else { u64::MAX };
    let head = mem.read(entry, 32)?;
    let call = head
        .iter()
        .position(|&b| b == 0xe8)
        .ok_or_else(|| capture_err!("ld.so's entry does not start with a call to _dl_start"))?;
    let bp = entry + call as u64 + 5;
    let orig = mem.read(bp, 1)?[0];
    mem.write(bp, &[0xcc])?;

    let nrs = if prog.arch == Arch::X86_64 {
        &X86_64_NRS
    } else {
        &I386_NRS
    };
    let mut rec = Recorded::default();
    let mut in_syscall = false;
    let mut pending_hint: Option<(u64, u64)> = None;
    // An answered `brk`: the requested break, and whether it was turned into an mmap.
    let mut pending_brk: Option<(u64, bool)> = None;
    let mut entry_regs = regs;
    let mut sig = None;
    let mut entry_stop: Option<(u64, u8)> = None;
    let mut resume_kind = abi::RESUME_DL_START_USER;
    let mut resume_dx = 0;
    let at_entry_mode = opts_at_entry;
    loop {
        t.resume_syscall(sig.take())?;
        match t.wait()? {
            Stop::Syscall => {
                let r = t.regs()?;
                if !in_syscall {
                    entry_regs = r;
                    if let Some(cur) = fake_brk.filter(|_| r.orig_rax == nrs.brk) {
                        // brk(addr) above the current break becomes
                        // mmap(cur, addr - cur, RW, PRIVATE|ANONYMOUS|FIXED_NOREPLACE);
                        // anything else (brk(0), a shrink) becomes getpid and returns `cur`.
                        let req = r.rdi;
                        let mut r2 = r;
                        if req > cur {
                            const MAP_PRIVATE_ANON_NOREPLACE: u64 = 0x02 | 0x20 | 0x10_0000;
                            r2.orig_rax = steer.mmap;
                            (r2.rdi, r2.rsi, r2.rdx, r2.r10, r2.r8, r2.r9) =
                                (cur, align_up(req, PAGE) - cur, 3, MAP_PRIVATE_ANON_NOREPLACE, u64::MAX, 0);
                        } else {
                            r2.orig_rax = GETPID_X86_64;
                        }
                        t.set_regs(r2)?;
                        pending_brk = Some((req, req > cur));
                    } else if let Some(l) = layout.as_ref() {
                        const MAP_FIXED: u64 = 0x10;
                        const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
                        // mmap(addr, len, prot, flags, ...): rdi, rsi, rdx, r10 on x86-64;
                        // mmap2: ebx, ecx, edx, esi on i386.
                        let (addr, len, flags) =
                            if steer.is64 { (r.rdi, r.rsi, r.r10) } else { (r.rbx, r.rcx, r.rsi) };
                        if r.orig_rax == steer.mmap && addr == 0 && flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) == 0 {
                            let mut r2 = r;
                            if steer.is64 {
                                r2.rdi = l.cursor;
                            } else {
                                r2.rbx = l.cursor;
                            }
                            t.set_regs(r2)?;
                            pending_hint = Some((l.cursor, len));
                        }
                    }
                } else if let (Some((req, grew)), Some(cur)) = (pending_brk.take(), fake_brk) {
                    // What the kernel's brk would return: the new break, or the old one
                    // when it cannot grow.
                    let mut r2 = r;
                    r2.rax = if grew && r.rax == cur {
                        fake_brk = Some(align_up(req, PAGE));
                        req
                    } else {
                        cur
                    };
                    t.set_regs(r2)?;
                } else {
                    record(&mut rec, nrs, prog.arch, &entry_regs, &r, mem)?;
                    if let (Some((hint, len)), Some(l)) = (pending_hint.take(), layout.as_mut()) {
                        let got = if steer.is64 { r.rax as i64 } else { i64::from(r.rax as u32 as i32) };
                        if got >= 0 {
                            let got = got as u64;
                            if got != hint {
                                warnings.push(format!("mmap placed {len:#x} bytes at {got:#x}, not at {hint:#x}"));
                            }
                            // The next hint is the page right after: libraries and ld.so's own
                            // mappings sit back to back, so the image has few holes and few segments.
                            l.cursor = l.cursor.max(align_up(got + len, 0x1000));
                        }
                    }
                }
                in_syscall = !in_syscall;
            }
            Stop::Signal(Signal::SIGTRAP) => {
                let mut r = t.regs()?;
                if let Some((addr, o)) = entry_stop {
                    if r.rip.wrapping_sub(1) & mask(word) == addr {
                        mem.write(addr, &[o])?;
                        r.rip = addr;
                        t.set_regs(r)?;
                        resume_kind = abi::RESUME_ENTRY;
                        resume_dx = r.rdx & mask(word);
                        break;
                    }
                }
                if r.rip.wrapping_sub(1) & mask(word) != bp {
                    continue;
                }
                mem.write(bp, &[orig])?;
                r.rip = bp;
                t.set_regs(r)?;
                let ret = r.rax & mask(word);
                if ret != at_entry || at_entry_mode {
                    if ret != at_entry {
                        warnings.push(format!(
                            "ld.so returned {ret:#x} from _dl_start, not the program entry {at_entry:#x}: \
                             this is not glibc's handover; capturing at the program entry instead \
                             (initializers ran at capture and do not run again)"
                        ));
                    }
                    let o = mem.read(at_entry, 1)?[0];
                    mem.write(at_entry, &[0xcc])?;
                    entry_stop = Some((at_entry, o));
                    continue;
                }
                break;
            }
            Stop::Signal(s) => sig = Some(s),
            Stop::Exited(code) => {
                return Err(capture_err!(
                    "{} could not be loaded: ld.so exited with status {code} before the program started",
                    prog.path.display()
                ))
            }
            Stop::Killed(s) => {
                return Err(capture_err!("{} was killed by {s} during loading", prog.path.display()))
            }
        }
    }

    // 4. Snapshot.
    let regs = t.regs()?;
    let maps = procfs::maps(pid)?;
    // The initial stack: the mapping that holds the stack pointer and the anonymous ones
    // right next to it. When ld.so makes the stack executable (glibc `elf/dl-execstack.c`,
    // `_dl_make_stack_executable`) its mprotect splits the mapping, and only the part that
    // holds the start of the stack keeps the name [stack].
    let stack_range = stack_extent(&maps, stack.sp);
    let in_stack = |m: &Mapping| stack_range.is_some_and(|(a, b)| a <= m.start && m.end <= b);
    if let Some(l) = &layout {
        for m in &maps {
            let special = (m.is_special() && m.path != "[heap]") || in_stack(m);
            let exe = m.path == exe_path;
            if !special
                && !exe
                && m.path != "[heap]"
                && (m.start < l.window.0 || m.end > l.window.1)
            {
                // Anonymous bss right after the program is part of the program.
                let after_exe = maps.iter().any(|e| e.path == exe_path && e.end == m.start);
                if !after_exe {
                    return Err(crate::error::unpackable!(
                        "could not keep the image compact: {} at {:#x}-{:#x} lies outside {:#x}-{:#x}",
                        if m.path.is_empty() { "an anonymous mapping".into() } else { m.path.to_string_lossy() },
                        m.start,
                        m.end,
                        l.window.0,
                        l.window.1
                    ));
                }
            }
        }
    }
    // READ_IMPLIES_EXEC (linux `include/uapi/linux/personality.h`): the kernel made every
    // mapping executable, so the protection does not tell code from data.
    const READ_IMPLIES_EXEC: u32 = 0x0040_0000;
    let read_implies_exec = std::fs::read_to_string(format!("/proc/{pid}/personality"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
        .is_some_and(|p| p & READ_IMPLIES_EXEC != 0);
    // File mappings without a single private (written) page hold the file's own bytes:
    // take them from the file instead of copying them out of the process.
    let unwritten = procfs::unwritten_file_mappings(pid)?;
    let mut files: std::collections::HashMap<OsString, std::sync::Arc<crate::files::Bytes>> =
        Default::default();
    for m in maps.iter().filter(|m| unwritten.contains_key(&m.start)) {
        if !files.contains_key(&m.path) {
            if let Ok(b) = crate::files::map(&m.path) {
                files.insert(m.path.clone(), std::sync::Arc::new(b));
            }
        }
    }
    let mut regions = Vec::new();
    let mut objects: Vec<Object> = Vec::new();
    let mut vdso = None;
    for m in &maps {
        match m.path.to_str().unwrap_or("") {
            "[stack]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" => continue,
            "[vdso]" => vdso = Some((m.start, m.end)),
            _ => {}
        }
        if in_stack(m) {
            continue;
        }
        let len = (m.end - m.start) as usize;
        let data = if m.prot == 0
            || (opts_skip_code && m.prot & image::PROT_EXEC != 0 && !read_implies_exec)
        {
            None
        } else if let Some(file) = unwritten
            .get(&m.start)
            .and_then(|_| files.get(&m.path))
            .filter(|f| m.offset as usize + len <= f.len())
        {
            Some(image::Data::File(file.clone(), m.offset as usize, len))
        } else if m.path.is_empty() || m.path == "[heap]" {
            // Anonymous memory: only the pages the process touched can hold anything but
            // zeros (a large bss is mostly untouched, and reading it would fault it in).
            Some(image::Data::Owned(procfs::read_resident(
                pid, mem, m.start, len,
            )?))
        } else {
            Some(image::Data::Owned(mem.read(m.start, len)?))
        };
        let origin = if m.path == "[vdso]" {
            "[vdso proxy]".to_string()
        } else {
            m.path.to_string_lossy().into_owned()
        };
        if m.is_file() && !objects.iter().any(|o| o.path.as_os_str() == m.path) {
            objects.push(Object {
                path: PathBuf::from(&m.path),
                base: m.start - m.offset,
            });
        }
        regions.push(Region {
            start: m.start,
            end: m.end,
            prot: m.prot,
            origin,
            file: m.is_file().then(|| PathBuf::from(&m.path)),
            file_offset: m.offset,
            data,
        });
    }
    let tls = match prog.arch {
        Arch::X86_64 => abi::Tls {
            base: regs.fs_base,
            ..Default::default()
        },
        Arch::I386 => {
            let mut tls = rec
                .thread_area
                .ok_or_else(|| capture_err!("ld.so set up no TLS (set_thread_area)"))?;
            tls.selector = regs.gs as u32;
            tls
        }
    };
    if let Some(tid) = rec.tid {
        rec.regs.tid_cache = find_tid_cache(mem, tls.base, rec.regs.tid_address, tid)?;
        if rec.regs.tid_cache == 0 {
            warnings.push(format!(
                "no copy of the thread ID {tid} near the thread pointer {:#x}: the packed \
                 program's glibc will not know its own thread ID",
                tls.base
            ));
        }
    }
    // The program break. While nothing has used the heap (the normal case: ld.so allocates
    // with mmap, and libc's `__curbrk` is still NULL, glibc `misc/sbrk.c`), the packed
    // program keeps the break the kernel gives each run, randomised as usual: zero here
    // says so to the stub. A heap that was used before the snapshot (--stop-at-entry) is
    // part of the image, and the stub puts the break back at its end.
    let start_brk = procfs::start_brk(pid)?;
    let brk = rec.brk.unwrap_or(start_brk).max(start_brk);
    let (start_brk, brk) = if brk > start_brk {
        (start_brk, brk)
    } else {
        (0, 0)
    };
    let (start_code, end_code, start_data, end_data) = program_ranges(prog, &maps, &exe_path);
    let enable_secure =
        crate::symbols::lookup_dynsym(std::path::Path::new(&interp_path), "__libc_enable_secure")
            .map(|v| v + ldso_base)
            .unwrap_or(0);
    // `__rseq_size` (glibc 2.35+; defined in ld.so, `sysdeps/nptl/dl-tls_init_tp.c`): the
    // stub zeroes it when this run's kernel refuses the rseq registration, as glibc does.
    // A program that reads it has its own copy (a copy relocation), which ld.so's look-up
    // finds first and everybody uses: that copy is the one to zero.
    let rseq_size = objects
        .iter()
        .find(|o| o.path == exe_path)
        .and_then(|o| crate::symbols::defined_at(&o.path, o.base, "__rseq_size"))
        .or_else(|| {
            crate::symbols::defined_at(std::path::Path::new(&interp_path), ldso_base, "__rseq_size")
        })
        .unwrap_or(0);
    // The stack is executable when ld.so made it so (glibc `elf/dl-load.c`,
    // `_dl_map_object_from_fd`: a library's PT_GNU_STACK asks for PF_X), or when the
    // program's own PT_GNU_STACK did; the output asks the kernel for the same.
    let stack_exec = maps
        .iter()
        .find(|m| m.start <= stack.sp && stack.sp < m.end)
        .map_or(prog.stack_flags.is_none_or(|f| f & PF_X != 0), |m| {
            m.prot & image::PROT_EXEC != 0
        });
    // A program without PT_GNU_STACK keeps having none (see `Image::stack_flags`).
    let stack_flags = prog
        .stack_flags
        .map(|_| PF_R | PF_W | if stack_exec { PF_X } else { 0 });
    let image = Image {
        arch: prog.arch,
        regions,
        resume_pc: regs.rip & mask(word),
        resume_kind,
        resume_dx,
        user_entry: at_entry,
        at_phdr,
        at_phnum: stack.aux(AT_PHNUM).unwrap_or(0),
        at_phent: stack.aux(AT_PHENT).unwrap_or(0),
        at_base: ldso_base,
        tls,
        regs: rec.regs,
        mm: abi::MmLayout {
            start_code,
            end_code,
            start_data,
            end_data,
            start_brk,
            brk,
        },
        enable_secure,
        rseq_size,
        secure_copies: crate::symbols::definitions(&objects, "__libc_enable_secure", &interp_path),
        fixups: Vec::new(),
        vdso: vdso.map(|(start, end)| image::Vdso {
            start,
            end,
            entries: Vec::new(),
        }),
        stack_flags,
        read_implies_exec,
        objects,
        cpu_needs: 0,
        cpu_level: String::new(),
        min_kernel: 0,
    };
    Ok(Captured {
        image,
        stack,
        warnings,
    })
}

/// Where glibc caches the thread ID that set_tid_address returned (`pd->tid`,
/// `__tls_init_tp`). Up to glibc 2.41 it is the set_tid_address argument itself; since 2.42
/// that argument is `&pd->joinstate` (which holds THREAD_STATE_JOINABLE, not the ID), and
/// `pd->tid` is another word of `struct pthread`, which starts at the thread pointer on
/// x86-64 and i386: the one 32-bit word there that holds the ID.
fn find_tid_cache(mem: &Memory, tp: u64, tid_address: u64, tid: u64) -> Result<u64> {
    let read_u32 = |a: u64| -> Result<u64> {
        let b = mem.read(a, 4)?;
        Ok(u64::from(u32::from_le_bytes(b[..4].try_into().unwrap())))
    };
    if tid_address != 0 && read_u32(tid_address)? == tid {
        return Ok(tid_address);
    }
    // glibc's struct pthread is about 2 KiB (0x9c0 bytes in 2.43 on x86-64).
    const PTHREAD_SPAN: usize = 0x1000;
    let Ok(bytes) = mem.read(tp, PTHREAD_SPAN) else {
        return Ok(0);
    };
    let hits: Vec<u64> = bytes
        .chunks_exact(4)
        .enumerate()
        .filter(|(_, c)| u64::from(u32::from_le_bytes((*c).try_into().unwrap())) == tid)
        .map(|(i, _)| tp + 4 * i as u64)
        .collect();
    Ok(if hits.len() == 1 { hits[0] } else { 0 })
}

fn mask(word: usize) -> u64 {
    if word == 4 {
        0xffff_ffff
    } else {
        u64::MAX
    }
}

/// start_code/end_code/start_data/end_data as the kernel computed them for the original
/// program (linux `fs/binfmt_elf.c`, `load_elf_binary`), from its PT_LOADs and load bias.
fn program_ranges(prog: &Program, maps: &[Mapping], exe_path: &OsStr) -> (u64, u64, u64, u64) {
    let lowest = maps
        .iter()
        .filter(|m| m.path == exe_path)
        .map(|m| m.start)
        .min()
        .unwrap_or(0);
    let first_vaddr = prog.loads.iter().map(|l| l.0).min().unwrap_or(0) & !0xfff;
    let bias = if prog.pie { lowest - first_vaddr } else { 0 };
    let (mut sc, mut ec, mut sd, mut ed) = (u64::MAX, 0, 0, 0);
    for &(vaddr, _memsz, filesz, flags) in &prog.loads {
        let k = vaddr + bias;
        if flags & 1 != 0 && k < sc {
            sc = k;
        }
        if k > sd {
            sd = k;
        }
        let end = k + filesz;
        if flags & 1 != 0 && end > ec {
            ec = end;
        }
        if end > ed {
            ed = end;
        }
    }
    if sc == u64::MAX {
        sc = 0;
    }
    (sc, ec, sd, ed)
}

/// Notes the kernel state a system call registered, at its exit stop.
fn record(
    rec: &mut Recorded,
    nrs: &Nrs,
    arch: Arch,
    enter: &tracee::Regs,
    exit: &tracee::Regs,
    mem: &Memory,
) -> Result<()> {
    let nr = enter.orig_rax;
    let ok = (exit.rax as i64) >= 0 && (arch == Arch::X86_64 || (exit.rax as u32 as i32) >= 0);
    // Arguments: rdi, rsi, rdx, r10 on x86-64; ebx, ecx, edx, esi on i386.
    let a = match arch {
        Arch::X86_64 => [enter.rdi, enter.rsi, enter.rdx, enter.r10],
        Arch::I386 => [enter.rbx, enter.rcx, enter.rdx, enter.rsi],
    };
    if nr == nrs.brk {
        rec.brk = Some(exit.rax & mask(arch.word()));
    } else if !ok {
    } else if nr == nrs.getrandom {
        // No per-capture randomness in the image: see GETRANDOM_PATTERN.
        let n = (exit.rax & mask(arch.word())) as usize;
        let fill: Vec<u8> = GETRANDOM_PATTERN.iter().copied().cycle().take(n).collect();
        mem.write(a[0], &fill)?;
    } else if nr == nrs.set_tid_address {
        rec.regs.tid_address = a[0];
        rec.tid = Some(exit.rax & mask(arch.word()));
    } else if nr == nrs.set_robust_list {
        rec.regs.robust_list_head = a[0];
        rec.regs.robust_list_len = a[1];
    } else if nr == nrs.rseq && a[2] == 0 {
        rec.regs.rseq_area = a[0];
        rec.regs.rseq_len = a[1] as u32;
        rec.regs.rseq_sig = a[3] as u32;
    } else if Some(nr) == nrs.set_thread_area {
        let d = mem.read(a[0], 16)?;
        let f = |i: usize| u32::from_le_bytes(d[i..i + 4].try_into().unwrap());
        rec.thread_area = Some(abi::Tls {
            entry: f(0),
            base: u64::from(f(4)),
            limit: f(8),
            flags: f(12),
            selector: 0,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(start: u64, end: u64, path: &str) -> Mapping {
        Mapping {
            start,
            end,
            prot: 3,
            offset: 0,
            path: path.into(),
        }
    }

    /// An i386 program at 0x56555000 with `bss` bytes of bss, ld.so and the vDSO at the
    /// top, and the stack.
    fn i386_maps(bss: u64) -> Vec<Mapping> {
        vec![
            m(0x5655_5000, 0x5655_9000, "/p"),
            m(0x5655_9000, 0x5655_9000 + bss, ""),
            m(0xf7fc_7000, 0xf7fc_9000, "[vdso]"),
            m(0xf7fc_9000, 0xf7ff_d000, "/lib/ld-linux.so.2"),
            m(0xfffd_d000, 0xffff_e000, "[stack]"),
        ]
    }

    #[test]
    fn window_lies_above_the_program_and_its_bss_when_there_is_room() {
        let (lo, hi) = choose_window(&i386_maps(1 << 20), "/p".as_ref(), &STEER_I386).unwrap();
        assert_eq!(lo, 0x5700_0000 + STEER_I386.heap_room);
        assert_eq!(hi, lo + STEER_I386.window_size);
    }

    #[test]
    fn window_never_overlaps_a_large_bss() {
        for bss in [523u64 << 20, 1536 << 20] {
            let maps = i386_maps(bss);
            let (lo, hi) = choose_window(&maps, "/p".as_ref(), &STEER_I386).unwrap();
            assert!(hi - lo >= 64 << 20);
            for x in &maps {
                assert!(
                    x.end <= lo || x.start >= hi,
                    "{bss:#x}: {lo:#x}-{hi:#x} overlaps {x:?}"
                );
            }
        }
    }

    #[test]
    fn the_stack_includes_the_parts_an_executable_stack_split_off() {
        let maps = vec![
            m(0x7fff_f7ff_0000, 0x7fff_f7ff_f000, "/lib/ld.so"),
            m(0x7fff_fffd_e000, 0x7fff_fffe_0000, ""),
            m(0x7fff_fffe_0000, 0x7fff_ffff_e000, "[stack]"),
            m(0x7fff_ffff_e000, 0x7fff_ffff_f000, ""),
        ];
        assert_eq!(
            stack_extent(&maps, 0x7fff_ffff_0000),
            Some((0x7fff_fffd_e000, 0x7fff_ffff_f000))
        );
    }

    #[test]
    fn a_program_that_leaves_no_room_is_refused() {
        let maps = vec![
            m(0x0100_0000, 0x0200_0000, "/p"),
            m(0x0200_0000, 0xf7f0_0000, ""),
            m(0xf7fc_9000, 0xf7ff_d000, "/lib/ld-linux.so.2"),
        ];
        let err = choose_window(&maps, "/p".as_ref(), &STEER_I386).unwrap_err();
        assert!(err.to_string().contains("leave no room"), "{err}");
    }
}
