//! The ELF writer: image + stub → the bytes of the packed executable.
//!
//! The output is an ET_EXEC with no PT_INTERP and no sections. Every image region becomes
//! PT_LOAD segments mapped straight from the file (page-aligned offsets), except runs of
//! zero pages, which become zero-fill segments that take no file space. The stub and the
//! descriptor follow at an address no region uses. The output depends only on the image,
//! so equal images give byte-identical files.
use crate::arch::{ElfSizes, StubPlacement};
use crate::error::{other, Result};
use crate::image::{Image, PROT_EXEC, PROT_READ, PROT_WRITE};
use crate::stub_blob;
use crate::symbols::ImageSymbol;
use elfpack_stub::abi::{self, bytes_of, Descriptor, Protect, Table, VdsoSlot};
use goblin::container::{Ctx, Endian};
use goblin::elf::program_header::{ProgramHeader, PF_R, PF_W, PF_X, PT_GNU_STACK, PT_LOAD};
use goblin::elf::Header;
use scroll::ctx::IntoCtx;
use scroll::Pwrite;
use std::borrow::Cow;
use std::os::unix::fs::FileExt;

use crate::layout::{self, Kind, PAGE};

/// The most program headers an output has, whatever the input: well under one page of
/// headers (73 for ELF64, 128 for ELF32), the most kernels before 6.17 accept (linux
/// `fs/binfmt_elf.c`, `load_elf_phdrs`).
pub const MAX_PHDRS: usize = 32;

/// Sizes, for `-v` and `inspect`.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub file_size: u64,
    pub stored: u64,
    pub zero: u64,
    pub segments: usize,
    pub stub_size: u64,
    pub stub_base: u64,
}

struct Seg<'a> {
    vaddr: u64,
    memsz: u64,
    filesz: u64,
    /// File contents as (offset in the segment, bytes), borrowed from the image or owned
    /// (stub, descriptor); what no part covers reads as zero.
    parts: Vec<(u64, Cow<'a, [u8]>)>,
    flags: u32,
}

fn pf(prot: u32) -> u32 {
    (if prot & PROT_READ != 0 { PF_R } else { 0 })
        | (if prot & PROT_WRITE != 0 { PF_W } else { 0 })
        | (if prot & PROT_EXEC != 0 { PF_X } else { 0 })
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// The addresses the stub writes into before it seals the image.
fn written(image: &Image) -> Vec<u64> {
    let mut w: Vec<u64> = image.fixups.iter().map(|f| f.addr).collect();
    w.extend(
        [image.enable_secure, image.rseq_size, image.regs.tid_address]
            .into_iter()
            .filter(|&a| a != 0),
    );
    if image.regs.rseq_area != 0 {
        w.push(image.regs.rseq_area + 4);
    }
    w
}

/// The segment plan for `image`, with at most `budget` segments.
fn plan(image: &Image, budget: usize) -> layout::Plan {
    layout::plan(layout::pieces(image, &written(image)), budget)
}

/// The segments of a plan, with their bytes borrowed from the image.
fn image_segments<'a>(image: &'a Image, plan: &layout::Plan) -> Vec<Seg<'a>> {
    let mut out = Vec::new();
    for s in &plan.segments {
        let vaddr = plan.vaddr(s);
        let mut parts: Vec<(u64, Cow<'a, [u8]>)> = Vec::new();
        // The region and address range of the last part, to join pieces that follow.
        let mut last: Option<(usize, u64, u64)> = None;
        for p in &plan.pieces[s.first..s.file_end] {
            if p.kind != Kind::Data {
                continue;
            }
            let ri = p.region.expect("data pieces belong to a region");
            let r = &image.regions[ri];
            let data = r.data.as_ref().expect("data pieces have data");
            let from = match last {
                Some((lr, start, end)) if lr == ri && end == p.start => {
                    parts.pop();
                    start
                }
                _ => p.start,
            };
            let (a, b) = ((from - r.start) as usize, (p.end - r.start) as usize);
            parts.push((from - vaddr, Cow::Borrowed(&data[a..b])));
            last = Some((ri, from, p.end));
        }
        out.push(Seg {
            vaddr,
            memsz: plan.memsz(s),
            filesz: plan.filesz(s),
            parts,
            flags: pf(s.prot),
        });
    }
    out
}

/// The descriptor blob: header and tables, laid out for address `at`.
struct Blob {
    bytes: Vec<u8>,
}

impl Blob {
    fn align(&mut self) {
        while !self.bytes.len().is_multiple_of(8) {
            self.bytes.push(0);
        }
    }
    fn table<T: abi::Plain>(&mut self, items: &[T]) -> Table {
        self.align();
        let offset = self.bytes.len() as u64;
        for it in items {
            self.bytes.extend_from_slice(bytes_of(it));
        }
        Table {
            offset,
            count: items.len() as u64,
        }
    }
}

/// Writes the packed file for `image` into `file` (from offset 0), with `symbols` in a symbol table and the document
/// `meta` returns (given the sizes and the (stored, zero) bytes of each region) in the
/// non-loaded section `.elfpack`.
pub fn write(
    file: &std::fs::File,
    image: &mut Image,
    symbols: &[ImageSymbol],
    meta: impl FnOnce(&Image, &Stats, &[(u64, u64)]) -> Vec<u8>,
) -> Result<Stats> {
    let arch = image.arch;
    let vdso_entries = image
        .vdso
        .as_ref()
        .map(|v| v.entries.clone())
        .unwrap_or_default();

    // Place the stub: above the image on x86-64 (the image's window is there, and the vDSO
    // slots must be within reach of rip-relative jumps), below it on i386 (above lies the
    // stack).
    let lo = image.regions.iter().map(|r| r.start).min().unwrap_or(0);
    let hi = image.regions.iter().map(|r| r.end).max().unwrap_or(0);
    let probe = stub_blob::relocated(arch, 0)?;
    let strings_len: usize = image
        .fixups
        .iter()
        .filter_map(|f| f.string.as_ref())
        .map(Vec::len)
        .sum::<usize>()
        + image.cpu_level.len()
        + 1;
    // Program headers: the image's segments, the stub's, the descriptor, PT_GNU_STACK.
    let budget = MAX_PHDRS
        .checked_sub(probe.segments.len() + 2)
        .filter(|&b| b > 0)
        .ok_or_else(|| other!("internal error: the stub has too many segments"))?;
    let protect_estimate = plan(image, budget).protect.len();
    let blob_estimate = abi::DESCRIPTOR_SIZE
        + image.fixups.len() * 24
        + vdso_entries.len() * (16 + 8)
        + (protect_estimate + 1) * 24
        + strings_len
        + 64;
    let total = probe.desc_offset + align_up(blob_estimate as u64, PAGE);
    let stub_base = match arch.spec().stub_placement {
        StubPlacement::Above => align_up(hi, 0x10000) + 0x10000,
        StubPlacement::Below => {
            let b = (lo.saturating_sub(total + 0x10000)) & !0xffff;
            if b < 0x10000 {
                return Err(other!("no room below the image for the stub"));
            }
            b
        }
    };
    let stub = stub_blob::relocated(arch, stub_base)?;
    let desc_addr = stub_base + stub.desc_offset;

    // The descriptor blob.
    let mut blob = Blob {
        bytes: vec![0u8; abi::DESCRIPTOR_SIZE],
    };
    let mut strings: Vec<u8> = Vec::new();
    let mut fixups = Vec::new();
    for f in &image.fixups {
        let mut arg = f.arg;
        if let Some(s) = &f.string {
            arg = strings.len() as u32;
            strings.extend_from_slice(s);
        }
        fixups.push(abi::Fixup {
            addr: f.addr,
            kind: f.kind,
            arg,
            offset: f.offset,
        });
    }
    let cpu_level_name = strings.len() as u64;
    strings.extend_from_slice(image.cpu_level.as_bytes());
    strings.push(0);
    let fixups_t = blob.table(&fixups);
    // Slot words come first in a table of their own, so their addresses are known before
    // the slot table is written.
    blob.align();
    let slots_at = blob.bytes.len() as u64;
    blob.bytes
        .resize(blob.bytes.len() + vdso_entries.len() * 8, 0);
    let slot_addr = |i: usize| desc_addr + slots_at + 8 * i as u64;
    let slots: Vec<VdsoSlot> = vdso_entries
        .iter()
        .enumerate()
        .map(|(i, e)| VdsoSlot {
            slot: slot_addr(i),
            func: e.func,
            _pad: 0,
        })
        .collect();
    let slots_t = blob.table(&slots);
    crate::vdso::patch(
        image,
        &vdso_entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.addr, slot_addr(i)))
            .collect::<Vec<_>>(),
    )?;
    let image: &Image = image;
    let plan = plan(image, budget);
    let segs = image_segments(image, &plan);
    let mut protect = plan.protect.clone();
    // The descriptor (with the vDSO slots) becomes read-only once the stub is done.
    let blob_len_final = align_up(
        (blob.bytes.len() + (protect.len() + 1) * 24 + strings.len() + 16) as u64,
        PAGE,
    );
    protect.push(Protect {
        addr: desc_addr,
        len: blob_len_final,
        prot: PROT_READ,
        _pad: 0,
    });
    let protect_t = blob.table(&protect);
    blob.align();
    let strings_t = Table {
        offset: blob.bytes.len() as u64,
        count: strings.len() as u64,
    };
    blob.bytes.extend_from_slice(&strings);
    blob.bytes.resize(blob_len_final as usize, 0);
    if stub.desc_offset + blob_len_final > total
        && arch.spec().stub_placement == StubPlacement::Below
    {
        return Err(other!(
            "internal error: the descriptor outgrew the room reserved below the image"
        ));
    }
    let d = Descriptor {
        magic: abi::MAGIC,
        version: abi::FORMAT_VERSION,
        arch: u32::from(arch.e_machine()),
        resume_pc: image.resume_pc,
        user_entry: image.user_entry,
        at_phdr: image.at_phdr,
        at_phnum: image.at_phnum,
        at_phent: image.at_phent,
        at_base: image.at_base,
        tls: image.tls,
        regs: image.regs,
        mm: image.mm,
        enable_secure: image.enable_secure,
        cpu_needs: image.cpu_needs,
        fixups: fixups_t,
        vdso_slots: slots_t,
        protect: protect_t,
        strings: strings_t,
        cpu_level_name,
        resume_kind: image.resume_kind,
        resume_dx: image.resume_dx,
        rseq_size: image.rseq_size,
        min_kernel: image.min_kernel,
        _pad: 0,
    };
    blob.bytes[..abi::DESCRIPTOR_SIZE].copy_from_slice(bytes_of(&d));

    // All segments, in address order.
    let mut all: Vec<Seg> = segs;
    for (off, data, memsz, flags) in stub.segments {
        all.push(Seg {
            vaddr: stub_base + off,
            memsz,
            filesz: data.len() as u64,
            parts: vec![(0, data.into())],
            flags,
        });
    }
    all.push(Seg {
        vaddr: desc_addr,
        memsz: blob_len_final,
        filesz: blob_len_final,
        parts: vec![(0, Cow::Owned(blob.bytes))],
        flags: PF_R | PF_W,
    });
    all.sort_by_key(|s| s.vaddr);
    for w in all.windows(2) {
        if w[0].vaddr + w[0].memsz > w[1].vaddr {
            return Err(other!(
                "internal error: segments overlap at {:#x}",
                w[1].vaddr
            ));
        }
    }

    // The file: ELF header and program headers, then each segment's bytes at an offset
    // congruent to its address modulo the page size.
    let sizes = &arch.spec().elf;
    let (container, ehsize, phentsize) = (sizes.container, sizes.ehdr, sizes.phdr);
    let ctx = Ctx::new(container, Endian::Little);
    let phnum = all.len() as u64 + 1;
    if phnum * phentsize > 65536 {
        return Err(other!(
            "the image needs {phnum} segments, more than the kernel accepts"
        ));
    }
    // The headers are written last, at offset 0; segment bytes go straight to the file.
    let mut head = vec![0u8; (ehsize + phnum * phentsize) as usize];
    let mut end = head.len() as u64;
    let mut phdrs = Vec::new();
    let mut stats = Stats {
        stub_size: stub.size,
        stub_base,
        ..Default::default()
    };
    for s in &all {
        let offset = if s.filesz == 0 {
            0
        } else {
            let off = align_up(end, PAGE) + (s.vaddr % PAGE);
            for (at, bytes) in &s.parts {
                file.write_all_at(bytes, off + at)
                    .map_err(|e| other!("writing the output: {e}"))?;
            }
            end = off + s.filesz;
            off
        };
        stats.stored += s.filesz;
        stats.zero += s.memsz - s.filesz;
        phdrs.push(ProgramHeader {
            p_type: PT_LOAD,
            p_flags: s.flags,
            p_offset: offset,
            p_vaddr: s.vaddr,
            p_paddr: s.vaddr,
            p_filesz: s.filesz,
            p_memsz: s.memsz,
            p_align: PAGE,
        });
    }
    if let Some(flags) = image.stack_flags {
        phdrs.push(ProgramHeader {
            p_type: PT_GNU_STACK,
            p_flags: flags,
            p_align: 16,
            ..Default::default()
        });
    }
    let mut h = Header::new(ctx);
    h.e_type = goblin::elf::header::ET_EXEC;
    h.e_machine = arch.e_machine();
    h.e_entry = stub_base + stub.entry;
    h.e_phoff = ehsize;
    h.e_phnum = phnum as u16;
    let offsets: Vec<u64> = phdrs.iter().map(|p| p.p_offset).collect();
    for (i, p) in phdrs.into_iter().enumerate() {
        head.pwrite_with(p, (ehsize + i as u64 * phentsize) as usize, ctx)
            .map_err(|e| other!("writing program headers: {e}"))?;
    }
    stats.segments = all.len();
    let mut usage = vec![(0u64, 0u64); image.regions.len()];
    for s in &plan.segments {
        for (i, p) in plan.pieces.iter().enumerate().take(s.last).skip(s.first) {
            if let Some(r) = p.region {
                let len = p.end - p.start;
                if i < s.file_end {
                    usage[r].0 += len;
                } else {
                    usage[r].1 += len;
                }
            }
        }
    }
    let doc = meta(image, &stats, &usage);
    // Everything after the segments: symbols, the document, section headers.
    let tail_at = end;
    let mut out = Vec::new();
    let (shoff, shnum, shstrndx) =
        append_sections(&mut out, tail_at, sizes, &all, &offsets, symbols, &doc)?;
    file.write_all_at(&out, tail_at)
        .map_err(|e| other!("writing the output: {e}"))?;
    h.e_shoff = shoff;
    h.e_shnum = shnum;
    h.e_shstrndx = shstrndx;
    h.into_ctx(&mut head[..ehsize as usize], ctx);
    file.write_all_at(&head, 0)
        .map_err(|e| other!("writing the output: {e}"))?;
    stats.file_size = tail_at + out.len() as u64;
    Ok(stats)
}

/// Builds, in `out` (which the file holds at offset `base`), the section headers (one per
/// segment, so that tools know what is code), the symbol table and the `.elfpack`
/// document; returns (e_shoff, e_shnum, e_shstrndx).
fn append_sections(
    out: &mut Vec<u8>,
    base: u64,
    sizes: &ElfSizes,
    segs: &[Seg],
    offsets: &[u64],
    symbols: &[ImageSymbol],
    doc: &[u8],
) -> Result<(u64, u16, u16)> {
    use goblin::elf::section_header::{
        SectionHeader, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHN_ABS, SHT_NOBITS, SHT_PROGBITS,
        SHT_STRTAB, SHT_SYMTAB,
    };
    use goblin::elf::sym::{Sym, STB_GLOBAL, STB_LOCAL};
    let ctx = Ctx::new(sizes.container, Endian::Little);
    let (symsize, shsize) = (sizes.sym, sizes.shdr);
    let mut shstr: Vec<u8> = vec![0];
    let mut name = |n: &str| {
        let at = shstr.len();
        shstr.extend_from_slice(n.as_bytes());
        shstr.push(0);
        at
    };
    let mut shdrs = vec![SectionHeader::default()];
    let image_name = name(".image");
    for s in segs {
        let mut flags = u64::from(SHF_ALLOC);
        if s.flags & PF_W != 0 {
            flags |= u64::from(SHF_WRITE);
        }
        if s.flags & PF_X != 0 {
            flags |= u64::from(SHF_EXECINSTR);
        }
        let file_backed = s.filesz != 0;
        shdrs.push(SectionHeader {
            sh_name: image_name,
            sh_type: if file_backed {
                SHT_PROGBITS
            } else {
                SHT_NOBITS
            },
            sh_flags: flags,
            sh_addr: s.vaddr,
            sh_offset: 0,
            sh_size: if file_backed { s.filesz } else { s.memsz },
            sh_addralign: PAGE,
            ..Default::default()
        });
    }
    for (i, off) in offsets.iter().enumerate().take(segs.len()) {
        shdrs[i + 1].sh_offset = *off;
    }
    // `out` starts at file offset `base`: local offsets are aligned as file offsets.
    let aligned8 = |len: usize| (align_up(base + len as u64, 8) - base) as usize;
    let section_of = |addr: u64| -> usize {
        segs.iter()
            .position(|s| s.vaddr <= addr && addr < s.vaddr + s.memsz)
            .map_or(SHN_ABS as usize, |i| i + 1)
    };
    if !symbols.is_empty() {
        let mut strtab: Vec<u8> = vec![0];
        let mut entries: Vec<Sym> = vec![Sym::default()];
        let (locals, globals): (Vec<&ImageSymbol>, Vec<&ImageSymbol>) =
            symbols.iter().partition(|s| !s.global);
        for s in locals.iter().chain(globals.iter()) {
            let at = strtab.len();
            strtab.extend_from_slice(s.name.as_bytes());
            strtab.push(0);
            entries.push(Sym {
                st_name: at,
                st_info: ((if s.global { STB_GLOBAL } else { STB_LOCAL }) << 4) | s.kind,
                st_other: 0,
                st_shndx: section_of(s.addr),
                st_value: s.addr,
                st_size: s.size,
            });
        }
        let symtab_off = aligned8(out.len());
        out.resize(symtab_off + entries.len() * symsize, 0);
        for (i, e) in entries.into_iter().enumerate() {
            out.pwrite_with(e, symtab_off + i * symsize, ctx)
                .map_err(|e| other!("writing symbols: {e}"))?;
        }
        let strtab_off = out.len();
        out.extend_from_slice(&strtab);
        let strtab_index = shdrs.len() as u32 + 1;
        shdrs.push(SectionHeader {
            sh_name: name(".symtab"),
            sh_type: SHT_SYMTAB,
            sh_offset: base + symtab_off as u64,
            sh_size: ((locals.len() + globals.len() + 1) * symsize) as u64,
            sh_link: strtab_index,
            sh_info: locals.len() as u32 + 1,
            sh_addralign: 8,
            sh_entsize: symsize as u64,
            ..Default::default()
        });
        shdrs.push(SectionHeader {
            sh_name: name(".strtab"),
            sh_type: SHT_STRTAB,
            sh_offset: base + strtab_off as u64,
            sh_size: strtab.len() as u64,
            sh_addralign: 1,
            ..Default::default()
        });
    }
    let doc_off = out.len();
    out.extend_from_slice(doc);
    shdrs.push(SectionHeader {
        sh_name: name(crate::meta::SECTION),
        sh_type: SHT_PROGBITS,
        sh_offset: base + doc_off as u64,
        sh_size: doc.len() as u64,
        sh_addralign: 1,
        ..Default::default()
    });
    let shstrndx = shdrs.len();
    let shstr_name = name(".shstrtab");
    let shstr_off = out.len();
    out.extend_from_slice(&shstr);
    shdrs.push(SectionHeader {
        sh_name: shstr_name,
        sh_type: SHT_STRTAB,
        sh_offset: base + shstr_off as u64,
        sh_size: shstr.len() as u64,
        sh_addralign: 1,
        ..Default::default()
    });
    if shdrs.len() >= 0xff00 {
        return Err(other!("too many sections ({})", shdrs.len()));
    }
    let shoff = aligned8(out.len());
    out.resize(shoff + shdrs.len() * shsize, 0);
    let n = shdrs.len();
    for (i, sh) in shdrs.into_iter().enumerate() {
        out.pwrite_with(sh, shoff + i * shsize, ctx)
            .map_err(|e| other!("writing section headers: {e}"))?;
    }
    Ok((base + shoff as u64, n as u16, shstrndx as u16))
}
