//! Step 0: refuse a kernel older than the image needs.
//!
//! The packed program resumes after ld.so's own start-up checks, glibc's "kernel too old"
//! among them (`sysdeps/unix/sysv/linux/dl-sysdep.c`, `_dl_discover_osversion` against the
//! ABI tag). The builder records the newest ABI tag of the image's objects (and the stub's
//! own needs) as `min_kernel`; this step compares it with `uname`'s release.
use crate::{arch::syscall6, fail, line::Line, sys};
use elfpack_stub::abi::{parse_release, Descriptor};
use linux_raw_sys::general as g;

/// `struct new_utsname` (linux `include/uapi/linux/utsname.h`): six fields of 65 bytes.
#[repr(C)]
struct Utsname {
    fields: [[u8; 65]; 6],
}

fn push_version(line: &mut Line, v: u32) {
    line.push_u64(u64::from(v >> 16))
        .push(b".")
        .push_u64(u64::from((v >> 8) & 0xff));
}

pub fn check(d: &Descriptor) {
    if d.min_kernel == 0 {
        return;
    }
    let mut u = Utsname {
        fields: [[0; 65]; 6],
    };
    // SAFETY: uname(2) fills one `struct new_utsname` (390 bytes) at the pointer (linux
    // `kernel/sys.c`, `newuname`; i386's `__NR_uname` is the same call).
    let ret = unsafe {
        syscall6(
            g::__NR_uname,
            [&mut u as *mut Utsname as usize, 0, 0, 0, 0, 0],
        )
    };
    let release = &u.fields[2];
    let release = &release[..release.iter().position(|&b| b == 0).unwrap_or(65)];
    // A kernel whose release cannot be read is given the benefit of the doubt.
    let Some(have) = (ret == 0).then(|| parse_release(release)).flatten() else {
        return;
    };
    if have < d.min_kernel {
        let mut line = Line::new();
        line.push(b"elfpack: this program needs Linux ");
        push_version(&mut line, d.min_kernel);
        line.push(b" or later; this kernel is ").push(release);
        line.emit();
        sys::exit_group(fail::EXIT_RESTORE_FAILED);
    }
}
