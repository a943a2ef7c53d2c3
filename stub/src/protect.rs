//! The last step before resuming: give every range its captured protection, and unmap
//! the holes that a segment covers.
//!
//! A PT_LOAD gets one protection, and the builder merges regions of different
//! protections into few segments (builder `layout.rs`). The kernel maps zero-fill
//! (bss-like) ends read-write whatever the flags (linux `fs/binfmt_elf.c`, `elf_load` via
//! `vm_brk_flags`), and the builder mapped the pages that the stub had to write (fixups in
//! RELRO, vDSO slots) read-write too.
use crate::{desc, fail, place::Place, sys};
use elfpack_stub::abi::{Descriptor, Protect, PROT_UNMAP, PROT_UNMAP_MOVED};

pub fn seal(d: &'static Descriptor, place: &Place) {
    for p in desc::table::<Protect>(d, d.protect) {
        let addr = place.at(p.addr);
        if p.prot == PROT_UNMAP_MOVED {
            if place.part_moved(p.addr) {
                // SAFETY: the range is a gap between two moved ranges of one part of the
                // image, inside the PROT_NONE room `place::randomise` reserved for it:
                // nothing else is mapped there, and munmap of part of a mapping leaves the
                // rest intact (linux `mm/mmap.c`, `do_vmi_munmap`).
                let ret = unsafe { sys::munmap(addr, p.len as usize) };
                fail::check(ret, "cannot unmap a gap in the moved image");
            }
            continue;
        }
        if p.prot == PROT_UNMAP {
            // SAFETY: the range lies between two image regions inside a segment the kernel
            // mapped from this file (builder `layout.rs`): the captured process had nothing
            // mapped there, so nothing refers to it. munmap of part of a mapping splits it
            // (linux `mm/mmap.c`, `do_vmi_munmap`), leaving the regions around it intact.
            let ret = unsafe { sys::munmap(addr, p.len as usize) };
            fail::check(ret, "cannot unmap a hole in the image");
            continue;
        }
        // SAFETY: the ranges are the image's own pages, not the stub's code or stack; the
        // stub writes nothing into them after this (linux `mm/mprotect.c`, `do_mprotect_pkey`).
        let ret = unsafe { sys::mprotect(addr, p.len as usize, p.prot) };
        fail::check(ret, "cannot set the protection of an image region");
    }
}
