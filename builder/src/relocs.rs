//! Relocations for address-space randomisation: which words of the image hold addresses,
//! and of which part.
//!
//! The image has two parts that the stub moves independently at every start: the
//! *program* (a PIE program, its bss and its heap) and the *window* (ld.so, the libraries,
//! the vDSO proxy and everything ld.so mapped). A third capture runs exactly like the
//! first, but with the program and the window at other places (`ArchSpec::steer`'s
//! `probe_shift`). Then every word is one of:
//!
//! * equal in both captures: data, left alone;
//! * larger by exactly the program's shift: an address of (or computed from) the
//!   program part, which the stub relocates by the program's slide;
//! * larger by exactly the window's shift: the same for the window;
//! * anything else: something derived from an address in a way a slide cannot redo (a
//!   hash of a pointer, a pointer stored unaligned). That is reported, not guessed.
//!
//! Nothing here guesses from values alone: a word is a relocation only when the captures
//! say so. The list is stored in the RELR encoding (`abi::relr`), per pair of parts.
use crate::capture::Shift;
use crate::error::{capture_err, other, unpackable, Result};
use crate::image::{Data, Image, Region, Vdso, PROT_EXEC, PROT_READ};
use crate::layout::{align_up, Plan, PAGE};
use elfpack_stub::abi::{relr, Move, Protect, PROT_UNMAP_MOVED};
use std::collections::HashMap;

/// One of the image's two parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Program = 0,
    Window = 1,
}

/// The image's parts and the words the stub relocates.
#[derive(Clone, Debug, Default)]
pub struct Aslr {
    /// The program part `[lo, hi)`.
    pub program: (u64, u64),
    /// The window part `[lo, hi)`.
    pub window: (u64, u64),
    /// Whether the program moves (it is position-independent).
    pub program_moves: bool,
    /// (word address, part its value points into), sorted by address.
    pub relocs: Vec<(u64, Part)>,
    /// The page of vDSO slot words next to the proxy, when the slots move with it.
    pub slots: Option<u64>,
    /// Bits of randomness of the program's place (`ArchSpec::steer`'s `rnd_bits`).
    pub rnd_bits: u32,
}

impl Aslr {
    /// The part an address of the image belongs to (ends included).
    pub fn part_of(&self, addr: u64) -> Part {
        if self.program.0 <= addr && addr <= self.program.1 {
            Part::Program
        } else {
            Part::Window
        }
    }

    /// Forgets the relocations of words that were rewritten after the comparison (zeroed
    /// as varying between runs, or reset to "not computed yet").
    pub fn forget(&mut self, addrs: &[u64]) {
        let mut sorted = addrs.to_vec();
        sorted.sort_unstable();
        self.relocs
            .retain(|(a, _)| sorted.binary_search(a).is_err());
    }

    /// The relocations of words in part `from` pointing into part `to`, RELR-encoded.
    pub fn table(&self, from: Part, to: Part, word: u64) -> Vec<u64> {
        let addrs: Vec<u64> = self
            .relocs
            .iter()
            .filter(|&&(a, t)| t == to && self.part_of(a) == from)
            .map(|&(a, _)| a)
            .collect();
        encode(&addrs, word)
    }
}

/// Encodes sorted, word-aligned addresses as RELR entries (`abi::relr`).
pub fn encode(addrs: &[u64], word: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < addrs.len() {
        out.push(addrs[i]);
        let mut base = addrs[i] + word;
        i += 1;
        loop {
            let mut bits = 0u64;
            while i < addrs.len()
                && addrs[i] < base + relr::BITMAP_WORDS * word
                && (addrs[i] - base).is_multiple_of(word)
            {
                bits |= 1 << ((addrs[i] - base) / word);
                i += 1;
            }
            if bits == 0 {
                break;
            }
            out.push((bits << 1) | 1);
            base += relr::BITMAP_WORDS * word;
        }
    }
    out
}

/// A word that changed between the captures by neither shift: its address and its two
/// values.
pub type Odd = (u64, u64, u64);

/// Compares the first capture `a` with `b`, made with the program and the window moved by
/// `shift`, and returns the parts, the relocations and the words that changed otherwise
/// (which [`explain`] checks).
pub fn find(a: &Image, b: &Image, shift: Shift) -> Result<(Aslr, Vec<Odd>)> {
    // Where there was no room to move the program, it stays in the output too.
    let shift = Shift {
        program: b.program_shift,
        ..shift
    };
    let program = a.program_range;
    let delta = |p: Part| match p {
        Part::Program => shift.program,
        Part::Window => shift.window,
    };
    let part = |r: &Region| {
        if program.0 <= r.start && r.end <= program.1 {
            Part::Program
        } else {
            Part::Window
        }
    };
    let differ = |what: &str| {
        unpackable!(
            "address randomisation: two captures at different places differ in {what}; pack with --no-aslr to keep the captured layout"
        )
    };
    if b.program_range != (program.0 + shift.program, program.1 + shift.program) {
        return Err(differ(&format!(
            "the program's range ({:#x}-{:#x}, then {:#x}-{:#x})",
            program.0, program.1, b.program_range.0, b.program_range.1
        )));
    }
    if a.regions.len() != b.regions.len() {
        return Err(differ(&format!(
            "layout ({} regions, then {})",
            a.regions.len(),
            b.regions.len()
        )));
    }
    let by_start: HashMap<u64, &Region> = b.regions.iter().map(|r| (r.start, r)).collect();
    let mask = a.arch.spec().mask;
    let w = a.arch.word();
    let mut relocs = Vec::new();
    let mut odd: Vec<Odd> = Vec::new();
    let mut window = (u64::MAX, 0);
    for ra in &a.regions {
        let p = part(ra);
        if p == Part::Window {
            window = (window.0.min(ra.start), window.1.max(ra.end));
        }
        let d = delta(p);
        let rb = by_start
            .get(&(ra.start + d))
            .filter(|rb| rb.end == ra.end + d && rb.prot == ra.prot)
            .ok_or_else(|| {
                differ(&format!(
                    "layout (nothing like {:#x}-{:#x}, {}, at {:#x})",
                    ra.start,
                    ra.end,
                    ra.origin,
                    ra.start + d
                ))
            })?;
        let (da, db) = match (&ra.data, &rb.data) {
            (None, None) => continue,
            (Some(da), Some(db)) => (da, db),
            _ => return Err(differ("layout")),
        };
        if same_bytes(da, db) {
            continue;
        }
        for (i, (wa, wb)) in da.chunks_exact(w).zip(db.chunks_exact(w)).enumerate() {
            if wa == wb {
                continue;
            }
            let word = |b: &[u8]| {
                let mut v = [0u8; 8];
                v[..w].copy_from_slice(b);
                u64::from_le_bytes(v)
            };
            let diff = word(wb).wrapping_sub(word(wa)) & mask;
            let addr = ra.start + (i * w) as u64;
            let to = if shift.program != 0 && diff == shift.program & mask {
                Part::Program
            } else if diff == shift.window & mask {
                Part::Window
            } else {
                odd.push((addr, word(wa), word(wb)));
                continue;
            };
            if ra.prot & PROT_EXEC != 0 && !a.read_implies_exec {
                return Err(unpackable!(
                    "address randomisation: {} has text relocations (an address in its code at {addr:#x}); pack with --no-aslr to keep the captured layout",
                    ra.origin
                ));
            }
            relocs.push((addr, to));
        }
    }
    relocs.sort_unstable_by_key(|&(addr, _)| addr);
    let aslr = Aslr {
        program,
        window,
        program_moves: shift.program != 0,
        relocs,
        slots: None,
        rnd_bits: a.arch.spec().steer.rnd_bits,
    };
    // The registers and addresses the descriptor holds move as the stub moves them.
    let moved = |x: u64| x.wrapping_add(delta(aslr.part_of(x)));
    let pairs = [
        (a.resume_pc, b.resume_pc),
        (a.at_base, b.at_base),
        (a.tls.base, b.tls.base),
        (a.user_entry, b.user_entry),
    ];
    if pairs.iter().any(|&(x, y)| x != 0 && moved(x) != y) {
        return Err(capture_err!(
            "the capture at other places resumed elsewhere than expected"
        ));
    }
    Ok((aslr, odd))
}

/// Refuses words that changed with the image's place by neither shift, unless they vary
/// between any two runs anyway (`varying`: a thread ID, a time stamp), which the image
/// holds as zero.
pub fn explain(odd: &[Odd], varying: &[u64], a: &Image) -> Result<()> {
    let odd: Vec<Odd> = odd
        .iter()
        .filter(|(addr, _, _)| !varying.contains(addr))
        .copied()
        .collect();
    if let Some(&(first, va, vb)) = odd.first() {
        let origin = a
            .region_of(first)
            .map(|r| r.origin.as_str())
            .filter(|o| !o.is_empty())
            .unwrap_or("an anonymous mapping");
        return Err(unpackable!(
            "address randomisation: {} word(s) change with the image's place in a way a slide cannot redo (the first at {first:#x}, in {origin}: {va:#x}, and {vb:#x} at the other place); pack with --no-aslr to keep the captured layout",
            odd.len()
        ));
    }
    Ok(())
}

/// Whether two regions' bytes are equal; the same file range is, without reading it.
fn same_bytes(a: &Data, b: &Data) -> bool {
    match (a, b) {
        (Data::File(fa, oa, la), Data::File(fb, ob, lb))
            if std::sync::Arc::ptr_eq(fa, fb) && oa == ob && la == lb =>
        {
            true
        }
        _ => **a == **b,
    }
}

/// Adds the page that holds the vDSO proxy's slot words right after the proxy, so that
/// its rip-relative jumps reach them wherever the window goes; returns its address.
pub fn add_slot_page(image: &mut Image, vdso: &Vdso) -> Result<u64> {
    let at = align_up(vdso.end, PAGE);
    let len = align_up((vdso.entries.len() * 8) as u64, PAGE).max(PAGE);
    if image
        .regions
        .iter()
        .any(|r| r.start < at + len && at < r.end)
    {
        return Err(other!(
            "internal error: no room for the vDSO slots at {at:#x}"
        ));
    }
    let pos = image.regions.partition_point(|r| r.start < at);
    image.regions.insert(
        pos,
        Region {
            start: at,
            end: at + len,
            prot: PROT_READ,
            origin: "[vdso slots]".into(),
            file: None,
            file_offset: 0,
            data: Some(Data::Owned(vec![0; len as usize])),
        },
    );
    Ok(at)
}

/// The ranges the stub moves (what the kernel mapped from each PT_LOAD of a moving part:
/// its file part, then its zero-filled end), and the gaps between them that the stub
/// unmaps once the part has moved.
pub fn moves(plan: &Plan, aslr: &Aslr) -> (Vec<Move>, Vec<Protect>) {
    let mut moves: Vec<Move> = Vec::new();
    let mut gaps = Vec::new();
    let mut last: Option<(Part, u64)> = None;
    for s in &plan.segments {
        let (lo, file, mem) = (plan.vaddr(s), plan.filesz(s), plan.memsz(s));
        let part = aslr.part_of(lo);
        if part == Part::Program && !aslr.program_moves {
            continue;
        }
        if let Some((_, end)) = last.filter(|&(p, end)| p == part && end < lo) {
            gaps.push(Protect {
                addr: end,
                len: lo - end,
                prot: PROT_UNMAP_MOVED,
                _pad: 0,
            });
        }
        if file > 0 {
            moves.push(Move {
                addr: lo,
                len: file,
            });
        }
        if mem > file {
            moves.push(Move {
                addr: lo + file,
                len: mem - file,
            });
        }
        last = Some((part, lo + mem));
    }
    (moves, gaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(entries: &[u64], word: u64) -> Vec<u64> {
        let mut v = Vec::new();
        relr::for_each(entries, word, |a| v.push(a));
        v
    }

    #[test]
    fn relr_round_trips() {
        for word in [4u64, 8] {
            let addrs: Vec<u64> = [
                0x1000u64,
                0x1000 + word,
                0x1000 + 5 * word,
                0x1000 + 64 * word,
            ]
            .into_iter()
            .chain((0..200).map(|i| 0x9000 + i * 3 * word))
            .chain([0x10_0000])
            .collect();
            let e = encode(&addrs, word);
            assert!(e.len() < addrs.len() / 2, "{} entries", e.len());
            assert_eq!(decode(&e, word), addrs);
        }
        assert!(encode(&[], 8).is_empty());
    }

    fn image(start: u64, words: &[u64]) -> Image {
        let mut i = Image::for_test(
            crate::program::Arch::X86_64,
            start,
            words.iter().flat_map(|w| w.to_le_bytes()).collect(),
        );
        i.program_range = (0x1000, 0x2000);
        i
    }

    #[test]
    fn words_that_move_with_a_part_are_relocations() {
        let shift = Shift {
            program: 0x3000,
            window: 0x20_0000,
        };
        let a = image(0x10_0000, &[7, 0x1800, 0x10_0010, 0x10_0000]);
        let mut b = image(0x30_0000, &[7, 0x4800, 0x30_0010, 0x30_0000]);
        b.program_range = (0x4000, 0x5000);
        b.program_shift = 0x3000;
        let (found, odd) = find(&a, &b, shift).unwrap();
        assert!(odd.is_empty());
        assert_eq!(
            found.relocs,
            vec![
                (0x10_0008, Part::Program),
                (0x10_0010, Part::Window),
                (0x10_0018, Part::Window)
            ]
        );
        assert_eq!(found.window, (0x10_0000, 0x10_0020));
        // A word that changed by something else is refused, unless it varies from run to
        // run anyway.
        let mut c = image(0x30_0000, &[8, 0x4800, 0x30_0010, 0x30_0000]);
        c.program_range = (0x4000, 0x5000);
        c.program_shift = 0x3000;
        let (_, odd) = find(&a, &c, shift).unwrap();
        assert_eq!(odd, vec![(0x10_0000, 7, 8)]);
        let err = explain(&odd, &[], &a).unwrap_err().to_string();
        assert!(
            err.contains("--no-aslr") && err.contains("0x100000"),
            "{err}"
        );
        assert!(explain(&odd, &[0x10_0000], &a).is_ok());
    }
}
