//! The environment glibc 2.36's ld.so leaves to a secure (AT_SECURE) program, as data the
//! stub applies at run time and the builder compares with the captured ld.so.

/// glibc 2.36's `UNSECURE_ENVVARS` (`sysdeps/generic/unsecvars.h`, with tunables enabled,
/// so without GLIBC_TUNABLES), as glibc itself keeps it in ld.so: names separated by NULs
/// (one string, so the stub needs no relocation for it). ld.so holds these bytes followed
/// by two NULs.
pub const UNSECURE: &[u8] = b"GCONV_PATH\0GETCONF_DIR\0HOSTALIASES\0LD_AUDIT\0LD_DEBUG\0\
LD_DEBUG_OUTPUT\0LD_DYNAMIC_WEAK\0LD_HWCAP_MASK\0LD_LIBRARY_PATH\0LD_ORIGIN_PATH\0\
LD_PRELOAD\0LD_PROFILE\0LD_SHOW_AUXV\0LOCALDOMAIN\0LOCPATH\0MALLOC_TRACE\0NIS_PATH\0\
NLSPATH\0RESOLV_HOST_CONF\0RES_OPTIONS\0TMPDIR\0TZDIR";

/// The tunables of glibc 2.36 whose security level is `SXID_IGNORE` (`elf/dl-tunables.list`,
/// `sysdeps/*/dl-tunables.list`): they stay in GLIBC_TUNABLES of a secure run; every other
/// item (the default level, `SXID_ERASE`, unknown names, items without '=') is removed.
pub const KEPT_TUNABLES: &[u8] = b"glibc.malloc.top_pad\0glibc.malloc.perturb\0\
glibc.malloc.mmap_threshold\0glibc.malloc.trim_threshold\0glibc.malloc.mmap_max\0\
glibc.malloc.arena_max\0glibc.malloc.arena_test\0glibc.mem.tagging";

/// Whether ld.so's bytes hold exactly this list of unsecure variables (the list, then the
/// terminating empty name).
pub fn ld_so_has_this_list(ld_so: &[u8]) -> bool {
    let n = UNSECURE.len();
    ld_so
        .windows(n + 2)
        .any(|w| &w[..n] == UNSECURE && w[n] == 0 && w[n + 1] == 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_list() {
        let mut b = b"xx\0".to_vec();
        b.extend_from_slice(super::UNSECURE);
        b.extend_from_slice(b"\0\0yy");
        assert!(super::ld_so_has_this_list(&b));
        let mut other = b.clone();
        other[5] ^= 1;
        assert!(!super::ld_so_has_this_list(&other));
        assert!(!super::ld_so_has_this_list(super::UNSECURE));
    }
}
