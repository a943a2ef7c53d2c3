//! Verification of the CPU level after capture: the implementations that IFUNC resolvers
//! actually selected, and ld.so's lazy-binding trampoline, decoded instruction by
//! instruction.
//!
//! Masking features with `glibc.cpu.hwcaps` (crate::cpu) is a request: a glibc may not know
//! a mask name, and an IFUNC resolver outside glibc (GCC's `target_clones`, a library's own
//! `__builtin_cpu_supports`) reads CPUID itself and ignores the mask. So after the capture
//! every resolved address that an IFUNC chose is followed to its function (bounds from the
//! object's `.eh_frame_hdr` search table), the function is decoded, and each instruction's
//! CPUID feature is compared with the level. An image that needs more than the level is
//! refused, naming the feature and the function.
use crate::error::{unpackable, Result};
use crate::image::{Image, Object};
use elfpack_stub::abi::cpu::*;
use gimli::{BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, UnwindSection};
use goblin::elf::program_header::{ProgramHeader, PT_GNU_EH_FRAME, PT_LOAD};
use goblin::elf::reloc::*;
use goblin::elf::sym::{Sym, STT_GNU_IFUNC};
use goblin::elf::Elf;
use iced_x86::{CpuidFeature as F, Decoder, DecoderOptions, FlowControl};
use std::collections::{HashMap, HashSet};

/// A selected implementation that needs more than the level allows.
#[derive(Debug, PartialEq, Eq)]
pub struct Excess {
    /// What was resolved (`memcpy`, `an IFUNC`, `the lazy-binding resolver`).
    pub what: String,
    /// Where the selected code is: `libc.so.6+0x1529f0`, with its symbol if one is known.
    pub code: String,
    /// The CPUID features it needs beyond the level.
    pub features: Vec<String>,
    /// It is ld.so's lazy-binding resolver (which binding everything at capture avoids).
    pub lazy_resolver: bool,
}

impl std::fmt::Display for Excess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was resolved to {}, which needs {}",
            self.what,
            self.code,
            self.features.join(", ")
        )
    }
}

/// Checks the image against the level `name`, whose features are `allowed` (`abi::cpu`
/// bits). Refuses with the first excess found.
pub fn verify(image: &Image, name: &str, allowed: u64) -> Result<()> {
    match excesses(image, allowed).into_iter().next() {
        None => Ok(()),
        Some(e) => Err(unpackable!(
            "{e}, above the CPU level {name}: the packed program would crash on such a CPU \
             (pack with a --cpu level that has it, or --cpu native)"
        )),
    }
}

/// Every selected implementation that needs features outside `allowed`.
pub fn excesses(image: &Image, allowed: u64) -> Vec<Excess> {
    let wide = image.arch.word() == 8;
    let files: Vec<File> = image.objects.iter().filter_map(File::open).collect();
    let ifuncs: HashSet<String> = files.iter().flat_map(File::ifunc_names).collect();
    let mut seen: HashMap<u64, Vec<String>> = HashMap::new();
    let mut out = Vec::new();
    for file in &files {
        for (what, slot) in file.resolved_slots(wide, &ifuncs) {
            let Some(target) = image.word(slot) else {
                continue;
            };
            let Some(owner) = files.iter().find(|f| f.executes(target)) else {
                continue;
            };
            let features = seen
                .entry(target)
                .or_insert_with(|| beyond(owner.features_of(target, wide), allowed))
                .clone();
            if !features.is_empty() {
                out.push(Excess {
                    lazy_resolver: what.starts_with(RESOLVER),
                    what,
                    code: owner.describe(target),
                    features,
                });
            }
        }
    }
    out
}

/// How the lazy-binding resolver in GOT[2] is named.
const RESOLVER: &str = "ld.so's lazy-binding resolver";

/// A mapped object file, its load bias and its program headers (parsed once: a program
/// may have hundreds of libraries, and every resolved address is looked up in all).
struct File {
    bytes: crate::files::Bytes,
    bias: u64,
    name: String,
    phdrs: Vec<ProgramHeader>,
}

impl File {
    fn open(o: &Object) -> Option<File> {
        let bytes = crate::files::map(&o.path).ok()?;
        let elf = Elf::parse(&bytes).ok()?;
        let bias = if elf.header.e_type == goblin::elf::header::ET_EXEC {
            0
        } else {
            o.base
        };
        let name = o.path.file_name()?.to_string_lossy().into_owned();
        let phdrs = elf.program_headers.clone();
        drop(elf);
        Some(File {
            bytes,
            bias,
            name,
            phdrs,
        })
    }

    fn elf(&self) -> Elf<'_> {
        // Parsed once successfully in `open`; the bytes are the same mapping.
        Elf::parse(&self.bytes).expect("parsed before")
    }

    /// Names of the IFUNC symbols this object defines.
    fn ifunc_names(&self) -> Vec<String> {
        let elf = self.elf();
        elf.dynsyms
            .iter()
            .filter(|s| s.st_type() == STT_GNU_IFUNC && s.st_shndx != 0)
            .filter_map(|s| elf.dynstrtab.get_at(s.st_name).map(str::to_owned))
            .collect()
    }

    /// Whether `addr` (run time) is in one of this object's executable segments.
    fn executes(&self, addr: u64) -> bool {
        let a = addr.wrapping_sub(self.bias);
        self.phdrs.iter().any(|p| {
            p.p_type == PT_LOAD && p.is_executable() && p.p_vaddr <= a && a < p.p_vaddr + p.p_memsz
        })
    }

    /// The run-time addresses of this object's words that hold an IFUNC's selected
    /// implementation, with what each one is; and ld.so's lazy-binding resolver in GOT[2].
    fn resolved_slots(&self, wide: bool, ifuncs: &HashSet<String>) -> Vec<(String, u64)> {
        let elf = self.elf();
        let (irelative, by_symbol): (u32, &[u32]) = if wide {
            (
                R_X86_64_IRELATIVE,
                &[R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT, R_X86_64_64],
            )
        } else {
            (R_386_IRELATIVE, &[R_386_JMP_SLOT, R_386_GLOB_DAT, R_386_32])
        };
        let relocs = elf
            .dynrelas
            .iter()
            .chain(elf.dynrels.iter())
            .chain(elf.pltrelocs.iter());
        let mut out = Vec::new();
        for r in relocs {
            let slot = r.r_offset.wrapping_add(self.bias);
            if r.r_type == irelative {
                // RELA has the resolver in the addend; REL in the word itself (in the file).
                let resolver = match r.r_addend {
                    Some(a) => Some(a as u64),
                    None => self.at(r.r_offset).and_then(|b| {
                        Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as u64)
                    }),
                };
                let name =
                    resolver.and_then(|a| self.named(&elf, a, |s| s.st_type() == STT_GNU_IFUNC));
                let what = match name {
                    Some(n) => format!("{n} (an IFUNC in {})", self.name),
                    None => format!("an IFUNC of {}", self.name),
                };
                out.push((what, slot));
            } else if by_symbol.contains(&r.r_type) {
                let name = elf
                    .dynstrtab
                    .get_at(elf.dynsyms.get(r.r_sym).map_or(0, |s| s.st_name));
                if let Some(n) = name.filter(|n| ifuncs.contains(*n)) {
                    out.push((format!("{n} (called from {})", self.name), slot));
                }
            }
        }
        // DT_PLTGOT's own value: goblin's `DynamicInfo` turns it into a file offset.
        let pltgot = elf.dynamic.as_ref().and_then(|d| {
            d.dyns
                .iter()
                .find(|e| e.d_tag == goblin::elf::dynamic::DT_PLTGOT)
                .map(|e| e.d_val)
        });
        if let Some(got) = pltgot.filter(|&g| g != 0) {
            let word = if wide { 8 } else { 4 };
            let what = format!("{RESOLVER} (GOT[2] of {})", self.name);
            out.push((what, got + 2 * word + self.bias));
        }
        out
    }

    /// The name of a symbol whose link-time value is `addr` and which `pick` accepts, from
    /// `.dynsym` or `.symtab`.
    fn named(&self, elf: &Elf, addr: u64, pick: impl Fn(&Sym) -> bool) -> Option<String> {
        let dyn_ = elf.dynsyms.iter().map(|s| (s, &elf.dynstrtab));
        let sym = elf.syms.iter().map(|s| (s, &elf.strtab));
        dyn_.chain(sym)
            .find(|(s, _)| s.st_value == addr && s.st_name != 0 && pick(s))
            .and_then(|(s, t)| t.get_at(s.st_name).map(str::to_owned))
    }

    /// `libc.so.6+0x1529f0`, with the function's symbol if the object names it.
    fn describe(&self, addr: u64) -> String {
        let link = addr.wrapping_sub(self.bias);
        let elf = self.elf();
        match self.named(&elf, link, |_| true) {
            Some(s) => format!("{s} ({}+{link:#x})", self.name),
            None => format!("{}+{link:#x}", self.name),
        }
    }

    /// The bytes of the file at link-time address `vaddr`, up to the end of its segment.
    fn at(&self, vaddr: u64) -> Option<&[u8]> {
        let p = self.phdrs.iter().find(|p| {
            p.p_type == PT_LOAD && p.p_vaddr <= vaddr && vaddr < p.p_vaddr + p.p_filesz
        })?;
        let start = (p.p_offset + (vaddr - p.p_vaddr)) as usize;
        let end = (p.p_offset + p.p_filesz) as usize;
        self.bytes.get(start..end)
    }

    /// The function containing link-time `addr`: start and length from the unwind tables.
    fn function(&self, addr: u64, wide: bool) -> Option<(u64, u64)> {
        let hdr = self.phdrs.iter().find(|p| p.p_type == PT_GNU_EH_FRAME)?;
        let hdr_bytes = self.at(hdr.p_vaddr)?.get(..hdr.p_filesz as usize)?;
        let mut bases = BaseAddresses::default().set_eh_frame_hdr(hdr.p_vaddr);
        let size = if wide { 8 } else { 4 };
        let parsed = EhFrameHdr::new(hdr_bytes, LittleEndian)
            .parse(&bases, size)
            .ok()?;
        let gimli::Pointer::Direct(frame_addr) = parsed.eh_frame_ptr() else {
            return None;
        };
        bases = bases.set_eh_frame(frame_addr);
        let mut frame = EhFrame::new(self.at(frame_addr)?, LittleEndian);
        frame.set_address_size(size);
        let fde = parsed
            .table()?
            .fde_for_address(&frame, &bases, addr, EhFrame::cie_from_offset)
            .ok()?;
        Some((fde.initial_address(), fde.len()))
    }

    /// The CPUID features of the instructions of the function at run-time `addr`.
    fn features_of(&self, addr: u64, wide: bool) -> HashSet<F> {
        let link = addr.wrapping_sub(self.bias);
        // Without unwind information: from the address to the first return or jump.
        let (start, len, whole) = match self.function(link, wide) {
            Some((s, l)) => (s, l, true),
            None => (link, 4096, false),
        };
        let Some(code) = self.at(start).map(|b| &b[..b.len().min(len as usize)]) else {
            return HashSet::new();
        };
        let mut decoder = Decoder::with_ip(
            if wide { 64 } else { 32 },
            code,
            start,
            DecoderOptions::NONE,
        );
        let mut out = HashSet::new();
        for insn in &mut decoder {
            out.extend(insn.cpuid_features().iter().copied());
            let ends = matches!(
                insn.flow_control(),
                FlowControl::Return
                    | FlowControl::UnconditionalBranch
                    | FlowControl::IndirectBranch
            );
            if !whole && ends {
                break;
            }
        }
        out
    }
}

/// The CPUID features in `found` that the level (`allowed`, `abi::cpu` bits) lacks, by name.
fn beyond(found: HashSet<F>, allowed: u64) -> Vec<String> {
    let mut out: Vec<String> = found
        .into_iter()
        .filter(|f| !always(*f))
        .filter(|f| level_bit(*f).is_none_or(|bit| allowed & bit == 0))
        .map(|f| format!("{f:?}"))
        .collect();
    out.sort();
    out
}

/// Features every x86-64 CPU and every i686 CPU that glibc supports has, or instructions
/// that older CPUs execute as no-ops (CET's `endbr`, `prefetchw`).
fn always(f: F) -> bool {
    matches!(
        f,
        F::INTEL8086
            | F::INTEL186
            | F::INTEL286
            | F::INTEL386
            | F::INTEL486
            | F::X64
            | F::CPUID
            | F::FPU
            | F::FPU287
            | F::FPU387
            | F::MMX
            | F::SSE
            | F::CX8
            | F::FXSR
            | F::SYSCALL
            | F::SEP
            | F::TSC
            | F::PAUSE
            | F::MULTIBYTENOP
            | F::CLFSH
            | F::CET_IBT
            | F::CET_SS
            | F::PREFETCHW
    )
}

/// The `abi::cpu` bit of a feature that a level may or may not include.
fn level_bit(f: F) -> Option<u64> {
    Some(match f {
        F::SSE2 => SSE2,
        F::CMOV => CMOV,
        F::SSE3 => SSE3,
        F::SSSE3 => SSSE3,
        F::SSE4_1 => SSE4_1,
        F::SSE4_2 => SSE4_2,
        F::POPCNT => POPCNT,
        F::CMPXCHG16B => CX16,
        F::AVX => AVX,
        F::AVX2 => AVX2,
        F::BMI1 => BMI1,
        F::BMI2 => BMI2,
        F::FMA => FMA,
        F::LZCNT => LZCNT,
        F::MOVBE => MOVBE,
        F::F16C => F16C,
        F::AVX512F => AVX512F,
        F::AVX512BW => AVX512BW,
        F::AVX512CD => AVX512CD,
        F::AVX512DQ => AVX512DQ,
        F::AVX512VL => AVX512VL,
        F::XSAVE => XSAVE,
        F::XSAVEC => XSAVEC,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_features_pass_and_others_are_named() {
        let found: HashSet<F> = [F::SSE2, F::AVX2, F::CET_IBT, F::RTM].into_iter().collect();
        assert_eq!(beyond(found.clone(), CMOV | SSE2), ["AVX2", "RTM"]);
        assert_eq!(beyond(found, CMOV | SSE2 | AVX2 | AVX), ["RTM"]);
    }

    #[test]
    fn unwind_tables_bound_glibcs_string_functions() {
        let f = File::open(&Object {
            path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
            base: 0,
        })
        .expect("this machine's libc");
        let elf = f.elf();
        let memcpy = elf
            .dynsyms
            .iter()
            .find(|s| elf.dynstrtab.get_at(s.st_name) == Some("memcpy"))
            .unwrap();
        assert!(f.function(memcpy.st_value, true).is_some());
    }
}
