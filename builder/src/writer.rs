//! ELF emission, the only stage that writes OUTPUT: the segments of the [`Layout`], the
//! stub and the encoded descriptor become the bytes of the packed executable.
//!
//! The output is an ET_EXEC with no PT_INTERP. Every image region becomes PT_LOAD segments
//! mapped straight from the file (page-aligned offsets), except runs of zero pages, which
//! become zero-fill segments that take no file space; the stub and the descriptor follow
//! at the address the layout chose. After the segments come a section header per segment
//! (so that tools know what is code), the symbol table and the `.elfpack` document
//! (`sections.rs` then makes the section view consistent for ELF checkers). The output
//! depends only on the image, so equal images give byte-identical files.
use crate::analysis::Analysed;
use crate::arch::ElfSizes;
use crate::descriptor::{self, Encoded, Target};
use crate::error::{other, unpackable, Error, Result};
use crate::image::{Image, PROT_EXEC, PROT_READ, PROT_WRITE};
use crate::layout::{self, align_up, Kind, Layout, PAGE};
use crate::symbols::ImageSymbol;
use goblin::container::{Ctx, Endian};
use goblin::elf::program_header::{ProgramHeader, PF_R, PF_W, PF_X, PT_GNU_STACK, PT_LOAD};
use goblin::elf::section_header::{
    SectionHeader, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHN_ABS, SHT_NOBITS, SHT_PROGBITS,
    SHT_STRTAB, SHT_SYMTAB,
};
use goblin::elf::sym::{Sym, STB_GLOBAL, STB_LOCAL};
use goblin::elf::Header;
use scroll::ctx::IntoCtx;
use scroll::Pwrite;
use std::borrow::Cow;
use std::os::unix::fs::FileExt;

/// The largest program-header table any kernel reads (linux `fs/binfmt_elf.c`,
/// `load_elf_phdrs`; kernels before 6.17 also refuse more than a page).
const MAX_PHDR_BYTES: u64 = 65536;

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
    /// File contents as (offset in the segment, bytes), borrowed from the image, the stub
    /// or the descriptor; what no part covers reads as zero.
    parts: Vec<(u64, Cow<'a, [u8]>)>,
    flags: u32,
}

fn pf(prot: u32) -> u32 {
    (if prot & PROT_READ != 0 { PF_R } else { 0 })
        | (if prot & PROT_WRITE != 0 { PF_W } else { 0 })
        | (if prot & PROT_EXEC != 0 { PF_X } else { 0 })
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

/// Puts the vDSO proxy's jumps over the bytes of the image's copy of the vDSO.
fn apply_proxy(segs: &mut [Seg], proxy: &[(u64, [u8; 6])]) -> Result<()> {
    for (entry, code) in proxy {
        let end = entry + code.len() as u64;
        let part = segs.iter_mut().find_map(|s| {
            let vaddr = s.vaddr;
            s.parts
                .iter_mut()
                .find(|(at, b)| vaddr + at <= *entry && end <= vaddr + at + b.len() as u64)
                .map(|(at, b)| (vaddr + *at, b))
        });
        let Some((start, bytes)) = part else {
            return Err(other!("cannot patch the vDSO proxy at {entry:#x}"));
        };
        let off = (entry - start) as usize;
        bytes.to_mut()[off..off + code.len()].copy_from_slice(code);
    }
    Ok(())
}

/// All segments of the output, in address order: the image's (with the vDSO proxy), the
/// stub's and the descriptor's.
fn all_segments<'a>(image: &'a Image, lay: &'a Layout, desc: Encoded) -> Result<Vec<Seg<'a>>> {
    let mut all = image_segments(image, &lay.plan);
    apply_proxy(&mut all, &desc.proxy)?;
    for (off, data, memsz, flags) in &lay.stub.segments {
        all.push(Seg {
            vaddr: lay.stub_base + off,
            memsz: *memsz,
            filesz: data.len() as u64,
            parts: vec![(0, Cow::Borrowed(data))],
            flags: *flags,
        });
    }
    let len = desc.bytes.len() as u64;
    all.push(Seg {
        vaddr: lay.desc_addr,
        memsz: len,
        filesz: len,
        parts: vec![(0, Cow::Owned(desc.bytes))],
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
    Ok(all)
}

fn write_at(file: &std::fs::File, bytes: &[u8], at: u64) -> Result<()> {
    file.write_all_at(bytes, at).map_err(Error::Write)
}

/// Writes each segment's bytes from file offset `start` on, at an offset congruent to its
/// address modulo the page size; returns their program headers and the end of the last.
fn write_segments(
    file: &std::fs::File,
    all: &[Seg],
    start: u64,
    stats: &mut Stats,
) -> Result<(Vec<ProgramHeader>, u64)> {
    let mut end = start;
    let mut phdrs = Vec::new();
    for s in all {
        let offset = if s.filesz == 0 {
            0
        } else {
            let off = align_up(end, PAGE) + (s.vaddr % PAGE);
            for (at, bytes) in &s.parts {
                write_at(file, bytes, off + at)?;
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
    Ok((phdrs, end))
}

/// The (stored, zero) bytes of each region in the plan's segments.
fn region_usage(image: &Image, plan: &layout::Plan) -> Vec<(u64, u64)> {
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
    usage
}

/// Writes the packed file for the analysed image into `file` (from offset 0), with `symbols` in a
/// symbol table and the document `meta` returns (given the sizes and the (stored, zero)
/// bytes of each region) in the non-loaded section `.elfpack`.
pub fn write(
    file: &std::fs::File,
    a: &Analysed,
    target: &Target,
    symbols: &[ImageSymbol],
    meta: impl FnOnce(&Image, &Stats, &[(u64, u64)]) -> Vec<u8>,
) -> Result<Stats> {
    let image = &a.image;
    let lay = layout::layout(a, target)?;
    let desc = descriptor::encode(a, target, &lay)?;
    let all = all_segments(image, &lay, desc)?;
    let sizes = &image.arch.spec().elf;
    let ctx = Ctx::new(sizes.container, Endian::Little);
    // Program headers: the segments' and PT_GNU_STACK's room.
    let phnum = all.len() as u64 + 1;
    if phnum * sizes.phdr > MAX_PHDR_BYTES {
        return Err(unpackable!(
            "the image needs {phnum} segments, more than the kernel accepts"
        ));
    }
    // The headers are written last, at offset 0; segment bytes go straight to the file.
    let mut head = vec![0u8; (sizes.ehdr + phnum * sizes.phdr) as usize];
    let mut stats = Stats {
        stub_size: lay.stub.size,
        stub_base: lay.stub_base,
        segments: all.len(),
        ..Default::default()
    };
    let (mut phdrs, end) = write_segments(file, &all, head.len() as u64, &mut stats)?;
    let offsets: Vec<u64> = phdrs.iter().map(|p| p.p_offset).collect();
    if let Some(flags) = image.stack_flags {
        phdrs.push(ProgramHeader {
            p_type: PT_GNU_STACK,
            p_flags: flags,
            p_align: 16,
            ..Default::default()
        });
    }
    for (i, p) in phdrs.into_iter().enumerate() {
        head.pwrite_with(p, (sizes.ehdr + i as u64 * sizes.phdr) as usize, ctx)
            .map_err(|e| other!("writing program headers: {e}"))?;
    }
    let doc = meta(image, &stats, &region_usage(image, &lay.plan));
    // Everything after the segments: symbols, the document, section headers.
    let mut out = Vec::new();
    let (shoff, shnum, shstrndx) =
        append_sections(&mut out, end, sizes, &all, &offsets, symbols, &doc)?;
    write_at(file, &out, end)?;
    let mut h = Header::new(ctx);
    h.e_type = goblin::elf::header::ET_EXEC;
    h.e_machine = image.arch.e_machine();
    h.e_entry = lay.stub_base + lay.stub.entry;
    h.e_phoff = sizes.ehdr;
    // PT_GNU_STACK's entry is counted (PT_NULL) even when the image has none.
    h.e_phnum = phnum as u16;
    h.e_shoff = shoff;
    h.e_shnum = shnum;
    h.e_shstrndx = shstrndx;
    h.into_ctx(&mut head[..sizes.ehdr as usize], ctx);
    write_at(file, &head, 0)?;
    stats.file_size = crate::sections::make_consistent(file, sizes)?;
    Ok(stats)
}

/// The sections after the segments, built in `out`, which the file holds at offset
/// `base`.
struct Tail {
    out: Vec<u8>,
    base: u64,
    shstr: Vec<u8>,
    shdrs: Vec<SectionHeader>,
}

impl Tail {
    /// Adds `n` to the section-name table; returns its offset there.
    fn name(&mut self, n: &str) -> usize {
        let at = self.shstr.len();
        self.shstr.extend_from_slice(n.as_bytes());
        self.shstr.push(0);
        at
    }

    /// The offset in `out` of the next 8-byte aligned file offset.
    fn aligned8(&self) -> usize {
        (align_up(self.base + self.out.len() as u64, 8) - self.base) as usize
    }

    /// Appends `bytes` as a section of `sh_type` named `name`.
    fn append(&mut self, name: &str, sh_type: u32, bytes: &[u8]) {
        let sh_name = self.name(name);
        self.append_named(sh_name, sh_type, bytes);
    }

    /// Appends `bytes` as a section of `sh_type` whose name is at `sh_name`.
    fn append_named(&mut self, sh_name: usize, sh_type: u32, bytes: &[u8]) {
        let at = self.out.len();
        self.out.extend_from_slice(bytes);
        self.shdrs.push(SectionHeader {
            sh_name,
            sh_type,
            sh_offset: self.base + at as u64,
            sh_size: bytes.len() as u64,
            sh_addralign: 1,
            ..Default::default()
        });
    }
}

/// One section per segment, named `.image`: PROGBITS at the segment's file offset, or
/// NOBITS for a zero-fill one.
fn segment_sections(tail: &mut Tail, segs: &[Seg], offsets: &[u64]) {
    let image_name = tail.name(".image");
    for (s, &offset) in segs.iter().zip(offsets) {
        let mut flags = u64::from(SHF_ALLOC);
        if s.flags & PF_W != 0 {
            flags |= u64::from(SHF_WRITE);
        }
        if s.flags & PF_X != 0 {
            flags |= u64::from(SHF_EXECINSTR);
        }
        let file_backed = s.filesz != 0;
        tail.shdrs.push(SectionHeader {
            sh_name: image_name,
            sh_type: if file_backed {
                SHT_PROGBITS
            } else {
                SHT_NOBITS
            },
            sh_flags: flags,
            sh_addr: s.vaddr,
            sh_offset: offset,
            sh_size: if file_backed { s.filesz } else { s.memsz },
            sh_addralign: PAGE,
            ..Default::default()
        });
    }
}

/// The symbol table (locals first) and its string table, symbols pointing at the
/// section of the segment that holds them.
fn symbol_table(
    tail: &mut Tail,
    sizes: &ElfSizes,
    segs: &[Seg],
    symbols: &[ImageSymbol],
) -> Result<()> {
    let ctx = Ctx::new(sizes.container, Endian::Little);
    let section_of = |addr: u64| -> usize {
        segs.iter()
            .position(|s| s.vaddr <= addr && addr < s.vaddr + s.memsz)
            .map_or(SHN_ABS as usize, |i| i + 1)
    };
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
    let symtab_off = tail.aligned8();
    let count = entries.len();
    tail.out.resize(symtab_off + count * sizes.sym, 0);
    for (i, e) in entries.into_iter().enumerate() {
        tail.out
            .pwrite_with(e, symtab_off + i * sizes.sym, ctx)
            .map_err(|e| other!("writing symbols: {e}"))?;
    }
    // The string table follows as the section after the symbol table.
    let strtab_index = tail.shdrs.len() as u32 + 1;
    let sh_name = tail.name(".symtab");
    tail.shdrs.push(SectionHeader {
        sh_name,
        sh_type: SHT_SYMTAB,
        sh_offset: tail.base + symtab_off as u64,
        sh_size: (count * sizes.sym) as u64,
        sh_link: strtab_index,
        sh_info: locals.len() as u32 + 1,
        sh_addralign: 8,
        sh_entsize: sizes.sym as u64,
        ..Default::default()
    });
    tail.append(".strtab", SHT_STRTAB, &strtab);
    Ok(())
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
    let ctx = Ctx::new(sizes.container, Endian::Little);
    let mut tail = Tail {
        out: std::mem::take(out),
        base,
        shstr: vec![0],
        shdrs: vec![SectionHeader::default()],
    };
    segment_sections(&mut tail, segs, offsets);
    if !symbols.is_empty() {
        symbol_table(&mut tail, sizes, segs, symbols)?;
    }
    tail.append(crate::meta::SECTION, SHT_PROGBITS, doc);
    let shstrndx = tail.shdrs.len();
    // The name table names itself.
    let sh_name = tail.name(".shstrtab");
    let shstr = std::mem::take(&mut tail.shstr);
    tail.append_named(sh_name, SHT_STRTAB, &shstr);
    if tail.shdrs.len() >= 0xff00 {
        return Err(unpackable!("too many sections ({})", tail.shdrs.len()));
    }
    let shoff = tail.aligned8();
    let n = tail.shdrs.len();
    tail.out.resize(shoff + n * sizes.shdr, 0);
    for (i, sh) in tail.shdrs.into_iter().enumerate() {
        tail.out
            .pwrite_with(sh, shoff + i * sizes.shdr, ctx)
            .map_err(|e| other!("writing section headers: {e}"))?;
    }
    *out = tail.out;
    Ok((base + shoff as u64, n as u16, shstrndx as u16))
}
