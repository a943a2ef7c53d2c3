//! Makes the written file's section view consistent with its segments, so that ELF checkers
//! (`eu-elflint --gnu-ld`, `readelf -a`) accept it. It runs on the finished file and
//! changes nothing the kernel, qemu-user or the stub reads:
//!
//! * a zero-fill PT_LOAD (`p_filesz` 0) gets a file offset of its own, past every other
//!   segment's range, with its NOBITS section at the same offset. Tools match sections to
//!   segments by file offset (elfutils `src/elflint.c`, `check_sections`), and several
//!   zero-fill segments at offset 0 were matched to the wrong one. The kernel reads no
//!   file bytes for such a segment (linux `fs/binfmt_elf.c`, `elf_load`: only
//!   `vm_brk_flags`), nor does qemu-user;
//! * each writable or executable zero-fill segment also gets an empty PROGBITS section with
//!   its flags: a NOBITS section alone does not mark a segment writable for elflint;
//! * a symbol that does not fit in the section it names (an object that runs from a
//!   file-backed segment into a zero-fill one) becomes SHN_ABS: its address stays exact.
use crate::error::{other, Result};
use goblin::container::{Container, Ctx, Endian};
use goblin::elf::program_header::{ProgramHeader, PT_LOAD};
use goblin::elf::section_header::{
    SectionHeader, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHN_ABS, SHT_NOBITS, SHT_PROGBITS,
    SHT_SYMTAB,
};
use goblin::elf::sym::Sym;
use scroll::{Pread, Pwrite};
use std::fs::File;
use std::os::unix::fs::FileExt;

const PAGE: u64 = 4096;

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x / a * a)
}

/// Applies the fixes to the ELF file `file` (written by `writer::write`); returns the
/// file's size afterwards.
pub fn make_consistent(file: &File) -> Result<u64> {
    let fail = |what: &str| other!("checking the sections of the output: {what}");
    let bytes = crate::files::map_file(file).map_err(|e| fail(&e.to_string()))?;
    let bytes: &[u8] = &bytes;
    let is64 = bytes.get(4) == Some(&2);
    let ctx = Ctx::new(
        if is64 {
            Container::Big
        } else {
            Container::Little
        },
        Endian::Little,
    );
    let header: goblin::elf::Header = bytes
        .pread_with(0, Endian::Little)
        .map_err(|_| fail("header"))?;
    let (phoff, phnum, phentsize) = (
        header.e_phoff as usize,
        header.e_phnum as usize,
        header.e_phentsize as usize,
    );
    let (shoff, shnum, shentsize) = (
        header.e_shoff as usize,
        header.e_shnum as usize,
        header.e_shentsize as usize,
    );
    let mut phdrs: Vec<ProgramHeader> = (0..phnum)
        .map(|i| bytes.pread_with(phoff + i * phentsize, ctx))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| fail("program headers"))?;
    let mut shdrs: Vec<SectionHeader> = (0..shnum)
        .map(|i| bytes.pread_with(shoff + i * shentsize, ctx))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| fail("section headers"))?;
    let max_off = if is64 { u64::MAX } else { u64::from(u32::MAX) };

    // Zero-fill segments: offsets past every file-backed segment's range, each spaced by
    // its memory size.
    let mut next = phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_filesz != 0)
        .map(|p| p.p_offset.saturating_add(p.p_memsz))
        .chain([bytes.len() as u64])
        .max()
        .and_then(|v| align_up(v, PAGE))
        .ok_or_else(|| fail("offsets"))?;
    let mut extra = Vec::new();
    let image_name = shdrs
        .iter()
        .find(|s| s.sh_flags & u64::from(SHF_ALLOC) != 0)
        .map_or(0, |s| s.sh_name);
    for p in phdrs
        .iter_mut()
        .filter(|p| p.p_type == PT_LOAD && p.p_filesz == 0)
    {
        let Some(end) = align_up(p.p_memsz, PAGE).and_then(|m| next.checked_add(m)) else {
            return Ok(bytes.len() as u64);
        };
        if end > max_off {
            // An i386 file cannot express the offsets: leave it as written.
            return Ok(bytes.len() as u64);
        }
        let old = p.p_offset;
        p.p_offset = next;
        for s in shdrs
            .iter_mut()
            .filter(|s| s.sh_type == SHT_NOBITS && s.sh_addr == p.p_vaddr && s.sh_offset == old)
        {
            s.sh_offset = next;
        }
        let mut flags = 0;
        if p.p_flags & goblin::elf::program_header::PF_W != 0 {
            flags |= u64::from(SHF_WRITE);
        }
        if p.p_flags & goblin::elf::program_header::PF_X != 0 {
            flags |= u64::from(SHF_EXECINSTR);
        }
        if flags != 0 {
            extra.push(SectionHeader {
                sh_name: image_name,
                sh_type: SHT_PROGBITS,
                sh_flags: flags | u64::from(SHF_ALLOC),
                sh_addr: p.p_vaddr,
                sh_offset: next,
                sh_size: 0,
                sh_addralign: PAGE,
                ..Default::default()
            });
        }
        next = end;
    }

    // Symbols that do not fit in their section.
    let mut sym_writes: Vec<(usize, Sym)> = Vec::new();
    for st in shdrs.iter().filter(|s| s.sh_type == SHT_SYMTAB) {
        let size = if is64 { 24 } else { 16 };
        let (off, n) = (st.sh_offset as usize, st.sh_size as usize / size);
        for i in 0..n {
            let at = off + i * size;
            let mut sym: Sym = bytes.pread_with(at, ctx).map_err(|_| fail("symbols"))?;
            let idx = sym.st_shndx;
            if idx == 0 || idx >= shdrs.len() {
                continue;
            }
            let s = &shdrs[idx];
            if s.sh_flags & u64::from(SHF_ALLOC) == 0 {
                continue;
            }
            let fits = sym.st_value >= s.sh_addr
                && sym.st_value.saturating_add(sym.st_size) <= s.sh_addr.saturating_add(s.sh_size);
            if !fits {
                sym.st_shndx = SHN_ABS as usize;
                sym_writes.push((at, sym));
            }
        }
    }

    // Write: program headers, symbols, then the section headers (with the new ones) where
    // the table was if it ends the file, else after the end.
    let write = |buf: &[u8], at: u64| {
        file.write_all_at(buf, at)
            .map_err(|e| fail(&crate::program::io_reason(&e)))
    };
    for (i, p) in phdrs.iter().enumerate() {
        let mut b = vec![0u8; phentsize];
        b.pwrite_with(p.clone(), 0, ctx)
            .map_err(|_| fail("program header"))?;
        write(&b, (phoff + i * phentsize) as u64)?;
    }
    for (at, sym) in sym_writes {
        let mut b = vec![0u8; if is64 { 24 } else { 16 }];
        b.pwrite_with(sym, 0, ctx).map_err(|_| fail("symbol"))?;
        write(&b, at as u64)?;
    }
    if extra.is_empty() {
        let mut table = vec![0u8; shdrs.len() * shentsize];
        for (i, s) in shdrs.iter().enumerate() {
            table
                .pwrite_with(s.clone(), i * shentsize, ctx)
                .map_err(|_| fail("section header"))?;
        }
        write(&table, shoff as u64)?;
        return Ok(bytes.len() as u64);
    }
    shdrs.extend(extra);
    if shdrs.len() >= 0xff00 {
        return Err(crate::error::unpackable!(
            "the image needs {} sections, more than ELF allows without extensions",
            shdrs.len()
        ));
    }
    let new_shoff = if shoff + shnum * shentsize == bytes.len() {
        shoff as u64
    } else {
        align_up(bytes.len() as u64, 8).ok_or_else(|| fail("offsets"))?
    };
    let mut table = vec![0u8; shdrs.len() * shentsize];
    for (i, s) in shdrs.iter().enumerate() {
        table
            .pwrite_with(s.clone(), i * shentsize, ctx)
            .map_err(|_| fail("section header"))?;
    }
    write(&table, new_shoff)?;
    let mut h = header;
    h.e_shoff = new_shoff;
    h.e_shnum = shdrs.len() as u16;
    let mut hb = vec![0u8; header.e_ehsize as usize];
    scroll::ctx::IntoCtx::into_ctx(h, &mut hb[..], ctx);
    write(&hb, 0)?;
    Ok((bytes.len() as u64).max(new_shoff + table.len() as u64))
}
