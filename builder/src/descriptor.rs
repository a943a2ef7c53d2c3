//! Descriptor encoding (pure): the image's restore data as the stub reads it at
//! `__elfpack_desc`: the [`abi::Descriptor`] header, then its tables (fixups, vDSO slot
//! words, vDSO slots, protections, the moves and relocations of address randomisation)
//! and the string area, with the jumps that turn the captured vDSO's functions into the
//! proxy's entries.
use crate::analysis::Analysed;
use crate::error::{other, Result};
use crate::image::{Image, PROT_READ};
use crate::layout::{align_up, Layout, MAX_PHDRS, PAGE};
use crate::relocs::{Aslr, Part};
use elfpack_stub::abi::{self, bytes_of, Protect, Table, VdsoSlot};
use std::mem::size_of;

/// Bytes a slot word takes (the stub stores a function address in it).
const SLOT_WORD: usize = size_of::<u64>();
/// The most padding the tables can need (8-byte alignment before the protection table
/// and before the strings).
const PADDING: usize = 16;
/// What the room reserved for the descriptor adds to the sizes it knows beforehand.
const RESERVE_SLACK: usize = 64;

/// What the packed program requires of the machine it runs on.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// CPU features (`abi::cpu` bits) the image assumes.
    pub cpu_needs: u64,
    /// The CPU level's name, for the stub's message.
    pub cpu_level: String,
    /// The oldest kernel the image runs on (`abi::kernel_version`).
    pub min_kernel: u32,
}

/// The descriptor, ready to be stored at the layout's `desc_addr`.
pub struct Encoded {
    /// The descriptor and its tables, padded to whole pages.
    pub bytes: Vec<u8>,
    /// The proxy's jumps: (entry address, instruction), which replace the first bytes of
    /// each vDSO function in the image's copy.
    pub proxy: Vec<(u64, [u8; 6])>,
}

/// The room the layout reserves for the descriptor before it is encoded: an upper
/// bound of its length, from the number of each table's entries (the protections of a
/// plan of the image's segments) and the strings.
pub fn reserved_len(a: &Analysed, target: &Target, protect: usize) -> u64 {
    let len = abi::DESCRIPTOR_SIZE
        + a.fixups.len() * size_of::<abi::Fixup>()
        + vdso_entries(a).len() * (size_of::<VdsoSlot>() + SLOT_WORD)
        + (protect + 1) * size_of::<Protect>()
        + strings_len(a, target)
        + a.aslr.as_ref().map_or(0, aslr_len)
        + RESERVE_SLACK;
    align_up(len as u64, PAGE)
}

/// The most bytes the tables of address randomisation take: at most one RELR entry per
/// relocation (and alignment for each table), and for each segment up to two moves and a
/// gap to unmap. A bound, so that the relocations are encoded once, by [`encode`].
fn aslr_len(x: &Aslr) -> usize {
    (x.relocs.len() + PAIRS.len()) * size_of::<u64>()
        + MAX_PHDRS * (2 * size_of::<abi::Move>() + size_of::<Protect>())
}

/// The relocation tables' order in [`abi::Aslr::relocs`]: (part of the word, part it
/// points into).
const PAIRS: [(Part, Part); 4] = [
    (Part::Program, Part::Program),
    (Part::Program, Part::Window),
    (Part::Window, Part::Program),
    (Part::Window, Part::Window),
];

/// The vDSO proxy's entries.
fn vdso_entries(a: &Analysed) -> &[crate::image::VdsoEntry] {
    a.vdso.as_ref().map_or(&[][..], |v| &v.entries[..])
}

fn strings_len(a: &Analysed, target: &Target) -> usize {
    let fixup_strings: usize = a
        .fixups
        .iter()
        .filter_map(|f| f.string.as_ref())
        .map(Vec::len)
        .sum();
    fixup_strings + target.cpu_level.len() + 1
}

/// The descriptor blob under construction.
struct Blob {
    bytes: Vec<u8>,
}

impl Blob {
    fn align(&mut self) {
        while !self.bytes.len().is_multiple_of(8) {
            self.bytes.push(0);
        }
    }
    fn table<T: bytemuck::Pod>(&mut self, items: &[T]) -> Table {
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

/// The fixup table and the string area: a fixup's string is replaced by its offset in
/// the area, which ends with the CPU level's name; returns that name's offset too.
fn fixups_and_strings(a: &Analysed, target: &Target) -> (Vec<abi::Fixup>, Vec<u8>, u64) {
    let mut strings: Vec<u8> = Vec::new();
    let mut fixups = Vec::new();
    for f in &a.fixups {
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
    strings.extend_from_slice(target.cpu_level.as_bytes());
    strings.push(0);
    (fixups, strings, cpu_level_name)
}

/// Encodes the descriptor for `a` at `layout.desc_addr`.
pub fn encode(a: &Analysed, target: &Target, layout: &Layout) -> Result<Encoded> {
    let entries = vdso_entries(a);
    let desc_addr = layout.desc_addr;
    let mut blob = Blob {
        bytes: vec![0u8; abi::DESCRIPTOR_SIZE],
    };
    let (fixups, strings, cpu_level_name) = fixups_and_strings(a, target);
    let fixups_t = blob.table(&fixups);
    // Slot words come first in a table of their own, so their addresses are known before
    // the slot table is written; or, where they move with the proxy, in its page of the
    // image.
    blob.align();
    let slots_at = blob.bytes.len() as u64;
    let in_image = a.aslr.as_ref().and_then(|x| x.slots);
    if in_image.is_none() {
        blob.bytes
            .resize(blob.bytes.len() + entries.len() * SLOT_WORD, 0);
    }
    let slot_addr = |i: usize| in_image.unwrap_or(desc_addr + slots_at) + (SLOT_WORD * i) as u64;
    let slots: Vec<VdsoSlot> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| VdsoSlot {
            slot: slot_addr(i),
            func: e.func,
            _pad: 0,
        })
        .collect();
    let slots_t = blob.table(&slots);
    let spec = a.image.arch.spec();
    let proxy = entries
        .iter()
        .enumerate()
        .map(|(i, e)| Ok((e.addr, spec.proxy_jump(e.addr, slot_addr(i))?)))
        .collect::<Result<Vec<_>>>()?;
    let word = a.image.arch.word() as u64;
    let moves_t = blob.table(&layout.moves);
    let mut relocs_t = [Table::default(); 4];
    if let Some(x) = &a.aslr {
        for (t, &(f, to)) in relocs_t.iter_mut().zip(&PAIRS) {
            *t = blob.table(&x.table(f, to, word));
        }
    }
    // The descriptor (with the vDSO slots) becomes read-only once the stub is done.
    let mut protect = layout.plan.protect.clone();
    let len = align_up(
        (blob.bytes.len() + (protect.len() + 1) * size_of::<Protect>() + strings.len() + PADDING)
            as u64,
        PAGE,
    );
    protect.push(Protect {
        addr: desc_addr,
        len,
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
    blob.bytes.resize(len as usize, 0);
    if len > layout.desc_room {
        return Err(other!(
            "internal error: the descriptor outgrew the room reserved below the image"
        ));
    }
    let tables = Tables {
        fixups: fixups_t,
        vdso_slots: slots_t,
        protect: protect_t,
        strings: strings_t,
        cpu_level_name,
    };
    let mut d = header(&a.image, target, tables);
    if let Some(x) = &a.aslr {
        d.aslr = abi::Aslr {
            flags: abi::ASLR_ON
                | if x.program_moves {
                    abi::ASLR_PROGRAM_MOVES
                } else {
                    0
                },
            program_bits: x.rnd_bits,
            program_lo: x.program.0,
            program_hi: x.program.1,
            window_lo: x.window.0,
            window_hi: x.window.1,
            moves: moves_t,
            relocs: relocs_t,
        };
    }
    blob.bytes[..abi::DESCRIPTOR_SIZE].copy_from_slice(bytes_of(&d));
    Ok(Encoded {
        bytes: blob.bytes,
        proxy,
    })
}

struct Tables {
    fixups: Table,
    vdso_slots: Table,
    protect: Table,
    strings: Table,
    cpu_level_name: u64,
}

fn header(image: &Image, target: &Target, t: Tables) -> abi::Descriptor {
    abi::Descriptor {
        magic: abi::MAGIC,
        version: abi::FORMAT_VERSION,
        arch: u32::from(image.arch.e_machine()),
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
        cpu_needs: target.cpu_needs,
        fixups: t.fixups,
        vdso_slots: t.vdso_slots,
        protect: t.protect,
        strings: t.strings,
        cpu_level_name: t.cpu_level_name,
        resume_kind: image.resume_kind,
        resume_dx: image.resume_dx,
        rseq_size: image.rseq_size,
        min_kernel: target.min_kernel,
        _pad: 0,
        aslr: abi::Aslr::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Fixup, Vdso, VdsoEntry};
    use crate::program::Arch;

    fn analysed(arch: Arch, start: u64) -> Analysed {
        let image = Image::for_test(arch, start, vec![0x55; 0x3000]);
        Analysed {
            fixups: vec![Fixup {
                addr: start + 0x10,
                kind: abi::fixup_kind::ENV_STRING,
                arg: 0,
                offset: 5,
                string: Some(b"HOME=/root\0".to_vec()),
            }],
            vdso: Some(Vdso {
                start,
                end: start + 0x3000,
                entries: vec![VdsoEntry {
                    addr: start + 0x800,
                    func: 1,
                    name: "__vdso_clock_gettime".into(),
                }],
            }),
            image,
            varying: vec![],
            unknown_vdso: vec![],
            aslr: None,
        }
    }

    fn target() -> Target {
        Target {
            cpu_needs: 3,
            cpu_level: "x86-64 baseline".into(),
            min_kernel: 0,
        }
    }

    #[test]
    fn encodes_header_tables_and_strings() {
        let a = analysed(Arch::X86_64, 0x10_0000);
        let lay = crate::layout::layout(&a, &target()).unwrap();
        let e = encode(&a, &target(), &lay).unwrap();
        assert!((e.bytes.len() as u64).is_multiple_of(PAGE));
        assert!(e.bytes.len() as u64 <= reserved_len(&a, &target(), lay.plan.protect.len()));
        assert_eq!(&e.bytes[..8], &abi::MAGIC);
        // The fixup's string, then the CPU level's name, end the blob's used part.
        let strings = b"HOME=/root\0x86-64 baseline\0";
        let at = e
            .bytes
            .windows(strings.len())
            .position(|w| w == strings)
            .expect("string area");
        assert!(at >= abi::DESCRIPTOR_SIZE);
        // One proxy jump, rip-relative to its slot word in the descriptor.
        assert_eq!(e.proxy.len(), 1);
        let (entry, code) = e.proxy[0];
        assert_eq!(entry, 0x10_0800);
        let disp = i32::from_le_bytes(code[2..6].try_into().unwrap()) as i64;
        let slot = (entry as i64 + 6 + disp) as u64;
        assert!(slot >= lay.desc_addr && slot < lay.desc_addr + e.bytes.len() as u64);
    }

    #[test]
    fn below_the_image_the_descriptor_fits_its_room() {
        let a = analysed(Arch::I386, 0x5000_0000);
        let lay = crate::layout::layout(&a, &target()).unwrap();
        assert!(lay.stub_base < 0x5000_0000);
        let e = encode(&a, &target(), &lay).unwrap();
        assert!(e.bytes.len() as u64 <= lay.desc_room);
        assert!(lay.desc_addr + lay.desc_room <= 0x5000_0000);
        // jmp *abs32 through the slot.
        let slot = u32::from_le_bytes(e.proxy[0].1[2..6].try_into().unwrap()) as u64;
        assert!(slot >= lay.desc_addr && slot < lay.desc_addr + e.bytes.len() as u64);
    }
}
