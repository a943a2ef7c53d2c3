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
use crate::arch::ElfSizes;
use crate::error::{other, Result};
use goblin::container::{Ctx, Endian};
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

fn fail(what: &str) -> crate::error::Error {
    other!("checking the sections of the output: {what}")
}

/// The file's headers, as read.
struct Headers {
    header: goblin::elf::Header,
    ctx: Ctx,
    phoff: usize,
    phentsize: usize,
    shoff: usize,
    shnum: usize,
    shentsize: usize,
    phdrs: Vec<ProgramHeader>,
    shdrs: Vec<SectionHeader>,
}

fn read_headers(bytes: &[u8], sizes: &ElfSizes) -> Result<Headers> {
    let ctx = Ctx::new(sizes.container, Endian::Little);
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
    let phdrs: Vec<ProgramHeader> = (0..phnum)
        .map(|i| bytes.pread_with(phoff + i * phentsize, ctx))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| fail("program headers"))?;
    let shdrs: Vec<SectionHeader> = (0..shnum)
        .map(|i| bytes.pread_with(shoff + i * shentsize, ctx))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| fail("section headers"))?;
    Ok(Headers {
        header,
        ctx,
        phoff,
        phentsize,
        shoff,
        shnum,
        shentsize,
        phdrs,
        shdrs,
    })
}

/// Gives each zero-fill segment (and its NOBITS section) an offset past every
/// file-backed segment's range, each spaced by its memory size; returns the PROGBITS
/// sections that mark the writable or executable ones, or `None` when the file cannot
/// express the offsets (it is then left as written).
fn place_zero_fill(
    h: &mut Headers,
    file_len: u64,
    max_off: u64,
) -> Result<Option<Vec<SectionHeader>>> {
    let mut next = h
        .phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_filesz != 0)
        .map(|p| p.p_offset.saturating_add(p.p_memsz))
        .chain([file_len])
        .max()
        .and_then(|v| align_up(v, PAGE))
        .ok_or_else(|| fail("offsets"))?;
    let mut extra = Vec::new();
    let image_name = h
        .shdrs
        .iter()
        .find(|s| s.sh_flags & u64::from(SHF_ALLOC) != 0)
        .map_or(0, |s| s.sh_name);
    for p in h
        .phdrs
        .iter_mut()
        .filter(|p| p.p_type == PT_LOAD && p.p_filesz == 0)
    {
        let Some(end) = align_up(p.p_memsz, PAGE).and_then(|m| next.checked_add(m)) else {
            return Ok(None);
        };
        if end > max_off {
            // An i386 file cannot express the offsets: leave it as written.
            return Ok(None);
        }
        let old = p.p_offset;
        p.p_offset = next;
        for s in h
            .shdrs
            .iter_mut()
            .filter(|s| s.sh_type == SHT_NOBITS && s.sh_addr == p.p_vaddr && s.sh_offset == old)
        {
            s.sh_offset = next;
        }
        if let Some(marker) = marker_section(p, image_name, next) {
            extra.push(marker);
        }
        next = end;
    }
    Ok(Some(extra))
}

/// The empty PROGBITS section that marks a writable or executable zero-fill segment.
fn marker_section(p: &ProgramHeader, name: usize, offset: u64) -> Option<SectionHeader> {
    let mut flags = 0;
    if p.p_flags & goblin::elf::program_header::PF_W != 0 {
        flags |= u64::from(SHF_WRITE);
    }
    if p.p_flags & goblin::elf::program_header::PF_X != 0 {
        flags |= u64::from(SHF_EXECINSTR);
    }
    (flags != 0).then(|| SectionHeader {
        sh_name: name,
        sh_type: SHT_PROGBITS,
        sh_flags: flags | u64::from(SHF_ALLOC),
        sh_addr: p.p_vaddr,
        sh_offset: offset,
        sh_size: 0,
        sh_addralign: PAGE,
        ..Default::default()
    })
}

/// Symbols that do not fit in their section, made SHN_ABS: (file offset, symbol).
fn misfit_symbols(bytes: &[u8], h: &Headers, size: usize) -> Result<Vec<(usize, Sym)>> {
    let mut sym_writes: Vec<(usize, Sym)> = Vec::new();
    for st in h.shdrs.iter().filter(|s| s.sh_type == SHT_SYMTAB) {
        let (off, n) = (st.sh_offset as usize, st.sh_size as usize / size);
        for i in 0..n {
            let at = off + i * size;
            let mut sym: Sym = bytes.pread_with(at, h.ctx).map_err(|_| fail("symbols"))?;
            let idx = sym.st_shndx;
            if idx == 0 || idx >= h.shdrs.len() {
                continue;
            }
            let s = &h.shdrs[idx];
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
    Ok(sym_writes)
}

fn write(file: &File, buf: &[u8], at: u64) -> Result<()> {
    file.write_all_at(buf, at)
        .map_err(crate::error::Error::Write)
}

fn section_table(h: &Headers, shdrs: &[SectionHeader]) -> Result<Vec<u8>> {
    let mut table = vec![0u8; shdrs.len() * h.shentsize];
    for (i, s) in shdrs.iter().enumerate() {
        table
            .pwrite_with(s.clone(), i * h.shentsize, h.ctx)
            .map_err(|_| fail("section header"))?;
    }
    Ok(table)
}

/// Applies the fixes to the ELF file `file` (written by `writer::write`, of the class
/// `sizes` describes); returns the file's size afterwards.
pub fn make_consistent(file: &File, sizes: &ElfSizes) -> Result<u64> {
    let bytes = crate::files::map_file(file).map_err(|e| fail(&e.to_string()))?;
    let bytes: &[u8] = &bytes;
    let file_len = bytes.len() as u64;
    let mut h = read_headers(bytes, sizes)?;
    let Some(extra) = place_zero_fill(&mut h, file_len, sizes.max_offset)? else {
        return Ok(file_len);
    };
    let sym_writes = misfit_symbols(bytes, &h, sizes.sym)?;
    // Write: program headers, symbols, then the section headers (with the new ones) where
    // the table was if it ends the file, else after the end.
    for (i, p) in h.phdrs.iter().enumerate() {
        let mut b = vec![0u8; h.phentsize];
        b.pwrite_with(p.clone(), 0, h.ctx)
            .map_err(|_| fail("program header"))?;
        write(file, &b, (h.phoff + i * h.phentsize) as u64)?;
    }
    for (at, sym) in sym_writes {
        let mut b = vec![0u8; sizes.sym];
        b.pwrite_with(sym, 0, h.ctx).map_err(|_| fail("symbol"))?;
        write(file, &b, at as u64)?;
    }
    if extra.is_empty() {
        write(file, &section_table(&h, &h.shdrs)?, h.shoff as u64)?;
        return Ok(file_len);
    }
    let mut shdrs = h.shdrs.clone();
    shdrs.extend(extra);
    if shdrs.len() >= 0xff00 {
        return Err(crate::error::unpackable!(
            "the image needs {} sections, more than ELF allows without extensions",
            shdrs.len()
        ));
    }
    let new_shoff = if h.shoff + h.shnum * h.shentsize == bytes.len() {
        h.shoff as u64
    } else {
        align_up(file_len, 8).ok_or_else(|| fail("offsets"))?
    };
    let table = section_table(&h, &shdrs)?;
    write(file, &table, new_shoff)?;
    let mut header = h.header;
    header.e_shoff = new_shoff;
    header.e_shnum = shdrs.len() as u16;
    let mut hb = vec![0u8; h.header.e_ehsize as usize];
    scroll::ctx::IntoCtx::into_ctx(header, &mut hb[..], h.ctx);
    write(file, &hb, 0)?;
    Ok(file_len.max(new_shoff + table.len() as u64))
}
