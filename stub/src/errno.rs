//! Names of the errno values a failing system call of the stub can return (Linux's
//! generic numbering, `include/uapi/asm-generic/errno-base.h` and `errno.h`, the same on
//! x86-64 and i386), for its one-line failure messages.

/// The symbolic name of errno `e` (positive), or `None` for a number without one here.
pub fn name(e: u64) -> Option<&'static str> {
    Some(match e {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        4 => "EINTR",
        5 => "EIO",
        7 => "E2BIG",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        22 => "EINVAL",
        24 => "EMFILE",
        28 => "ENOSPC",
        34 => "ERANGE",
        38 => "ENOSYS",
        95 => "EOPNOTSUPP",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(super::name(22), Some("EINVAL"));
        assert_eq!(super::name(1), Some("EPERM"));
        assert_eq!(super::name(38), Some("ENOSYS"));
        assert_eq!(super::name(4095), None);
    }
}
