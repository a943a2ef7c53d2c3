//! Step 4b: the environment of a secure (setuid, setgid, file-capability) run.
//!
//! When the kernel sets AT_SECURE, glibc's ld.so removes the variables that could steer a
//! privileged program before any of the program's code runs (glibc `elf/rtld.c`,
//! `process_envvars`: `unsetenv` of every name in `UNSECURE_ENVVARS`,
//! `sysdeps/generic/unsecvars.h`, and of `MALLOC_CHECK_` unless `/etc/suid-debug` exists),
//! and it drops the tunables that are not marked `SXID_IGNORE` from every `GLIBC_TUNABLES`
//! (`elf/dl-tunables.c`, `__tunables_init` / `parse_tunables`). In a packed program ld.so
//! ran once, at capture, in a process that was not secure; so the stub does the same here,
//! on this run's initial stack, before anything reads the environment.
//!
//! The lists are those of glibc 2.36 (Debian 12), the version elfpack captures; they were
//! checked against a setuid original run by another user (tests/e2e/hardening.rs).
//!
//! The envp array is compacted in place as glibc's `unsetenv` does (`stdlib/setenv.c`):
//! later entries move down, the NULL terminator with them, and the auxv stays where it is.
//! Nothing after `_dl_start_user` looks for the auxv behind envp: ld.so's GLRO(dl_auxv) is
//! a fixup to this run's auxv, and a dynamically linked libc does not walk envp
//! (`csu/libc-start.c` scans for the auxv only `#ifndef SHARED`).
use crate::stack::InitialStack;
use elfpack_stub::secure_env::{KEPT_TUNABLES, UNSECURE};
use linux_raw_sys::auxvec as at;

/// Whether `entry` ("NAME=value") has one of the NUL-separated `names`.
fn named_in(entry: &[u8], names: &[u8]) -> bool {
    names.split(|&c| c == 0).any(|n| named(entry, n))
}

/// The NUL-terminated string at `p` as a slice.
fn cstr<'a>(p: *const u8) -> &'a [u8] {
    // SAFETY: environment strings are NUL-terminated and live for the whole run (linux
    // `fs/binfmt_elf.c`, `create_elf_tables`).
    unsafe { core::slice::from_raw_parts(p, InitialStack::strlen(p)) }
}

/// Whether the entry "NAME=value" has the name `name` (glibc `unsetenv`: `strncmp` of the
/// name and '=' right after it). No indexing that could panic: the stub carries no panic
/// formatting code.
fn named(entry: &[u8], name: &[u8]) -> bool {
    entry.starts_with(name) && entry.get(name.len()) == Some(&b'=')
}

/// Whether `/etc/suid-debug` exists (glibc keeps MALLOC_CHECK_ then).
fn suid_debug() -> bool {
    const AT_FDCWD: isize = -100;
    const F_OK: usize = 0;
    // SAFETY: faccessat(2) only reads the NUL-terminated path; it checks existence.
    let r = unsafe {
        crate::arch::syscall6(
            linux_raw_sys::general::__NR_faccessat,
            [
                AT_FDCWD as usize,
                c"/etc/suid-debug".as_ptr() as usize,
                F_OK,
                0,
                0,
                0,
            ],
        )
    };
    r == 0
}

/// Rewrites "GLIBC_TUNABLES=a=1:b=2" in place, keeping only the items of [`KEPT_TUNABLES`]
/// in their order. The result is never longer than the input, so bytes only move towards
/// the start of the string.
fn filter_tunables(entry: *mut u8) {
    const PREFIX: usize = b"GLIBC_TUNABLES=".len();
    let len = InitialStack::strlen(entry);
    // SAFETY: `entry` is a NUL-terminated environment string of `len` bytes on the initial
    // stack, which the kernel maps writable (linux `fs/binfmt_elf.c`, `create_elf_tables`).
    let s = unsafe { core::slice::from_raw_parts_mut(entry, len + 1) };
    let mut out = PREFIX;
    let mut i = PREFIX;
    while i < len {
        let end = s
            .get(i..len)
            .and_then(|rest| rest.iter().position(|&c| c == b':'))
            .map_or(len, |p| i + p);
        let keep = s
            .get(i..end)
            .is_some_and(|item| named_in(item, KEPT_TUNABLES));
        if keep {
            if out > PREFIX {
                if let Some(b) = s.get_mut(out) {
                    *b = b':';
                }
                out += 1;
            }
            // Forwards copy: `out` <= `i`, so no byte is overwritten before it is read.
            for k in i..end {
                let c = s.get(k).copied().unwrap_or(0);
                if let Some(b) = s.get_mut(out) {
                    *b = c;
                }
                out += 1;
            }
        }
        i = end + 1;
    }
    if let Some(b) = s.get_mut(out) {
        *b = 0;
    }
}

/// Step 4b: under AT_SECURE, the environment ld.so would have left to a secure program.
pub fn scrub_environment(st: &mut InitialStack) {
    if st.aux(at::AT_SECURE).unwrap_or(0) == 0 {
        return;
    }
    let keep_malloc_check = suid_debug();
    let mut kept = 0;
    for i in 0..st.envc {
        let p = st.env(i);
        let e = cstr(p);
        let drop = named_in(e, UNSECURE) || (!keep_malloc_check && named(e, b"MALLOC_CHECK_"));
        if drop {
            continue;
        }
        if named(e, b"GLIBC_TUNABLES") {
            filter_tunables(p as *mut u8);
        }
        // SAFETY: kept <= i < envc: both slots are inside the envp array `read` counted.
        unsafe { *st.envp.add(kept) = p };
        kept += 1;
    }
    // The terminator moves down with the entries; the slots after it (up to the auxv)
    // become NULL as well, as glibc's `unsetenv` leaves them.
    for i in kept..st.envc {
        // SAFETY: i < envc, inside the envp array.
        unsafe { *st.envp.add(i) = core::ptr::null() };
    }
    st.envc = kept;
}
