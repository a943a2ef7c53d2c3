//! Symbol look-up in a vDSO image as the kernel maps it (headers, dynamic section, SysV
//! hash table, symbol and string tables). The stub uses it on this run's vDSO; it lives in
//! the library so that it can be tested on crafted images.
use linux_raw_sys::elf::{
    Elf_Dyn, Elf_Ehdr, Elf_Phdr, Elf_Sym, DT_HASH, DT_STRTAB, DT_SYMTAB, PT_DYNAMIC, PT_LOAD,
};

/// This run's vDSO, as the kernel mapped it.
pub struct LiveVdso {
    bias: usize,
    symtab: *const Elf_Sym,
    strtab: *const u8,
    nsyms: usize,
}

impl LiveVdso {
    /// # Safety
    /// `base` is AT_SYSINFO_EHDR: a complete ELF image mapped by the kernel.
    pub unsafe fn parse(base: usize) -> Option<LiveVdso> {
        // SAFETY: the vDSO is a prelinked ELF shared object mapped whole, headers
        // included (linux `arch/x86/entry/vdso/vma.c`, `map_vdso`); dynamic entries hold
        // link-time addresses, to which the load bias is added.
        unsafe {
            let eh = &*(base as *const Elf_Ehdr);
            if eh.e_ident[..4] != [0x7f, b'E', b'L', b'F'] {
                return None;
            }
            let phdrs = core::slice::from_raw_parts(
                (base + eh.e_phoff) as *const Elf_Phdr,
                eh.e_phnum as usize,
            );
            let load = phdrs.iter().find(|p| p.p_type == PT_LOAD)?;
            let bias = base.wrapping_sub(load.p_vaddr);
            let dynamic = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC)?;
            let mut dyn_ = (dynamic.p_vaddr.wrapping_add(bias)) as *const Elf_Dyn;
            let (mut symtab, mut strtab, mut hash) = (0usize, 0usize, 0usize);
            while (*dyn_).d_tag != 0 {
                let v = (*dyn_).d_un.d_ptr;
                match (*dyn_).d_tag {
                    DT_SYMTAB => symtab = v.wrapping_add(bias),
                    DT_STRTAB => strtab = v.wrapping_add(bias),
                    DT_HASH => hash = v.wrapping_add(bias),
                    _ => {}
                }
                dyn_ = dyn_.add(1);
            }
            if symtab == 0 || strtab == 0 || hash == 0 {
                return None;
            }
            // The SysV hash table's second word is the number of symbols (nchain).
            let nsyms = *((hash + 4) as *const u32) as usize;
            Some(LiveVdso {
                bias,
                symtab: symtab as _,
                strtab: strtab as _,
                nsyms,
            })
        }
    }

    pub fn lookup(&self, name: &[u8]) -> Option<usize> {
        for i in 1..self.nsyms {
            // SAFETY: `i` < nchain, the symbol table's length; names are NUL-terminated.
            let sym = unsafe { &*self.symtab.add(i) };
            if sym.st_shndx == 0 || sym.st_value == 0 {
                continue;
            }
            // SAFETY: st_name is an offset into the vDSO's string table.
            let s = unsafe { self.strtab.add(sym.st_name as usize) };
            if name
                .iter()
                .enumerate()
                // SAFETY: the comparison stops at the first differing byte, so it never
                // reads past the NUL that ends the symbol's name in the string table.
                .all(|(k, &c)| unsafe { *s.add(k) } == c)
                // SAFETY: all of `name` matched, so this is at most the terminating NUL.
                && unsafe { *s.add(name.len()) } == 0
            {
                return Some(sym.st_value.wrapping_add(self.bias));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    //! The look-up must follow the table of the vDSO it is given, whatever the capture-time
    //! vDSO looked like: these tests craft vDSOs whose layout differs from the live one.
    extern crate std;
    use super::LiveVdso;
    use std::vec::Vec;

    /// A copy of this process's vDSO in 8-byte-aligned memory.
    fn vdso_copy() -> Vec<u64> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| l.ends_with("[vdso]"))
            .expect("no vDSO in this process");
        let range = line.split_whitespace().next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap(),
            usize::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = std::vec![0u64; (b - a) / 8];
        // SAFETY: the range is this process's vDSO mapping, readable as a whole.
        unsafe {
            core::ptr::copy_nonoverlapping(a as *const u8, buf.as_mut_ptr() as *mut u8, b - a)
        };
        buf
    }

    fn bytes(v: &mut [u64]) -> &mut [u8] {
        // SAFETY: reinterpreting an u64 slice as bytes.
        unsafe { core::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 8) }
    }

    /// (file offset of the symbol's st_value, st_name offset) for `name`, via goblin.
    fn dynsym(image: &[u8], name: &str) -> (usize, usize) {
        let elf = goblin::elf::Elf::parse(image).unwrap();
        let shdr = elf
            .section_headers
            .iter()
            .find(|s| s.sh_type == goblin::elf::section_header::SHT_DYNSYM)
            .unwrap();
        for (i, s) in elf.dynsyms.iter().enumerate() {
            if elf.dynstrtab.get_at(s.st_name) == Some(name) {
                let off = shdr.sh_offset as usize + i * goblin::elf::sym::sym64::SIZEOF_SYM;
                let name_off =
                    elf.section_headers[shdr.sh_link as usize].sh_offset as usize + s.st_name;
                return (off + 8, name_off);
            }
        }
        panic!("{name} not in the vDSO");
    }

    #[test]
    fn finds_symbols_of_a_copy() {
        let mut v = vdso_copy();
        let base = v.as_mut_ptr() as usize;
        let b = bytes(&mut v);
        let (val_at, _) = dynsym(b, "__vdso_clock_gettime");
        let value = u64::from_le_bytes(b[val_at..val_at + 8].try_into().unwrap()) as usize;
        // SAFETY: `base` points at a complete vDSO image.
        let live = unsafe { LiveVdso::parse(base) }.unwrap();
        assert_eq!(live.lookup(b"__vdso_clock_gettime"), Some(base + value));
        assert_eq!(live.lookup(b"no_such_symbol"), None);
    }

    #[test]
    fn follows_a_differently_laid_out_table() {
        let mut v = vdso_copy();
        let base = v.as_mut_ptr() as usize;
        let b = bytes(&mut v);
        // Another kernel: clock_gettime at another offset, and no `__vdso_time` at all.
        let (val_at, _) = dynsym(b, "__vdso_clock_gettime");
        let moved = u64::from_le_bytes(b[val_at..val_at + 8].try_into().unwrap()) + 0x40;
        b[val_at..val_at + 8].copy_from_slice(&moved.to_le_bytes());
        let (_, name_at) = dynsym(b, "__vdso_time");
        b[name_at..name_at + 11].copy_from_slice(b"__vdso_tim_");
        // SAFETY: `base` points at a complete (crafted) vDSO image.
        let live = unsafe { LiveVdso::parse(base) }.unwrap();
        assert_eq!(
            live.lookup(b"__vdso_clock_gettime"),
            Some(base + moved as usize)
        );
        assert_eq!(
            live.lookup(b"__vdso_time"),
            None,
            "a missing symbol must fall back to the system call"
        );
        assert!(live.lookup(b"__vdso_gettimeofday").is_some());
    }

    #[test]
    fn rejects_what_is_not_elf() {
        let mut v = std::vec![0u64; 512];
        // SAFETY: a zeroed buffer of 4 KiB.
        assert!(unsafe { LiveVdso::parse(v.as_mut_ptr() as usize) }.is_none());
    }
}
