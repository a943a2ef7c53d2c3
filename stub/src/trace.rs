//! `ELFPACK_TRACE=1` in the environment makes the stub report how long its restore took
//! (from reading the stack to the jump into ld.so), on stderr.
use crate::{arch::syscall6, line::Line, stack::InitialStack};
use linux_raw_sys::general as g;

const NAME: &[u8] = b"ELFPACK_TRACE=";

/// Monotonic time in nanoseconds, by system call (the vDSO is not connected yet).
fn now_ns() -> u64 {
    let mut ts = [0usize; 2];
    // SAFETY: clock_gettime(2) writes one `struct timespec` (two native words on both
    // arches for CLOCK_MONOTONIC with the native-width call).
    unsafe {
        syscall6(
            g::__NR_clock_gettime,
            [
                g::CLOCK_MONOTONIC as usize,
                ts.as_mut_ptr() as usize,
                0,
                0,
                0,
                0,
            ],
        )
    };
    ts[0] as u64 * 1_000_000_000 + ts[1] as u64
}

/// The start time, when tracing is asked for.
pub fn start(st: &InitialStack) -> Option<u64> {
    let wanted = (0..st.envc).any(|i| {
        let e = st.env(i);
        // SAFETY: environment strings are NUL-terminated; the comparison stops at the
        // first difference, before any NUL is passed.
        (0..NAME.len()).all(|k| unsafe { *e.add(k) } == NAME[k])
            && unsafe { *e.add(NAME.len()) } != b'0'
    });
    wanted.then(now_ns)
}

/// Prints `elfpack: restore took N ns, M relocations`.
pub fn finish(t0: Option<u64>, relocations: usize) {
    let Some(t0) = t0 else { return };
    Line::new()
        .push(b"elfpack: restore took ")
        .push_u64(now_ns().saturating_sub(t0))
        .push(b" ns, ")
        .push_u64(relocations as u64)
        .push(b" relocations")
        .emit();
}
