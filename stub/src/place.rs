//! Step 2: address-space randomisation. The image's two parts (builder `relocs.rs`) get
//! new random places, as the kernel would have placed the original's: the window (ld.so,
//! the libraries, their data and TLS) where `mmap(NULL)` puts it, which is where the
//! kernel puts the original's libraries (linux `mm/util.c`, `arch_pick_mmap_layout`, with
//! `mmap_rnd_bits` of entropy); the program part, for a position-independent program, at a
//! random page offset from its captured place with as many bits as the kernel gives a PIE
//! program (linux `fs/binfmt_elf.c`, `load_elf_binary`: `ELF_ET_DYN_BASE` plus
//! `arch_mmap_rnd()`). Each part's PT_LOAD ranges are moved there with `mremap`, which
//! keeps the file's page-cache pages shared, and then the words that hold addresses are
//! relocated.
//!
//! Nothing moves in a file packed with `--no-aslr`, or when this run's personality has
//! ADDR_NO_RANDOMIZE (`setarch -R`), which turns the kernel's randomisation off for the
//! original too (linux `fs/binfmt_elf.c`, PF_RANDOMIZE).
//!
//! Every later step asks [`Place::at`] where a captured address is now.
use crate::{arch, desc, fail, stack::InitialStack, sys};
use elfpack_stub::abi::{relr, Aslr, Descriptor, Move, ASLR_ON, ASLR_PROGRAM_MOVES};
use linux_raw_sys::general as g;

const PAGE: usize = 4096;
/// `ADDR_NO_RANDOMIZE` (linux `include/uapi/linux/personality.h`).
const ADDR_NO_RANDOMIZE: usize = 0x0040000;
/// personality(0xffffffff) reports the persona without changing it (linux
/// `kernel/exec_domain.c`, `ksys_personality`).
const PERSONALITY_QUERY: usize = 0xffff_ffff;
/// Pages of the random gap between the program and its break: the kernel randomises the
/// start of the break within 32 MiB on x86, for 64-bit and 32-bit programs (linux
/// `arch/x86/kernel/process.c`, `arch_randomize_brk`).
const BRK_PAGES: usize = 0x0200_0000 / PAGE;

/// One part of the image: its captured range (ends included) and how far it moved.
#[derive(Clone, Copy)]
struct Part {
    lo: u64,
    hi: u64,
    slide: usize,
}

impl Part {
    fn holds(&self, addr: u64) -> bool {
        self.lo <= addr && addr <= self.hi
    }
}

/// Where the image lies in this run.
pub struct Place {
    program: Part,
    window: Part,
    /// A random page offset for the start of the program break, when the image moved.
    pub brk_gap: usize,
    /// Relocated words, for `ELFPACK_TRACE`.
    pub relocated: usize,
}

impl Place {
    fn fixed(a: &Aslr) -> Place {
        Place {
            program: Part {
                lo: a.program_lo,
                hi: a.program_hi,
                slide: 0,
            },
            window: Part {
                lo: a.window_lo,
                hi: a.window_hi,
                slide: 0,
            },
            brk_gap: 0,
            relocated: 0,
        }
    }

    /// How far the part that holds `addr` moved (0 for an address in neither).
    fn slide(&self, addr: u64) -> usize {
        if self.program.holds(addr) {
            self.program.slide
        } else if self.window.holds(addr) {
            self.window.slide
        } else {
            0
        }
    }

    /// Where the word or object captured at `addr` is in this run: an address inside one
    /// of the image's parts moves with it; any other (0, the stub's, the stack's) stays.
    pub fn at(&self, addr: u64) -> usize {
        (addr as usize).wrapping_add(self.slide(addr))
    }

    /// Whether any part of the image moved (the break then goes after the program).
    pub fn moved(&self) -> bool {
        self.program.slide != 0 || self.window.slide != 0
    }

    /// Whether the part that holds `addr` moved in this run.
    pub fn part_moved(&self, addr: u64) -> bool {
        self.slide(addr) != 0
    }

    /// The captured end of the program part, in this run.
    pub fn program_end(&self) -> usize {
        self.at(self.program.hi)
    }
}

/// Whether this run asked for no randomisation.
fn no_randomize() -> bool {
    // SAFETY: personality(0xffffffff) only reads the persona.
    let p = unsafe { arch::syscall6(g::__NR_personality, [PERSONALITY_QUERY, 0, 0, 0, 0, 0]) };
    p >= 0 && (p as usize) & ADDR_NO_RANDOMIZE != 0
}

/// A random word: getrandom(2), or where the kernel has none (before 3.17) or its pool is
/// not ready, a mix of this run's AT_RANDOM bytes.
fn random(st: &InitialStack) -> u64 {
    let mut b = [0u8; 8];
    if sys::getrandom(&mut b) == 8 {
        return u64::from_le_bytes(b);
    }
    // splitmix64's finaliser over both halves of AT_RANDOM, so that the slide shares no
    // bits with the canary or the pointer guard that glibc takes from them verbatim.
    let mut z = (st.random_word(0) as u64) ^ (st.random_word(1) as u64).rotate_left(32);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Reserves `len` bytes with no access, at `hint` if that range is free, else where the
/// kernel chooses; returns the address, or `None` when the kernel has no room (an address
/// space limit, `ulimit -v`, counts the reservation while the image is still mapped where
/// the file put it).
fn reserve(hint: usize, len: usize) -> Option<usize> {
    let flags = (g::MAP_PRIVATE | g::MAP_ANONYMOUS | g::MAP_NORESERVE) as usize;
    // SAFETY: a new anonymous mapping without MAP_FIXED replaces nothing (linux
    // `mm/mmap.c`, `do_mmap`: a hint is only taken when the range is free).
    let r = unsafe {
        arch::syscall6(
            arch::NR_MMAP,
            [hint, len, g::PROT_NONE as usize, flags, usize::MAX, 0],
        )
    };
    (!(-4095..0).contains(&r)).then_some(r as usize)
}

/// Step 2: chooses this run's places, moves the image there and relocates it.
pub fn randomise(d: &'static Descriptor, st: &InitialStack) -> Place {
    let a = &d.aslr;
    let mut place = Place::fixed(a);
    if a.flags & ASLR_ON == 0 || no_randomize() {
        return place;
    }
    let len = |p: &Part| (p.hi - p.lo) as usize;
    // Where there is no room, the part stays where the file put it: the program runs as
    // packed with --no-aslr rather than not at all.
    if let Some(w) = reserve(0, len(&place.window)) {
        place.window.slide = w.wrapping_sub(a.window_lo as usize);
    }
    let r = random(st);
    if a.flags & ASLR_PROGRAM_MOVES != 0 {
        let pages = (r & ((1u64 << a.program_bits) - 1)) as usize;
        let hint = (a.program_lo as usize).wrapping_add(pages * PAGE);
        if let Some(p) = reserve(hint, len(&place.program)) {
            place.program.slide = p.wrapping_sub(a.program_lo as usize);
        }
    }
    if !place.moved() {
        return place;
    }
    place.brk_gap = ((r >> 40) as usize % BRK_PAGES) * PAGE;
    for m in desc::table::<Move>(d, a.moves) {
        let to = place.at(m.addr);
        if to == m.addr as usize {
            continue;
        }
        let flags = (g::MREMAP_MAYMOVE | g::MREMAP_FIXED) as usize;
        // SAFETY: `m` is one range the kernel mapped from a PT_LOAD of this file, inside
        // one mapping (builder `relocs.rs`, `moves`), so mremap may move it (linux
        // `mm/mremap.c`, `vma_to_resize`); the target lies in a reservation made above,
        // which MREMAP_FIXED replaces. Nothing points into the range yet but the image's
        // own words, which the relocations below fix.
        let ret = unsafe {
            arch::syscall6(
                g::__NR_mremap,
                [
                    m.addr as usize,
                    m.len as usize,
                    m.len as usize,
                    flags,
                    to,
                    0,
                ],
            )
        };
        if ret as usize != to {
            fail::fail_with(
                "cannot move the image",
                &[("from", fail::Value::Addr(m.addr))],
                ret,
            );
        }
    }
    let parts = [place.program, place.window];
    let word = core::mem::size_of::<usize>() as u64;
    for (i, t) in a.relocs.iter().enumerate() {
        let (from, to) = (parts[i / 2], parts[i % 2]);
        if to.slide == 0 {
            // Its words keep their values: writing them would only fault their pages in.
            continue;
        }
        let mut n = 0;
        relr::for_each(desc::table::<u64>(d, *t), word, |addr| {
            let p = (addr as usize).wrapping_add(from.slide) as *mut usize;
            // SAFETY: the builder lists only word-aligned words of the image's stored
            // pages in part `from`, which has just moved by `from.slide`, and maps their
            // pages writable until `protect::seal` (builder `layout.rs`, `written`).
            unsafe { p.write(p.read().wrapping_add(to.slide)) };
            n += 1;
        });
        place.relocated += n;
    }
    place
}
