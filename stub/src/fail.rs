//! Failure reporting: one line `elfpack: <what> (<errno>)` on stderr, then exit 127.
use crate::sys;

/// Exit status of a packed program whose restore failed, like a shell's "cannot execute".
pub const EXIT_RESTORE_FAILED: i32 = 127;

pub fn fail(what: &str, err: isize) -> ! {
    let mut buf = [0u8; 160];
    let mut n = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            if n < buf.len() {
                buf[n] = b;
                n += 1;
            }
        }
    };
    put(b"elfpack: ");
    put(what.as_bytes());
    if err < 0 {
        put(b" (errno ");
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = err.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        put(&digits[i..]);
        put(b")");
    }
    put(b"\n");
    sys::write(2, &buf[..n]);
    sys::exit_group(EXIT_RESTORE_FAILED)
}

/// Fails with `what` when a system call returned an error.
pub fn check(ret: isize, what: &str) -> isize {
    if ret < 0 && ret > -4096 {
        fail(what, ret)
    }
    ret
}
