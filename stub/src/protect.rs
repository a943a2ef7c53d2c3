//! The last step before resuming: give every range its captured protection.
//!
//! The kernel maps zero-fill (bss-like) segments read-write whatever their flags (linux
//! `fs/binfmt_elf.c`, `elf_load` via `vm_brk_flags`), and the builder mapped the pages that
//! the stub had to write (fixups in RELRO, vDSO slots) read-write too.
use crate::{desc, fail, sys};
use elfpack_stub::abi::{Descriptor, Protect};

pub fn seal(d: &'static Descriptor) {
    for p in desc::table::<Protect>(d, d.protect) {
        // SAFETY: the ranges are the image's own pages, not the stub's code or stack.
        let ret = unsafe { sys::mprotect(p.addr as usize, p.len as usize, p.prot) };
        fail::check(ret, "cannot set the protection of an image region");
    }
}
