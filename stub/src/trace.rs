//! `ELFPACK_TRACE=1` in the environment makes the stub report how long its restore took
//! (from reading the stack to the jump into ld.so), on stderr.
use crate::{arch::syscall6, stack::InitialStack, sys};
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

/// Prints `elfpack: restore took N ns`.
pub fn finish(t0: Option<u64>) {
    let Some(t0) = t0 else { return };
    let ns = now_ns().saturating_sub(t0);
    let mut buf = [0u8; 64];
    let prefix = b"elfpack: restore took ";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut n = prefix.len();
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = ns;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        buf[n] = d;
        n += 1;
    }
    for &c in b" ns\n" {
        buf[n] = c;
        n += 1;
    }
    sys::write(2, &buf[..n]);
}
