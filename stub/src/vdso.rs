//! Step 4: makes every vDSO function the image refers to work on this kernel.
//!
//! The image holds a copy of the capture-time vDSO (so ld.so's link map of it, its symbol
//! table and its unwind tables stay valid), in which the builder replaced each function's
//! first bytes with an indirect jump through a slot. Here each slot gets this kernel's
//! vDSO symbol of the same name, or a plain system call when there is no vDSO (qemu-user)
//! or it lacks the symbol.
use crate::{arch, desc, fail, stack::InitialStack};
use elfpack_stub::abi::{vdso_fn, Descriptor, VdsoSlot};
use linux_raw_sys::auxvec as at;
use linux_raw_sys::elf::{
    Elf_Dyn, Elf_Ehdr, Elf_Phdr, Elf_Sym, DT_HASH, DT_STRTAB, DT_SYMTAB, PT_DYNAMIC, PT_LOAD,
};

/// This run's vDSO, as the kernel mapped it.
struct LiveVdso {
    bias: usize,
    symtab: *const Elf_Sym,
    strtab: *const u8,
    nsyms: usize,
}

impl LiveVdso {
    /// # Safety
    /// `base` is AT_SYSINFO_EHDR: a complete ELF image mapped by the kernel.
    unsafe fn parse(base: usize) -> Option<LiveVdso> {
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

    fn lookup(&self, name: &[u8]) -> Option<usize> {
        for i in 1..self.nsyms {
            // SAFETY: `i` < nchain, the symbol table's length; names are NUL-terminated.
            let sym = unsafe { &*self.symtab.add(i) };
            if sym.st_shndx == 0 || sym.st_value == 0 {
                continue;
            }
            let s = unsafe { self.strtab.add(sym.st_name as usize) };
            if name
                .iter()
                .enumerate()
                .all(|(k, &c)| unsafe { *s.add(k) } == c)
                && unsafe { *s.add(name.len()) } == 0
            {
                return Some(sym.st_value.wrapping_add(self.bias));
            }
        }
        None
    }
}

/// Step 4.
pub fn connect(d: &'static Descriptor, st: &InitialStack) {
    let slots: &[VdsoSlot] = desc::table(d, d.vdso_slots);
    if slots.is_empty() {
        return;
    }
    // SAFETY: AT_SYSINFO_EHDR, when present, is the kernel's vDSO.
    let live = st
        .aux(at::AT_SYSINFO_EHDR)
        .and_then(|b| unsafe { LiveVdso::parse(b) });
    for s in slots {
        let target = live
            .as_ref()
            .and_then(|v| vdso_fn::names(s.func).iter().find_map(|n| v.lookup(n)))
            .or_else(|| arch::vdso_fallback(s.func, st))
            .unwrap_or_else(|| fail::fail("cannot provide a vDSO function of the image", 0));
        // SAFETY: slots are native words in writable pages of the image (builder
        // `vdso.rs`), read only by the proxy's jumps.
        unsafe { (s.slot as usize as *mut usize).write(target) };
    }
}
