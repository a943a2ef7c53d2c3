//! The restore stubs, embedded at build time (see `build.rs`), and placing one in an image:
//! copying its segments to a base address and applying its relative relocations.
use crate::error::{other, Result};
use crate::program::Arch;
use goblin::elf::Elf;

/// A stub ready to be placed.
pub struct Stub {
    /// (offset from the stub base, bytes, memsz, PF_* flags) per PT_LOAD.
    pub segments: Vec<(u64, Vec<u8>, u64, u32)>,
    /// Offset of `__elfpack_desc` from the stub base.
    pub desc_offset: u64,
    pub entry: u64,
    /// Bytes of code and data the stub occupies in memory.
    pub size: u64,
}

pub fn elf_bytes(arch: Arch) -> &'static [u8] {
    arch.spec().stub
}

/// The stub for `arch`, relocated to run at `base`.
pub fn relocated(arch: Arch, base: u64) -> Result<Stub> {
    let bytes = elf_bytes(arch);
    let elf = Elf::parse(bytes).map_err(|e| other!("embedded stub is not ELF: {e}"))?;
    let desc_offset = elf
        .syms
        .iter()
        .find(|s| elf.strtab.get_at(s.st_name) == Some("__elfpack_desc"))
        .map(|s| s.st_value)
        .ok_or_else(|| other!("embedded stub lacks __elfpack_desc"))?;
    let mut segments: Vec<(u64, Vec<u8>, u64, u32)> = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_LOAD)
        .map(|p| {
            let data = bytes[p.p_offset as usize..(p.p_offset + p.p_filesz) as usize].to_vec();
            (p.p_vaddr, data, p.p_memsz, p.p_flags)
        })
        .collect();
    let size = segments.iter().map(|s| s.0 + s.2).max().unwrap_or(0);
    let word = arch.word();
    let relative = arch.spec().relative_reloc;
    let mut patch = |off: u64, addend: Option<i64>| -> Result<()> {
        let seg = segments
            .iter_mut()
            .find(|s| s.0 <= off && off + word as u64 <= s.0 + s.1.len() as u64)
            .ok_or_else(|| other!("stub relocation at {off:#x} outside its segments"))?;
        let at = (off - seg.0) as usize;
        let cur = &mut seg.1[at..at + word];
        let mut implicit = [0u8; 8];
        implicit[..word].copy_from_slice(cur);
        let implicit = u64::from_le_bytes(implicit);
        let v = base.wrapping_add(addend.map_or(implicit, |a| a as u64));
        cur.copy_from_slice(&v.to_le_bytes()[..word]);
        Ok(())
    };
    // Only the relative relocation may appear in a static PIE that references no symbols.
    for r in elf.dynrelas.iter() {
        if r.r_type != relative {
            return Err(other!(
                "unexpected relocation type {} in the stub",
                r.r_type
            ));
        }
        patch(r.r_offset, Some(r.r_addend.unwrap_or(0)))?;
    }
    for r in elf.dynrels.iter() {
        if r.r_type != relative {
            return Err(other!(
                "unexpected relocation type {} in the stub",
                r.r_type
            ));
        }
        patch(r.r_offset, None)?;
    }
    Ok(Stub {
        segments,
        desc_offset,
        entry: elf.entry,
        size,
    })
}
