//! The one description of each architecture elfpack packs: word size, system-call
//! registers and numbers, ELF sizes, where the stub goes and how the vDSO proxy jumps.
//! Every other module asks the [`ArchSpec`] of its [`Arch`] instead of branching on it.
use crate::capture::tracee::Regs;
use crate::error::{other, Result};
use crate::program::Arch;
use goblin::container::Container;
use goblin::elf::header::{EM_386, EM_X86_64};
use syscalls::{x86 as nr32, x86_64 as nr64};

const GIB: u64 = 1 << 30;

/// System-call numbers the capture uses or watches, for the tracee's architecture.
pub struct Syscalls {
    pub brk: u64,
    pub getpid: u64,
    pub getrandom: u64,
    pub set_tid_address: u64,
    pub set_robust_list: u64,
    pub rseq: u64,
    /// i386 only: x86-64's glibc sets the thread pointer with arch_prctl instead.
    pub set_thread_area: Option<u64>,
    /// The mmap that ld.so calls (`mmap2` on i386: the offset counts pages).
    pub mmap: u64,
    pub mremap: u64,
}

/// Sizes of ELF structures in the output's class (goblin's definitions).
pub struct ElfSizes {
    pub container: Container,
    pub ehdr: u64,
    pub phdr: u64,
    pub shdr: usize,
    pub sym: usize,
    /// The largest file offset the class can express.
    pub max_offset: u64,
}

/// How the capture steers ld.so's placements (see `capture::steer`).
pub struct Steer {
    /// How far above the program's own mappings the libraries start: room for the heap.
    /// On x86-64 the image stays well inside the 256 GiB that qemu-x86_64 can load; on
    /// i386 it leaves qemu-i386 most of the 4 GiB for the program's own mappings.
    pub heap_room: u64,
    pub window_align: u64,
    pub window_size: u64,
    /// The top of the range the window may use (i386: the 4 GiB address space, where the
    /// kernel also puts the stack).
    pub top: u64,
    /// Where a position-independent program is moved at capture, if anywhere. On x86-64
    /// the kernel's own choice without ASLR (0x555555554000) lies where the host's PIE
    /// binaries are loaded (0x55..-0x56..), including qemu-user itself, which then cannot
    /// map the image at its fixed addresses reliably; low addresses are free in every
    /// process.
    pub pie_base: Option<u64>,
    /// Where a sanitizer build (a PIE program) goes instead, if the architecture has such
    /// a place; the libraries follow above it. x86-64: 0x7e8000000000, above
    /// AddressSanitizer's shadow (which ends at 0x10007fff8000) and clear of its allocator
    /// (0x600000000000-0x640000000000), inside ThreadSanitizer's high application range
    /// (0x7e8000000000 up), and far below the stack (compiler-rt
    /// `asan/asan_mapping.h`, `asan/asan_allocator.h`, `tsan/rtl/tsan_platform.h`).
    pub sanitizer_base: Option<u64>,
    /// How far the capture that finds the image's relocations moves the program and the
    /// window from where the first capture puts them (`relocs.rs`). Both are far from
    /// each other and from zero, so that a word whose two values differ by one of them
    /// holds an address of that part. The program's is an odd number of pages, so that
    /// any use of its address bits shows; the window's is a multiple of 2 MiB, because
    /// ld.so aligns a library whose PT_LOADs ask for more than a page
    /// (`elf/dl-map-segments.h`, `_dl_map_segment`).
    pub probe_shift: (u64, u64),
    /// Bits of page-granular randomness of a PIE program's base under the kernel's ASLR
    /// (linux `arch/x86/Kconfig`: ARCH_MMAP_RND_BITS_MIN 28, ARCH_MMAP_RND_COMPAT_BITS_MIN
    /// 8, the defaults of `vm.mmap_rnd_bits` and `vm.mmap_rnd_compat_bits`).
    pub rnd_bits: u32,
}

/// Where the stub and its descriptor go relative to the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StubPlacement {
    /// Above the image (x86-64: the image's window is there, and the vDSO slots must be
    /// within reach of rip-relative jumps).
    Above,
    /// Below the image (i386: above lies the stack).
    Below,
}

/// Where the thread pointer captured for the stub comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// The `fs` base register (x86-64, set with arch_prctl).
    FsBase,
    /// The descriptor ld.so passed to set_thread_area, and the `gs` selector (i386).
    ThreadArea,
}

pub struct ArchSpec {
    pub name: &'static str,
    pub e_machine: u16,
    /// Bytes in a word (a pointer, an auxv value).
    pub word: usize,
    /// The bits of a register that hold a word.
    pub mask: u64,
    /// The system-call instruction (`syscall`, `int $0x80`).
    pub syscall_insn: [u8; 2],
    pub nr: &'static Syscalls,
    pub elf: ElfSizes,
    pub steer: Steer,
    pub stub_placement: StubPlacement,
    /// The vDSO proxy reaches its slots rip-relative (x86-64), so with address
    /// randomisation they lie in the image next to it and move with it; an absolute jump
    /// (i386) reaches them in the descriptor.
    pub slots_move_with_proxy: bool,
    pub tls: TlsSource,
    /// The relative relocation of the stub (a static PIE that references no symbols).
    pub relative_reloc: u32,
    /// `ld.so.cache` flags of this architecture's libraries (`sysdeps/generic/dl-cache.h`:
    /// FLAG_ELF_LIBC6, plus FLAG_X8664_LIB64 on x86-64).
    pub ld_cache_flags: u32,
    /// Directories ld.so searches last.
    pub lib_dirs: &'static [&'static str],
    /// The name of `--cpu baseline`.
    pub baseline_name: &'static str,
    /// The embedded restore stub (see `build.rs`).
    pub stub: &'static [u8],
    get_args: fn(&Regs) -> [u64; 6],
    put_args: fn(&mut Regs, [u64; 6]),
    proxy_jump: fn(entry: u64, slot: u64) -> Result<[u8; 6]>,
}

impl ArchSpec {
    /// Whether the ELF class is 64-bit.
    pub fn is64(&self) -> bool {
        self.word == 8
    }

    /// The six system-call arguments in `r`.
    pub fn args(&self, r: &Regs) -> [u64; 6] {
        (self.get_args)(r)
    }

    /// Sets the six system-call arguments in `r`.
    pub fn set_args(&self, r: &mut Regs, args: [u64; 6]) {
        (self.put_args)(r, args)
    }

    /// Sets the first system-call argument in `r`.
    pub fn set_arg0(&self, r: &mut Regs, v: u64) {
        let mut a = self.args(r);
        a[0] = v;
        self.set_args(r, a);
    }

    /// A system call's result from `%rax` as a signed value: a 32-bit tracee's result is
    /// the low half, sign-extended.
    pub fn ret(&self, rax: u64) -> i64 {
        if self.word == 4 {
            i64::from(rax as u32 as i32)
        } else {
            rax as i64
        }
    }

    /// The instruction at `entry` of the vDSO proxy that jumps through `slot`.
    pub fn proxy_jump(&self, entry: u64, slot: u64) -> Result<[u8; 6]> {
        (self.proxy_jump)(entry, slot)
    }
}

impl Arch {
    pub fn spec(self) -> &'static ArchSpec {
        match self {
            Arch::X86_64 => &X86_64,
            Arch::I386 => &I386,
        }
    }
}

fn jump6(disp: [u8; 4]) -> [u8; 6] {
    [0xff, 0x25, disp[0], disp[1], disp[2], disp[3]]
}

pub static X86_64: ArchSpec = ArchSpec {
    name: "x86-64",
    e_machine: EM_X86_64,
    word: 8,
    mask: u64::MAX,
    syscall_insn: [0x0f, 0x05],
    nr: &Syscalls {
        brk: nr64::Sysno::brk.id() as u64,
        getpid: nr64::Sysno::getpid.id() as u64,
        getrandom: nr64::Sysno::getrandom.id() as u64,
        set_tid_address: nr64::Sysno::set_tid_address.id() as u64,
        set_robust_list: nr64::Sysno::set_robust_list.id() as u64,
        rseq: nr64::Sysno::rseq.id() as u64,
        set_thread_area: None,
        mmap: nr64::Sysno::mmap.id() as u64,
        mremap: nr64::Sysno::mremap.id() as u64,
    },
    elf: ElfSizes {
        container: Container::Big,
        ehdr: goblin::elf64::header::SIZEOF_EHDR as u64,
        phdr: goblin::elf64::program_header::SIZEOF_PHDR as u64,
        shdr: goblin::elf64::section_header::SIZEOF_SHDR,
        sym: goblin::elf64::sym::SIZEOF_SYM,
        max_offset: u64::MAX,
    },
    steer: Steer {
        heap_room: 32 * GIB,
        window_align: GIB,
        window_size: 200 * GIB,
        top: 1 << 47,
        pie_base: Some(0x1000_0000),
        sanitizer_base: Some(0x7e80_0000_0000),
        probe_shift: (0x5791_3000, 0x2_4680_0000),
        rnd_bits: 28,
    },
    stub_placement: StubPlacement::Above,
    slots_move_with_proxy: true,
    tls: TlsSource::FsBase,
    relative_reloc: goblin::elf::reloc::R_X86_64_RELATIVE,
    ld_cache_flags: 0x0303,
    lib_dirs: &[
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
    ],
    baseline_name: "x86-64 baseline",
    stub: include_bytes!(env!("STUB_X86_64")),
    // rdi, rsi, rdx, r10, r8, r9.
    get_args: |r| [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9],
    put_args: |r, a| {
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (a[0], a[1], a[2], a[3], a[4], a[5])
    },
    // jmp *disp32(%rip)
    proxy_jump: |entry, slot| {
        let disp = slot as i64 - (entry as i64 + 6);
        let disp = i32::try_from(disp).map_err(|_| {
            other!("vDSO slot {slot:#x} out of reach of the proxy entry {entry:#x}")
        })?;
        Ok(jump6(disp.to_le_bytes()))
    },
};

pub static I386: ArchSpec = ArchSpec {
    name: "i386",
    e_machine: EM_386,
    word: 4,
    mask: 0xffff_ffff,
    syscall_insn: [0xcd, 0x80],
    nr: &Syscalls {
        brk: nr32::Sysno::brk.id() as u64,
        getpid: nr32::Sysno::getpid.id() as u64,
        getrandom: nr32::Sysno::getrandom.id() as u64,
        set_tid_address: nr32::Sysno::set_tid_address.id() as u64,
        set_robust_list: nr32::Sysno::set_robust_list.id() as u64,
        rseq: nr32::Sysno::rseq.id() as u64,
        set_thread_area: Some(nr32::Sysno::set_thread_area.id() as u64),
        mmap: nr32::Sysno::mmap2.id() as u64,
        mremap: nr32::Sysno::mremap.id() as u64,
    },
    elf: ElfSizes {
        container: Container::Little,
        ehdr: goblin::elf32::header::SIZEOF_EHDR as u64,
        phdr: goblin::elf32::program_header::SIZEOF_PHDR as u64,
        shdr: goblin::elf32::section_header::SIZEOF_SHDR,
        sym: goblin::elf32::sym::SIZEOF_SYM,
        max_offset: u32::MAX as u64,
    },
    steer: Steer {
        heap_room: 512 << 20,
        window_align: 16 << 20,
        window_size: 1536 << 20,
        top: 1 << 32,
        pie_base: None,
        sanitizer_base: None,
        probe_shift: (0x0135_7000, 0x0080_0000),
        rnd_bits: 8,
    },
    stub_placement: StubPlacement::Below,
    slots_move_with_proxy: false,
    tls: TlsSource::ThreadArea,
    relative_reloc: goblin::elf::reloc::R_386_RELATIVE,
    ld_cache_flags: 0x0003,
    lib_dirs: &[
        "/lib/i386-linux-gnu",
        "/usr/lib/i386-linux-gnu",
        "/lib32",
        "/usr/lib32",
        "/lib",
        "/usr/lib",
    ],
    baseline_name: "i686 baseline",
    stub: include_bytes!(env!("STUB_I386")),
    // ebx, ecx, edx, esi, edi, ebp.
    get_args: |r| [r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp],
    put_args: |r, a| {
        (r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp) = (a[0], a[1], a[2], a[3], a[4], a[5])
    },
    // jmp *abs32
    proxy_jump: |_entry, slot| Ok(jump6((slot as u32).to_le_bytes())),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_call_numbers_are_the_kernels() {
        assert_eq!(
            (X86_64.nr.brk, X86_64.nr.mmap, X86_64.nr.mremap),
            (12, 9, 25)
        );
        assert_eq!((I386.nr.brk, I386.nr.mmap, I386.nr.mremap), (45, 192, 163));
        assert_eq!(I386.nr.set_thread_area, Some(243));
        assert_eq!(X86_64.nr.rseq, 334);
    }

    #[test]
    fn proxy_jumps() {
        assert_eq!(
            X86_64.proxy_jump(0x1000, 0x2000).unwrap(),
            [0xff, 0x25, 0xfa, 0x0f, 0, 0]
        );
        assert_eq!(
            I386.proxy_jump(0x1000, 0x1234_5678).unwrap(),
            [0xff, 0x25, 0x78, 0x56, 0x34, 0x12]
        );
        assert!(X86_64.proxy_jump(0, 1 << 40).is_err());
    }

    #[test]
    fn elf_sizes() {
        assert_eq!((X86_64.elf.ehdr, X86_64.elf.phdr), (64, 56));
        assert_eq!((I386.elf.ehdr, I386.elf.phdr), (52, 32));
    }
}
