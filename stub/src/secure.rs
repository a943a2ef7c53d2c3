//! Step 3b: the environment of a secure (setuid, setgid, file-capability) run.
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
use linux_raw_sys::auxvec as at;

/// glibc 2.36's `UNSECURE_ENVVARS` (with tunables enabled, so without GLIBC_TUNABLES).
const UNSECURE: [&[u8]; 22] = [
    b"GCONV_PATH",
    b"GETCONF_DIR",
    b"HOSTALIASES",
    b"LD_AUDIT",
    b"LD_DEBUG",
    b"LD_DEBUG_OUTPUT",
    b"LD_DYNAMIC_WEAK",
    b"LD_HWCAP_MASK",
    b"LD_LIBRARY_PATH",
    b"LD_ORIGIN_PATH",
    b"LD_PRELOAD",
    b"LD_PROFILE",
    b"LD_SHOW_AUXV",
    b"LOCALDOMAIN",
    b"LOCPATH",
    b"MALLOC_TRACE",
    b"NIS_PATH",
    b"NLSPATH",
    b"RESOLV_HOST_CONF",
    b"RES_OPTIONS",
    b"TMPDIR",
    b"TZDIR",
];

/// The tunables of glibc 2.36 whose security level is `SXID_IGNORE` (`elf/dl-tunables.list`,
/// `sysdeps/*/dl-tunables.list`): they stay in GLIBC_TUNABLES of a secure run; every other
/// item (the default level, `SXID_ERASE`, unknown names, items without '=') is removed.
const KEPT_TUNABLES: [&[u8]; 8] = [
    b"glibc.malloc.top_pad",
    b"glibc.malloc.perturb",
    b"glibc.malloc.mmap_threshold",
    b"glibc.malloc.trim_threshold",
    b"glibc.malloc.mmap_max",
    b"glibc.malloc.arena_max",
    b"glibc.malloc.arena_test",
    b"glibc.mem.tagging",
];

/// The NUL-terminated string at `p` as a slice.
fn cstr<'a>(p: *const u8) -> &'a [u8] {
    // SAFETY: environment strings are NUL-terminated and live for the whole run (linux
    // `fs/binfmt_elf.c`, `create_elf_tables`).
    unsafe { core::slice::from_raw_parts(p, InitialStack::strlen(p)) }
}

/// Whether the entry "NAME=value" has the name `name` (glibc `unsetenv`: `strncmp` of the
/// name and '=' right after it).
fn named(entry: &[u8], name: &[u8]) -> bool {
    entry.len() > name.len() && entry.starts_with(name) && entry[name.len()] == b'='
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
/// in their order. The result is never longer than the input.
fn filter_tunables(entry: *mut u8) {
    const PREFIX: usize = b"GLIBC_TUNABLES=".len();
    let len = InitialStack::strlen(entry);
    // SAFETY: `entry` is a NUL-terminated environment string of `len` bytes on the initial
    // stack, which is writable; the in-place rewrite only moves bytes towards its start.
    let s = unsafe { core::slice::from_raw_parts_mut(entry, len + 1) };
    let mut out = PREFIX;
    let mut i = PREFIX;
    while i < len {
        let mut end = i;
        while end < len && s[end] != b':' {
            end += 1;
        }
        let item_len = end - i;
        let keep = {
            let item = &s[i..end];
            KEPT_TUNABLES.iter().any(|n| named(item, n))
        };
        if keep {
            if out > PREFIX {
                s[out] = b':';
                out += 1;
            }
            s.copy_within(i..end, out);
            out += item_len;
        }
        i = end + 1;
    }
    s[out] = 0;
}

/// Step 3b: under AT_SECURE, the environment ld.so would have left to a secure program.
pub fn scrub_environment(st: &mut InitialStack) {
    if st.aux(at::AT_SECURE).unwrap_or(0) == 0 {
        return;
    }
    let keep_malloc_check = suid_debug();
    let mut kept = 0;
    for i in 0..st.envc {
        let p = st.env(i);
        let e = cstr(p);
        let drop = UNSECURE.iter().any(|n| named(e, n))
            || (!keep_malloc_check && named(e, b"MALLOC_CHECK_"));
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
