//! Capture: runs the program under ptrace until glibc's ld.so has loaded, relocated and
//! bound everything (the return from `_dl_start` into `_dl_start_user`), steering where it
//! places things so that the image is compact, and reads the process into a [`Snapshot`].
//!
//! Steps ([`run`]):
//! 1. spawn without ASLR (so two captures see the same addresses), stopped at ld.so's
//!    entry, and read the initial stack ([`stack`]);
//! 2. move the program (a PIE on x86-64), then the vDSO and ld.so, next to the program's
//!    window and fix the auxv, on both architectures ([`steer`]);
//! 3. replace the AT_RANDOM bytes with a fixed pattern (no per-capture randomness);
//! 4. run to the breakpoint at `_dl_start`'s return, rewriting the address hints of
//!    ld.so's `mmap(NULL, ...)` calls and recording the kernel registrations ld.so makes
//!    ([`handover`]);
//! 5. read registers, mappings and memory ([`snapshot`]); the tracee is killed and reaped.
pub mod handover;
pub mod procfs;
pub mod snapshot;
pub mod stack;
pub mod steer;
pub mod tracee;

use crate::error::{capture_err, Result};
use crate::image::Image;
use crate::program::Program;
use nix::sys::signal::Signal;
use procfs::Memory;
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracee::Tracee;

pub use handover::GETRANDOM_PATTERN;
pub use stack::{StackInfo, RANDOM_PATTERN, VARIED_AUX};

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
    /// The comparison capture: ld.so gets other values of the auxv entries it copies
    /// ([`VARIED_AUX`]) and another time-stamp counter (handover::TimeStamps), so that a
    /// comparison with the capture that saw the kernel's own values finds where it keeps
    /// them.
    pub comparison: bool,
    /// Send the program's stderr to /dev/null.
    pub quiet: bool,
    /// Answer a moved program's `brk` calls even when it is already where it goes, so that
    /// its heap lies next to it in every capture of a build with address randomisation
    /// (and moves with it).
    pub emulate_brk: bool,
    /// How far from the usual places the program and the window go: zero, or for the
    /// capture that finds the relocations, the architecture's `probe_shift`.
    pub shift: Shift,
}

/// Offsets of the program (when it is position-independent) and of the window from where
/// a capture normally puts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shift {
    pub program: u64,
    pub window: u64,
}

/// What a capture hands to the analysis: the process image, the initial stack it was
/// started with, and what the capture noticed.
pub struct Snapshot {
    pub image: Image,
    pub stack: StackInfo,
    pub warnings: Vec<crate::warning::Warning>,
}

pub fn capture(prog: &Program, opts: &Options) -> Result<Snapshot> {
    let mut t = Tracee::spawn(&prog.path, &opts.args, &opts.env, opts.quiet)?;
    let pid = t.pid.as_raw();
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
    let result = run(&mut t, prog, &mem, opts);
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

/// The tracee at ld.so's entry: registers, mappings, the initial stack and the paths of
/// the program and ld.so.
fn start(t: &Tracee, mem: &Memory, word: usize, mask: u64) -> Result<steer::Start> {
    let regs = t.regs()?;
    let maps = procfs::maps(t.pid.as_raw())?;
    let stack = stack::read_stack(mem, regs.rsp & mask, word, &maps)?;
    let aux = |tag, name| stack.aux(tag).ok_or_else(|| capture_err!("no {name}"));
    let at_entry = aux(stack::AT_ENTRY, "AT_ENTRY")?;
    let at_phdr = aux(stack::AT_PHDR, "AT_PHDR")?;
    let at_base = stack.aux(stack::AT_BASE).unwrap_or(0);
    if at_base == 0 {
        return Err(capture_err!("the kernel started no program interpreter"));
    }
    let path_of = |what: &str, hit: &dyn Fn(&procfs::Mapping) -> bool| {
        maps.iter()
            .find(|m| hit(m))
            .map(|m| m.path.clone())
            .ok_or_else(|| capture_err!("cannot find {what}'s mapping"))
    };
    let interp_path = path_of("ld.so", &|m| m.start == at_base)?;
    let exe_path = path_of("the program", &|m| m.start <= at_phdr && at_phdr < m.end)?;
    Ok(steer::Start {
        regs,
        maps,
        stack,
        at_entry,
        at_phdr,
        at_base,
        interp_path,
        exe_path,
        program_shift: 0,
    })
}

fn run(t: &mut Tracee, prog: &Program, mem: &Memory, opts: &Options) -> Result<Snapshot> {
    let spec = prog.arch.spec();
    let mut s = start(t, mem, spec.word, spec.mask)?;
    let fake_brk = if prog.pie && !opts.at_entry {
        steer::move_program(t, mem, spec, &mut s, prog.sanitizer.is_some(), opts)?
    } else {
        None
    };
    // The window is chosen as if the program were where the other captures have it.
    let unshifted = steer::shift_program(&s.maps, &s.exe_path, s.program_shift.wrapping_neg());
    let window = steer::choose_window(&unshifted, &s.exe_path, &spec.steer)?;
    let (ldso_base, cursor) =
        steer::move_vdso_and_ldso(t, mem, spec, &mut s, window.0, opts.shift.window)?;
    let window = (window.0 + opts.shift.window, window.1 + opts.shift.window);
    stack::fix_random_and_vary(mem, &mut s.stack, spec.word, opts.comparison)?;
    let mut loader = handover::Loader {
        t,
        mem,
        spec,
        prog,
        steering: steer::Steering::new(cursor, window, fake_brk),
        at_entry: s.at_entry,
        at_entry_mode: opts.at_entry,
        warnings: Vec::new(),
        clock: handover::TimeStamps::new(opts.comparison),
    };
    let handover = loader.run(s.regs)?;
    let (steering, mut warnings) = (loader.steering, loader.warnings);
    let regs = t.regs()?;
    let stack = s.stack.clone();
    let parts = snapshot::Parts {
        pid: t.pid.as_raw(),
        mem,
        spec,
        prog,
        start: s,
        ldso_base,
        steering,
        handover,
        skip_code: opts.skip_code,
    };
    let image = snapshot::take(parts, &regs, &mut warnings)?;
    Ok(Snapshot {
        image,
        stack,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::procfs::Mapping;
    use super::steer::{choose_window, stack_extent};

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
        let (lo, hi) =
            choose_window(&i386_maps(1 << 20), "/p".as_ref(), &crate::arch::I386.steer).unwrap();
        assert_eq!(lo, 0x5700_0000 + crate::arch::I386.steer.heap_room);
        assert_eq!(hi, lo + crate::arch::I386.steer.window_size);
    }

    #[test]
    fn window_never_overlaps_a_large_bss() {
        for bss in [523u64 << 20, 1536 << 20] {
            let maps = i386_maps(bss);
            let (lo, hi) = choose_window(&maps, "/p".as_ref(), &crate::arch::I386.steer).unwrap();
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
        let err = choose_window(&maps, "/p".as_ref(), &crate::arch::I386.steer).unwrap_err();
        assert!(err.to_string().contains("leave no room"), "{err}");
    }
}
