//! The vDSO proxy: the image keeps a copy of the capture-time vDSO (ld.so's link map of it,
//! its symbol table and unwind data stay valid), and each function in it is replaced by an
//! indirect jump through a slot that the stub fills at every start (the jumps are encoded
//! with the descriptor, `descriptor.rs`, and written by the emission, `writer.rs`).
use crate::error::{other, Result};
use crate::image::{Image, Vdso, VdsoEntry};
use elfpack_stub::abi::vdso_fn;
use goblin::elf::{sym, Elf};

/// The vDSO proxy of the image: the functions of the captured vDSO (one entry per
/// address); and the names of those it leaves as they are.
pub fn find_entries(image: &Image) -> Result<(Option<Vdso>, Vec<String>)> {
    let Some((start, end)) = image.vdso else {
        return Ok((None, Vec::new()));
    };
    let region = image
        .region_of(start)
        .ok_or_else(|| other!("vDSO region missing"))?;
    let data = region
        .data
        .as_deref()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| other!("vDSO not readable"))?;
    let elf = Elf::parse(&data).map_err(|e| other!("captured vDSO is not ELF: {e}"))?;
    let load_vaddr = elf
        .program_headers
        .iter()
        .find(|p| p.p_type == goblin::elf::program_header::PT_LOAD)
        .map_or(0, |p| p.p_vaddr);
    let mut entries: Vec<VdsoEntry> = Vec::new();
    let mut unknown = Vec::new();
    for s in elf.dynsyms.iter() {
        if s.st_type() != sym::STT_FUNC || s.st_value == 0 {
            continue;
        }
        let name = elf.dynstrtab.get_at(s.st_name).unwrap_or("").to_string();
        let addr = start + s.st_value - load_vaddr;
        match vdso_fn::by_name(name.as_bytes()) {
            Some(func) => {
                if !entries.iter().any(|e| e.addr == addr) {
                    entries.push(VdsoEntry { addr, func, name });
                }
            }
            None => unknown.push(name),
        }
    }
    entries.sort_by_key(|e| e.addr);
    Ok((
        Some(Vdso {
            start,
            end,
            entries,
        }),
        unknown,
    ))
}
