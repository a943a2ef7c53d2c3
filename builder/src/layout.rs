//! The segment plan: which PT_LOADs the image becomes, and which ranges the stub must
//! protect (or unmap) before it resumes.
//!
//! Kernels before 6.17 refuse a program-header table larger than one page (linux
//! `fs/binfmt_elf.c`, `load_elf_phdrs`: 73 headers for ELF64, 128 for ELF32), and a
//! program with 200 libraries has over 1000 regions. So regions are merged into at most a
//! fixed number of PT_LOADs. A PT_LOAD maps its file bytes with one protection and
//! zero-fills only its end (`p_filesz < p_memsz`), so the plan works on *pieces*:
//!
//! * a run of stored pages (data), or of zero pages (zero), of one region;
//! * a PROT_NONE region (never stored: its contents are unreadable);
//! * a hole: an address range between two regions that is not part of the image.
//!
//! A segment is a run of consecutive pieces that neither starts nor ends with a hole. Its
//! file part runs up to its last data piece; zero pieces and holes inside that part are
//! stored as zero bytes, and what follows is zero-filled. The kernel maps the file part
//! with the segment's flags and the zero-filled end read-write (plus execute when the
//! flags have it: `elf_load`/`set_brk`, `vm_brk_flags`); qemu-user maps the end with the
//! segment's flags. Every piece whose mapped protection differs from the captured one gets
//! a [`Protect`] entry that the stub applies last, and every covered hole an unmap entry.
//!
//! Merging starts from one segment per piece. Merges that cost nothing (same protection,
//! nothing stored that was not before, no entry) are always made; then, while the plan is
//! over its budget, the cheapest merge is made. A merge costs the zero bytes it stores and
//! the system calls the stub makes at every start; the page-to-call rate below prefers
//! splitting at big zero runs (bss, reserved ranges) and merging across small ones.
//!
//! The [`Layout`] adds where the stub and its descriptor go. Nothing here reads or writes
//! a file: the layout is a value computed from the image alone.
use crate::analysis::Analysed;
use crate::arch::StubPlacement;
use crate::descriptor::Target;
use crate::error::{other, unpackable, Result};
use crate::image::{Fixup, Image, PROT_EXEC, PROT_READ, PROT_WRITE};
use crate::relocs::{Aslr, Part};
use crate::stub_blob::{self, Stub};
use elfpack_stub::abi::{Move, Protect, PROT_UNMAP};

pub const PAGE: u64 = 4096;
/// The most program headers an output has, whatever the input: well under one page of
/// headers (73 for ELF64, 128 for ELF32), the most kernels before 6.17 accept (linux
/// `fs/binfmt_elf.c`, `load_elf_phdrs`).
pub const MAX_PHDRS: usize = 32;
/// Program headers besides the image's and the stub's: the descriptor, PT_GNU_STACK.
const OTHER_PHDRS: usize = 2;
/// The stub's alignment, and the gap between it and the image.
const STUB_ALIGN: u64 = 0x10000;
/// The cost of one `mprotect`/`munmap` at every start, in stored zero pages.
const CALL_COST: u64 = 4;
/// The cost of one `mremap` of a moving part at every start (measured here: about 4.5 µs
/// against 1.5 µs for an `mprotect`).
const MOVE_COST: u64 = 3 * CALL_COST;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Stored pages (not all zero).
    Data,
    /// Zero pages of a readable region.
    Zero,
    /// A PROT_NONE region: zero-filled, then made inaccessible.
    Reserved,
    /// Not part of the image.
    Hole,
}

#[derive(Clone, Debug)]
pub struct Piece {
    pub start: u64,
    pub end: u64,
    pub kind: Kind,
    /// The captured protection (0 for reserved ranges and holes).
    pub prot: u32,
    /// The region the piece belongs to (none for holes).
    pub region: Option<usize>,
    /// The stub writes into it before it sets the final protections.
    pub written: bool,
    /// The part of the image it belongs to: 0 where nothing moves (no address
    /// randomisation, or a program that is not position-independent), else 1 plus its
    /// [`crate::relocs::Part`]. No segment holds two parts: the stub moves each on its own.
    pub part: u8,
}

impl Piece {
    fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// One PT_LOAD of the plan: pieces `first..last` (exclusive), of which `first..file_end`
/// are stored in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub first: usize,
    pub last: usize,
    pub file_end: usize,
    /// PROT_* bits of the PT_LOAD.
    pub prot: u32,
}

#[derive(Debug)]
pub struct Plan {
    pub pieces: Vec<Piece>,
    pub segments: Vec<Segment>,
    /// Sorted by address, adjacent entries with the same protection joined.
    pub protect: Vec<Protect>,
}

impl Plan {
    pub fn vaddr(&self, s: &Segment) -> u64 {
        self.pieces[s.first].start
    }
    pub fn memsz(&self, s: &Segment) -> u64 {
        self.pieces[s.last - 1].end - self.pieces[s.first].start
    }
    pub fn filesz(&self, s: &Segment) -> u64 {
        if s.file_end == s.first {
            0
        } else {
            self.pieces[s.file_end - 1].end - self.pieces[s.first].start
        }
    }
}

/// Splits the image into pieces. `written` are the addresses the stub writes to.
pub fn pieces(image: &Image, written: &[u64], aslr: Option<&Aslr>) -> Vec<Piece> {
    let part = |a: u64| {
        aslr.map_or(0, |x| match x.part_of(a) {
            Part::Program if !x.program_moves => 0,
            p => 1 + p as u8,
        })
    };
    let mut order: Vec<usize> = (0..image.regions.len()).collect();
    order.sort_by_key(|&i| image.regions[i].start);
    let mut written: Vec<u64> = written.to_vec();
    written.sort_unstable();
    let any_written = |a: u64, b: u64| {
        let i = written.partition_point(|&w| w < a);
        i < written.len() && written[i] < b
    };
    let mut out: Vec<Piece> = Vec::new();
    for ri in order {
        let r = &image.regions[ri];
        if let Some(prev) = out.last() {
            if prev.end < r.start {
                out.push(Piece {
                    start: prev.end,
                    end: r.start,
                    kind: Kind::Hole,
                    prot: 0,
                    region: None,
                    written: false,
                    part: part(prev.end),
                });
            }
        }
        let Some(data) = &r.data else {
            out.push(Piece {
                start: r.start,
                end: r.end,
                kind: Kind::Reserved,
                prot: 0,
                region: Some(ri),
                written: false,
                part: part(r.start),
            });
            continue;
        };
        let zero: Vec<bool> = data
            .chunks(PAGE as usize)
            .map(|p| p.iter().all(|&b| b == 0))
            .collect();
        let mut i = 0;
        while i < zero.len() {
            let mut j = i;
            while j < zero.len() && zero[j] == zero[i] {
                j += 1;
            }
            let (start, end) = (r.start + i as u64 * PAGE, r.start + j as u64 * PAGE);
            out.push(Piece {
                start,
                end,
                kind: if zero[i] { Kind::Zero } else { Kind::Data },
                prot: r.prot,
                region: Some(ri),
                written: any_written(start, end),
                part: part(start),
            });
            i = j;
        }
    }
    out
}

/// What a segment of pieces `first..last` costs, and how it is mapped.
struct Eval {
    file_end: usize,
    prot: u32,
    /// Zero pages stored in the file.
    stored_zero: u64,
    /// Entries for the stub (before joining neighbours).
    calls: u64,
    /// Ranges the stub moves (the file part and the zero-filled end of a moving segment).
    moves: u64,
}

impl Eval {
    fn cost(&self) -> u64 {
        self.stored_zero + CALL_COST * self.calls + MOVE_COST * self.moves
    }
}

/// The protection a zero-filled end gets from the kernel (read-write, plus execute when
/// the segment has it), or `None` when the kernel and qemu-user disagree for `prot`.
fn tail_prot(prot: u32) -> Option<u32> {
    let k = PROT_READ | PROT_WRITE | (prot & PROT_EXEC);
    (k == prot).then_some(k)
}

fn evaluate(p: &[Piece], first: usize, last: usize) -> Eval {
    let seg = &p[first..last];
    let file_end = first
        + seg
            .iter()
            .rposition(|x| x.kind == Kind::Data)
            .map_or(0, |i| i + 1);
    let needs_write = seg.iter().any(|x| x.written);
    let w = if needs_write { PROT_WRITE } else { 0 };
    let file = &p[first..file_end];
    let tail = &p[file_end..last];
    // Candidate flags: each captured protection present (plus write when needed), but
    // never writable and executable at once when nothing was captured so: code that
    // shares a segment with pages the stub writes is mapped writable, not executable, and
    // made executable by the stub afterwards.
    let calls_for = |prot: u32| -> u64 {
        let tp = tail_prot(prot);
        let file_calls = file
            .iter()
            .filter(|x| x.kind == Kind::Hole || x.prot != prot)
            .count();
        let tail_calls = tail
            .iter()
            .filter(|x| x.kind == Kind::Hole || Some(x.prot) != tp)
            .count();
        (file_calls + tail_calls) as u64
    };
    let mut best: Option<(u64, u32)> = None;
    let mut seen = 0u32;
    for x in seg.iter().filter(|x| x.kind != Kind::Hole && x.prot != 0) {
        let c = x.prot | w;
        let wx = PROT_WRITE | PROT_EXEC;
        if c & wx == wx && x.prot & wx != wx {
            continue;
        }
        if seen & (1 << c) == 0 {
            seen |= 1 << c;
            let calls = calls_for(c);
            if best.is_none_or(|(b, _)| calls < b) {
                best = Some((calls, c));
            }
        }
    }
    let (calls, prot) = best.unwrap_or_else(|| {
        let rw = PROT_READ | PROT_WRITE;
        (calls_for(rw), rw)
    });
    let stored_zero = file
        .iter()
        .filter(|x| x.kind != Kind::Data)
        .map(|x| x.len() / PAGE)
        .sum();
    let moves = if seg[0].part != 0 {
        u64::from(file_end > first) + u64::from(last > file_end)
    } else {
        0
    };
    Eval {
        file_end,
        prot,
        stored_zero,
        calls,
        moves,
    }
}

/// Plans at most `budget` segments (at least one per part) for `pieces`: always possible,
/// since all pieces of a part can be one segment, its holes unmapped by the stub.
pub fn plan(pieces: Vec<Piece>, budget: usize) -> Plan {
    // Initial segments: one per piece, holes excluded.
    let mut segs: Vec<(usize, usize)> = (0..pieces.len())
        .filter(|&i| pieces[i].kind != Kind::Hole)
        .map(|i| (i, i + 1))
        .collect();
    let mut cost: Vec<u64> = segs
        .iter()
        .map(|&(a, b)| evaluate(&pieces, a, b).cost())
        .collect();
    let delta = |segs: &[(usize, usize)], cost: &[u64], i: usize| -> i64 {
        let m = evaluate(&pieces, segs[i].0, segs[i + 1].1).cost();
        m as i64 - cost[i] as i64 - cost[i + 1] as i64
    };
    let mut deltas: Vec<i64> = (0..segs.len().saturating_sub(1))
        .map(|i| delta(&segs, &cost, i))
        .collect();
    loop {
        let over = segs.len() > budget;
        let pick = deltas
            .iter()
            .enumerate()
            .filter(|(i, &d)| {
                // Never across parts; free merges only between touching segments: a hole
                // is never free.
                let (a, b) = (&pieces[segs[*i].1 - 1], &pieces[segs[*i + 1].0]);
                a.part == b.part && (over || (d <= 0 && segs[*i].1 == segs[*i + 1].0))
            })
            .min_by_key(|(_, &d)| d)
            .map(|(i, _)| i);
        let Some(i) = pick else { break };
        segs[i].1 = segs[i + 1].1;
        segs.remove(i + 1);
        cost[i] = evaluate(&pieces, segs[i].0, segs[i].1).cost();
        cost.remove(i + 1);
        deltas.remove(i);
        if i < deltas.len() {
            deltas[i] = delta(&segs, &cost, i);
        }
        if i > 0 {
            deltas[i - 1] = delta(&segs, &cost, i - 1);
        }
    }
    let mut segments = Vec::new();
    let mut protect: Vec<Protect> = Vec::new();
    for &(first, last) in &segs {
        let e = evaluate(&pieces, first, last);
        let tp = tail_prot(e.prot);
        for (i, x) in pieces.iter().enumerate().take(last).skip(first) {
            let mapped = if i < e.file_end { Some(e.prot) } else { tp };
            let want = if x.kind == Kind::Hole {
                PROT_UNMAP
            } else {
                x.prot
            };
            if x.kind == Kind::Hole || Some(want) != mapped {
                match protect.last_mut() {
                    Some(p) if p.prot == want && p.addr + p.len == x.start => p.len += x.len(),
                    _ => protect.push(Protect {
                        addr: x.start,
                        len: x.len(),
                        prot: want,
                        _pad: 0,
                    }),
                }
            }
        }
        segments.push(Segment {
            first,
            last,
            file_end: e.file_end,
            prot: e.prot,
        });
    }
    Plan {
        pieces,
        segments,
        protect,
    }
}

pub fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// The output's layout: the image's segments, and the stub (relocated to its place) with
/// the descriptor after it.
pub struct Layout {
    pub plan: Plan,
    /// With address randomisation: the ranges the stub moves.
    pub moves: Vec<Move>,
    pub stub: Stub,
    pub stub_base: u64,
    /// `__elfpack_desc`: where the descriptor goes.
    pub desc_addr: u64,
    /// The most bytes the descriptor may take: the room reserved for it below the image,
    /// or no limit above.
    pub desc_room: u64,
}

/// The addresses the stub writes into before it seals the image.
pub fn written(image: &Image, fixups: &[Fixup], aslr: Option<&Aslr>) -> Vec<u64> {
    let mut w: Vec<u64> = fixups.iter().map(|f| f.addr).collect();
    if let Some(a) = aslr {
        w.extend(a.relocs.iter().map(|&(addr, _)| addr));
        w.extend(a.slots);
    }
    w.extend(
        [image.enable_secure, image.rseq_size, image.regs.tid_address]
            .into_iter()
            .filter(|&a| a != 0),
    );
    if image.regs.rseq_area != 0 {
        // The `cpu_id` field the stub sets (linux `include/uapi/linux/rseq.h`).
        w.push(image.regs.rseq_area + crate::normalize::RSEQ_CPU_ID);
    }
    w
}

/// Lays out the analysed image.
pub fn layout(a: &Analysed, target: &Target) -> Result<Layout> {
    let image = &a.image;
    let spec = image.arch.spec();
    let probe = stub_blob::relocated(image.arch, 0)?;
    let budget = MAX_PHDRS
        .checked_sub(probe.segments.len() + OTHER_PHDRS)
        .filter(|&b| b > 0)
        .ok_or_else(|| other!("internal error: the stub has too many segments"))?;
    let aslr = a.aslr.as_ref();
    let mut plan = plan(
        pieces(image, &written(image, &a.fixups, aslr), aslr),
        budget,
    );
    let moves = match aslr {
        Some(x) => {
            let (moves, gaps) = crate::relocs::moves(&plan, x);
            plan.protect.extend(gaps);
            moves
        }
        None => Vec::new(),
    };
    let reserved = crate::descriptor::reserved_len(a, target, plan.protect.len());
    let lo = image.regions.iter().map(|r| r.start).min().unwrap_or(0);
    let hi = image.regions.iter().map(|r| r.end).max().unwrap_or(0);
    let stub_base = place_stub(spec.stub_placement, lo, hi, probe.desc_offset + reserved)?;
    let stub = stub_blob::relocated(image.arch, stub_base)?;
    let desc_room = match spec.stub_placement {
        StubPlacement::Above => u64::MAX,
        StubPlacement::Below => reserved,
    };
    Ok(Layout {
        plan,
        moves,
        desc_addr: stub_base + stub.desc_offset,
        stub,
        stub_base,
        desc_room,
    })
}

/// The stub's base for an image at `lo..hi`, with `total` bytes for the stub and the
/// descriptor.
fn place_stub(placement: StubPlacement, lo: u64, hi: u64, total: u64) -> Result<u64> {
    match placement {
        StubPlacement::Above => Ok(align_up(hi, STUB_ALIGN) + STUB_ALIGN),
        StubPlacement::Below => {
            let b = (lo.saturating_sub(total + STUB_ALIGN)) & !(STUB_ALIGN - 1);
            if b < STUB_ALIGN {
                return Err(unpackable!("no room below the image for the stub"));
            }
            Ok(b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_goes_above_or_below_the_image() {
        let above = place_stub(StubPlacement::Above, 0x1000, 0x12345, 0x5000).unwrap();
        assert_eq!(above, 0x30000);
        let below = place_stub(StubPlacement::Below, 0x10_0000, 0x20_0000, 0x5000).unwrap();
        assert_eq!(below, 0xe0000);
        assert!(place_stub(StubPlacement::Below, 0x20000, 0x30000, 0x5000).is_err());
    }

    #[test]
    fn layout_places_the_stub_clear_of_the_image() {
        let image = Image::for_test(crate::program::Arch::X86_64, 0x40_0000, vec![1; 0x2000]);
        let a = Analysed {
            image,
            fixups: vec![],
            vdso: None,
            varying: vec![],
            unknown_vdso: vec![],
            aslr: None,
        };
        let lay = layout(&a, &Target::default()).unwrap();
        assert_eq!(lay.stub_base, 0x42_0000);
        assert_eq!(lay.desc_addr, lay.stub_base + lay.stub.desc_offset);
        assert_eq!(lay.desc_room, u64::MAX);
        assert_eq!(lay.plan.segments.len(), 1);
        assert!(lay.plan.protect.is_empty());
    }

    fn piece(start: u64, pages: u64, kind: Kind, prot: u32) -> Piece {
        Piece {
            start: start * PAGE,
            end: (start + pages) * PAGE,
            kind,
            prot,
            region: Some(0),
            written: false,
            part: 0,
        }
    }
    const R: u32 = PROT_READ;
    const RW: u32 = PROT_READ | PROT_WRITE;
    const RX: u32 = PROT_READ | PROT_EXEC;

    /// A library as ld.so maps it: headers, text, rodata, RELRO, data, bss.
    fn library(at: u64) -> Vec<Piece> {
        vec![
            piece(at, 2, Kind::Data, R),
            piece(at + 2, 8, Kind::Data, RX),
            piece(at + 10, 3, Kind::Data, R),
            piece(at + 13, 1, Kind::Data, R),
            piece(at + 14, 1, Kind::Data, RW),
            piece(at + 15, 40, Kind::Zero, RW),
        ]
    }

    fn check(plan: &Plan) {
        // Segments cover the pieces in order, never start or end with a hole, and every
        // hole inside a segment is unmapped by the stub.
        let mut next = 0;
        for s in &plan.segments {
            while plan.pieces[next].kind == Kind::Hole && next < s.first {
                next += 1;
            }
            assert_eq!(s.first, next);
            assert_ne!(plan.pieces[s.first].kind, Kind::Hole);
            assert_ne!(plan.pieces[s.last - 1].kind, Kind::Hole);
            assert!(plan.pieces[s.file_end..s.last]
                .iter()
                .all(|p| p.kind != Kind::Data));
            next = s.last;
        }
        for p in plan.pieces.iter().filter(|p| p.kind == Kind::Hole) {
            let inside = plan
                .segments
                .iter()
                .any(|s| plan.vaddr(s) <= p.start && p.end <= plan.vaddr(s) + plan.memsz(s));
            let unmapped = plan
                .protect
                .iter()
                .any(|e| e.prot == PROT_UNMAP && e.addr <= p.start && p.end <= e.addr + e.len);
            assert_eq!(inside, unmapped, "hole {:#x}", p.start);
        }
        // Every non-hole page ends with its captured protection.
        for (si, s) in plan.segments.iter().enumerate() {
            for i in s.first..s.last {
                let p = &plan.pieces[i];
                if p.kind == Kind::Hole {
                    continue;
                }
                let mapped = if i < s.file_end {
                    Some(s.prot)
                } else {
                    tail_prot(s.prot)
                };
                let fixed = plan
                    .protect
                    .iter()
                    .find(|e| e.addr <= p.start && p.end <= e.addr + e.len)
                    .map(|e| e.prot);
                assert_eq!(fixed.or(mapped), Some(p.prot), "segment {si} piece {i}");
            }
        }
    }

    #[test]
    fn under_budget_keeps_one_segment_per_protection() {
        let plan = plan(library(16), 32);
        check(&plan);
        // r-- and r-- merge; the rest stays apart, with the bss as the zero-filled end.
        assert_eq!(plan.segments.len(), 4);
        assert!(plan.protect.is_empty());
        let last = plan.segments.last().unwrap();
        assert_eq!(plan.filesz(last), PAGE);
        assert_eq!(plan.memsz(last), 41 * PAGE);
    }

    #[test]
    fn two_hundred_libraries_fit_the_budget_and_big_zero_runs_stay_unstored() {
        // Libraries back to back, as the capture lays them out, with one hole in the
        // middle; library 100 has a big bss (1000 pages), the others 40 pages.
        let mut pieces: Vec<Piece> = Vec::new();
        let mut at = 16;
        let mut big = 0;
        for l in 0..200 {
            if l == 150 {
                pieces.push(piece(at, 5000, Kind::Hole, 0));
                at += 5000;
            }
            let mut lib = library(at);
            if l == 100 {
                lib[5].end = lib[5].start + 1000 * PAGE;
                big = pieces.len() + 5;
            }
            at = lib[5].end / PAGE;
            pieces.extend(lib);
        }
        let plan = plan(pieces, 27);
        check(&plan);
        assert!(plan.segments.len() <= 27);
        let stored = |i: usize| plan.segments.iter().any(|s| s.first <= i && i < s.file_end);
        assert!(plan.protect.iter().all(|e| e.prot != PROT_UNMAP));
        assert!(!stored(big));
    }

    #[test]
    fn holes_are_split_first_and_unmapped_when_covered() {
        let mut pieces = library(16);
        pieces.push(piece(71, 9, Kind::Hole, 0));
        pieces.extend(library(80));
        let wide = plan(pieces.clone(), 32);
        check(&wide);
        assert!(wide.protect.iter().all(|e| e.prot != PROT_UNMAP));
        let tight = plan(pieces, 1);
        check(&tight);
        assert_eq!(tight.segments.len(), 1);
        assert!(tight.protect.iter().any(|e| e.prot == PROT_UNMAP));
    }

    #[test]
    fn written_read_only_pages_are_mapped_writable_then_sealed() {
        let mut pieces = library(16);
        pieces[3].written = true;
        let plan = plan(pieces, 32);
        check(&plan);
        let relro = plan
            .segments
            .iter()
            .find(|s| s.first <= 3 && 3 < s.last)
            .unwrap();
        assert_ne!(relro.prot & PROT_WRITE, 0);
        assert!(plan
            .protect
            .iter()
            .any(|e| e.addr == 29 * PAGE && e.prot == R));
    }
}
