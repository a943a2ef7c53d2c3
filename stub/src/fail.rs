//! Failure reporting: one line `elfpack: <what> (<errno>)` on stderr, then exit 127.
use crate::{line::Line, sys};

/// Exit status of a packed program whose restore failed, like a shell's "cannot execute".
pub const EXIT_RESTORE_FAILED: i32 = 127;

pub fn fail(what: &str, err: isize) -> ! {
    let mut line = Line::new();
    line.push(b"elfpack: ").push(what.as_bytes());
    if err < 0 {
        line.push(b" (errno ")
            .push_u64(err.unsigned_abs() as u64)
            .push(b")");
    }
    line.emit();
    sys::exit_group(EXIT_RESTORE_FAILED)
}

/// Fails with `what` when a system call returned an error.
pub fn check(ret: isize, what: &str) -> isize {
    if ret < 0 && ret > -4096 {
        fail(what, ret)
    }
    ret
}
