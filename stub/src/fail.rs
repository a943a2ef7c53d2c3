//! Failure reporting: one line `elfpack: <what>[: <values>] (<errno name>)` on stderr,
//! then exit 127. The values say which address, function or number failed.
use crate::{line::Line, sys};

/// Exit status of a packed program whose restore failed, like a shell's "cannot execute".
pub const EXIT_RESTORE_FAILED: i32 = 127;

/// One value in a failure message.
pub enum Value<'a> {
    /// An address, printed in hexadecimal.
    Addr(u64),
    /// A number, printed in decimal.
    Num(u64),
    /// A name (a vDSO function, a field).
    Name(&'a [u8]),
}

/// Prints `elfpack: what` with `values` (", "-separated after ": "), and the errno name of
/// `err` when it is a negative system-call return; then exits 127.
pub fn fail_with(what: &str, values: &[(&str, Value)], err: isize) -> ! {
    let mut line = Line::new();
    line.push(b"elfpack: ").push(what.as_bytes());
    for (i, (label, v)) in values.iter().enumerate() {
        line.push(if i == 0 { b": " } else { b", " });
        if !label.is_empty() {
            line.push(label.as_bytes()).push(b" ");
        }
        match v {
            Value::Addr(a) => line.push_hex(*a),
            Value::Num(n) => line.push_u64(*n),
            Value::Name(n) => line.push(n),
        };
    }
    if err < 0 {
        let e = err.unsigned_abs() as u64;
        line.push(b" (");
        match elfpack_stub::errno::name(e) {
            Some(n) => line.push(n.as_bytes()),
            None => line.push(b"errno ").push_u64(e),
        };
        line.push(b")");
    }
    line.emit();
    sys::exit_group(EXIT_RESTORE_FAILED)
}

pub fn fail(what: &str, err: isize) -> ! {
    fail_with(what, &[], err)
}

/// Fails with `what` when a system call returned an error.
pub fn check(ret: isize, what: &str) -> isize {
    if ret < 0 && ret > -4096 {
        fail(what, ret)
    }
    ret
}
