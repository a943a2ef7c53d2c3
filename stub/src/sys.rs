//! Typed wrappers over the raw system calls the stub makes.
use crate::arch::syscall6;
use linux_raw_sys::general as g;

pub fn write(fd: i32, buf: &[u8]) -> isize {
    // SAFETY: write(2) reads `buf.len()` bytes from a live slice.
    unsafe {
        syscall6(
            g::__NR_write,
            [fd as usize, buf.as_ptr() as usize, buf.len(), 0, 0, 0],
        )
    }
}

pub fn exit_group(code: i32) -> ! {
    // SAFETY: exit_group(2) ends the process; it does not return.
    unsafe { syscall6(g::__NR_exit_group, [code as usize, 0, 0, 0, 0, 0]) };
    #[allow(clippy::empty_loop)]
    loop {}
}

/// # Safety
/// Changing protections must not take away access that running code still needs.
pub unsafe fn mprotect(addr: usize, len: usize, prot: u32) -> isize {
    // SAFETY: forwarded to the caller.
    unsafe { syscall6(g::__NR_mprotect, [addr, len, prot as usize, 0, 0, 0]) }
}

/// # Safety
/// Nothing may use the range afterwards.
pub unsafe fn munmap(addr: usize, len: usize) -> isize {
    // SAFETY: forwarded to the caller.
    unsafe { syscall6(g::__NR_munmap, [addr, len, 0, 0, 0, 0]) }
}

/// # Safety
/// The arguments must be valid for the prctl option.
pub unsafe fn prctl(option: u32, a2: usize, a3: usize, a4: usize, a5: usize) -> isize {
    // SAFETY: forwarded to the caller.
    unsafe { syscall6(g::__NR_prctl, [option as usize, a2, a3, a4, a5, 0]) }
}

/// getrandom(2) into `buf` with GRND_NONBLOCK.
pub fn getrandom(buf: &mut [u8]) -> isize {
    const GRND_NONBLOCK: usize = 1;
    // SAFETY: getrandom(2) writes at most `buf.len()` bytes into a live, mutable slice.
    unsafe {
        syscall6(
            g::__NR_getrandom,
            [buf.as_mut_ptr() as usize, buf.len(), GRND_NONBLOCK, 0, 0, 0],
        )
    }
}
