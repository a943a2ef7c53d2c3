//! The packed-file descriptor: one `#[repr(C, align(8))]` header followed by tables.
//!
//! Every field is a little-endian `u64` or `u32` at a fixed offset, the same on i386 and
//! x86-64, so the builder (always 64-bit) writes exactly what the 32-bit stub reads. Table
//! offsets are relative to the start of the descriptor.
//!
//! Each record derives [`bytemuck::Pod`]: `#[repr(C)]`, integers only, no padding (the
//! derive checks it), so the builder writes one with [`bytes_of`] and the stub reads it in
//! place.
use bytemuck::{Pod, Zeroable};

pub use bytemuck::bytes_of;

/// First bytes of every descriptor.
pub const MAGIC: [u8; 8] = *b"ELFPACK\0";
/// Bumped whenever a layout below changes.
pub const FORMAT_VERSION: u32 = 5;

/// A table inside the descriptor blob.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Table {
    /// Byte offset from the start of the descriptor.
    pub offset: u64,
    /// Number of entries.
    pub count: u64,
}

/// The thread pointer as ld.so set it up: `fs_base` on x86-64; on i386 the GDT entry
/// installed by `set_thread_area` and the `%gs` selector that refers to it.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Tls {
    pub base: u64,
    pub limit: u32,
    /// `struct user_desc` flag bits (seg_32bit, contents, ..., useable), i386 only.
    pub flags: u32,
    /// GDT entry number on i386; unused on x86-64.
    pub entry: u32,
    /// Value of `%gs` on i386; unused on x86-64.
    pub selector: u32,
}

/// Per-thread kernel registrations that ld.so made before the snapshot point and that a new
/// process lacks. Zero addresses mean "was not registered".
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Registrations {
    /// Argument of `set_tid_address`: up to glibc 2.41 `&pd->tid`; since 2.42
    /// `&pd->joinstate`, which the kernel clears when the thread exits (glibc commit
    /// 5da15b15ad, `sysdeps/nptl/dl-tls_init_tp.c`).
    pub tid_address: u64,
    /// Where glibc caches the thread ID that set_tid_address returns (`pd->tid`); zero
    /// when the capture did not find it.
    pub tid_cache: u64,
    pub robust_list_head: u64,
    pub robust_list_len: u64,
    pub rseq_area: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
}

/// Values for `prctl(PR_SET_MM, PR_SET_MM_MAP)` that the builder knows in advance.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct MmLayout {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    /// The program break as it was at capture, when the image holds a heap; zero when the
    /// program keeps each run's own (randomised) break.
    pub start_brk: u64,
    pub brk: u64,
}

/// Address-space randomisation: where the image's two parts lie in the file, the ranges
/// the stub moves, and the words it relocates.
///
/// The image has two parts, each moved by its own page-granular slide at every start, as
/// the kernel places the original's parts: the *program* (a PIE program and its heap, at
/// a random offset from its captured place) and the *window* (ld.so, the libraries, the
/// vDSO proxy and everything ld.so mapped, where `mmap(NULL)` puts it, as for the
/// original's libraries). A descriptor address inside a part's range (ends included) moves
/// with that part; any other address (the stub's own, the stack's) stays.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Aslr {
    /// [`ASLR_ON`] when the image moves; 0 for a file packed with `--no-aslr` (or with
    /// `--stop-at-entry`), which keeps the captured layout.
    pub flags: u32,
    /// Bits of page-granular entropy of the program's slide: the kernel's default
    /// `mmap_rnd_bits` (28 on x86-64, 8 for 32-bit programs; linux `arch/x86/Kconfig`,
    /// ARCH_MMAP_RND_BITS_MIN and ARCH_MMAP_RND_COMPAT_BITS_MIN).
    pub program_bits: u32,
    /// The program part `[lo, hi]`: the program's mappings, its bss and its heap. It moves
    /// only when [`ASLR_PROGRAM_MOVES`] is set (a position-independent program).
    pub program_lo: u64,
    pub program_hi: u64,
    /// The window part `[lo, hi]`.
    pub window_lo: u64,
    pub window_hi: u64,
    /// [`Move`] entries: the ranges the kernel mapped from this file's PT_LOADs, each inside
    /// one mapping, in address order.
    pub moves: Table,
    /// Relocations: `u64` entries in the RELR encoding (see [`relr`]), one table per
    /// (part the word lies in, part it points into): program→program, program→window,
    /// window→program, window→window.
    pub relocs: [Table; 4],
}

/// [`Aslr::flags`]: the image moves at every start (unless ADDR_NO_RANDOMIZE).
pub const ASLR_ON: u32 = 1;
/// [`Aslr::flags`]: the program part moves too (a position-independent program).
pub const ASLR_PROGRAM_MOVES: u32 = 2;

/// A range of the image that one `mremap` moves.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Move {
    pub addr: u64,
    pub len: u64,
}

/// The RELR encoding of a sorted list of word addresses (as in the ELF gABI's
/// SHT_RELR, with 64-bit entries for both architectures): an even entry is the address of
/// a word to relocate; an odd entry is a bitmap whose bit `i` (1..=63) stands for the word
/// `i - 1` words after the previous run's end, where a run is 63 words long.
pub mod relr {
    /// Words a bitmap entry covers.
    pub const BITMAP_WORDS: u64 = 63;

    /// Calls `f` with each address that `entries` encode, for words of `word` bytes.
    pub fn for_each(entries: &[u64], word: u64, mut f: impl FnMut(u64)) {
        let mut next = 0u64;
        for &e in entries {
            if e & 1 == 0 {
                f(e);
                next = e + word;
            } else {
                let mut bits = e >> 1;
                let mut at = next;
                while bits != 0 {
                    if bits & 1 != 0 {
                        f(at);
                    }
                    bits >>= 1;
                    at += word;
                }
                next += BITMAP_WORDS * word;
            }
        }
    }
}

/// The descriptor header.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Descriptor {
    pub magic: [u8; 8],
    pub version: u32,
    pub arch: u32,
    /// Where ld.so hands over (`_dl_start_user`).
    pub resume_pc: u64,
    /// The program's entry point: AT_ENTRY, and the value `_dl_start` returned.
    pub user_entry: u64,
    /// AT_PHDR / AT_PHNUM / AT_PHENT / AT_BASE of the original program.
    pub at_phdr: u64,
    pub at_phnum: u64,
    pub at_phent: u64,
    pub at_base: u64,
    pub tls: Tls,
    pub regs: Registrations,
    pub mm: MmLayout,
    /// Address of ld.so's `int __libc_enable_secure`, or 0.
    pub enable_secure: u64,
    /// CPU features the image needs (bits of [`cpu`]); 0 means none checked.
    pub cpu_needs: u64,
    /// [`Fixup`] entries, sorted by address.
    pub fixups: Table,
    /// [`VdsoSlot`] entries.
    pub vdso_slots: Table,
    /// [`Protect`] entries, applied last.
    pub protect: Table,
    /// Raw bytes referred to by fixups (NUL-terminated strings).
    pub strings: Table,
    /// Human-readable CPU level name (NUL-terminated, in `strings`), for error messages.
    pub cpu_level_name: u64,
    /// [`RESUME_DL_START_USER`] or [`RESUME_ENTRY`].
    pub resume_kind: u64,
    /// For [`RESUME_ENTRY`]: the `%rdx`/`%edx` value (ld.so's `_dl_fini`) the program's
    /// `_start` receives.
    pub resume_dx: u64,
    /// Address of `__rseq_size` (ld.so, glibc 2.35+), or 0: zeroed when this kernel
    /// refuses the rseq registration.
    pub rseq_size: u64,
    /// The oldest kernel the image runs on, as [`kernel_version`] encodes it.
    pub min_kernel: u32,
    pub _pad: u32,
    pub aslr: Aslr,
}

/// A kernel version as one number: `major << 16 | minor << 8 | min(patch, 255)`, as
/// linux `include/linux/version.h` `KERNEL_VERSION` does.
pub const fn kernel_version(major: u32, minor: u32, patch: u32) -> u32 {
    (major << 16) | (minor << 8) | if patch > 255 { 255 } else { patch }
}

/// The kernel release a `uname` release string starts with ("5.10.0-28-amd64" → 5.10.0);
/// `None` when it does not start with a number.
pub fn parse_release(release: &[u8]) -> Option<u32> {
    let mut parts = [0u32; 3];
    let mut i = 0;
    let mut any = false;
    for &b in release {
        match b {
            b'0'..=b'9' => {
                parts[i] = parts[i]
                    .saturating_mul(10)
                    .saturating_add(u32::from(b - b'0'));
                any = true;
            }
            b'.' if i < 2 => i += 1,
            _ => break,
        }
    }
    any.then(|| kernel_version(parts[0].min(255), parts[1].min(255), parts[2]))
}

/// Resume at `_dl_start_user`, before the initializers (the normal case).
pub const RESUME_DL_START_USER: u64 = 0;
/// Resume at the program's entry point, after the initializers ran at capture (loaders
/// whose `_dl_start` does not return the entry point).
pub const RESUME_ENTRY: u64 = 1;

/// What a fixup word is set to at restore.
pub mod fixup_kind {
    /// `sp + offset`, where `sp` is the address of argc on this run's initial stack.
    pub const STACK_ARGC: u32 = 1;
    /// `&argv[0] + offset`.
    pub const ARGV_ARRAY: u32 = 2;
    /// `&envp[0] + offset`.
    pub const ENVP_ARRAY: u32 = 3;
    /// `&auxv[0] + offset`.
    pub const AUXV_ARRAY: u32 = 4;
    /// `argv[arg] + offset`, or an empty string when this run has fewer arguments.
    pub const ARGV_STRING: u32 = 5;
    /// The environment string whose name matches the capture-time string at
    /// `strings + arg`, plus `offset`; the capture-time copy when this run lacks it.
    pub const ENV_STRING: u32 = 6;
    /// `getauxval(arg) + offset` for a pointer-valued auxv entry (AT_RANDOM, AT_PLATFORM, ...).
    pub const AUX_POINTER: u32 = 7;
    /// The stack-protector canary, derived from this run's AT_RANDOM.
    pub const CANARY: u32 = 8;
    /// The pointer guard, derived from this run's AT_RANDOM.
    pub const POINTER_GUARD: u32 = 9;
    /// The base name of `argv[arg]` (what follows its last '/'), or an empty string when
    /// this run has fewer arguments.
    pub const ARGV_BASENAME: u32 = 12;
    /// This run's value of auxv entry `arg` (a copy ld.so keeps: AT_CLKTCK, AT_HWCAP2,
    /// AT_MINSIGSTKSZ); where the kernel gives none, what glibc uses then.
    pub const AUX_VALUE: u32 = 13;
    /// A 32-bit `int`, not a word: 1 when this run has AT_SECURE, else 0. It marks the
    /// copies of `__libc_enable_secure` other than ld.so's own (a program's copy
    /// relocation of it).
    pub const SECURE_FLAG: u32 = 10;
    /// A 32-bit `int`, not a word: this run's argc (ld.so's `_dl_argc`).
    pub const ARGC_INT: u32 = 11;
    /// A secret drawn with getrandom(2) before the snapshot (glibc 2.42+: malloc's
    /// `tcache_key`, `malloc/malloc.c` `tcache_key_initialize`): a fresh random word that,
    /// like glibc's, is far from 0 and from all-ones, with between a quarter and three
    /// quarters of its bits set.
    pub const RANDOM_KEY: u32 = 14;
}

/// One word of the image to rewrite at restore.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Fixup {
    pub addr: u64,
    pub kind: u32,
    pub arg: u32,
    pub offset: u64,
}

/// vDSO functions the proxy knows. The proxy copy of the capture-time vDSO jumps through a
/// slot for each; the stub points the slot at this kernel's symbol or at a syscall fallback.
pub mod vdso_fn {
    pub const CLOCK_GETTIME: u32 = 1;
    pub const GETTIMEOFDAY: u32 = 2;
    pub const TIME: u32 = 3;
    pub const GETCPU: u32 = 4;
    pub const CLOCK_GETRES: u32 = 5;
    pub const GETRANDOM: u32 = 6;
    /// i386 only: the system-call entry glibc calls through `%gs:0x10`.
    pub const KERNEL_VSYSCALL: u32 = 7;
    pub const SIGRETURN: u32 = 8;
    pub const RT_SIGRETURN: u32 = 9;
    /// i386 only: the 64-bit-time variants.
    pub const CLOCK_GETTIME64: u32 = 10;
    pub const CLOCK_GETRES_TIME64: u32 = 11;

    /// The vDSO symbol names of each function (x86-64 and i386 spellings).
    pub fn names(id: u32) -> &'static [&'static [u8]] {
        match id {
            CLOCK_GETTIME => &[b"__vdso_clock_gettime"],
            GETTIMEOFDAY => &[b"__vdso_gettimeofday"],
            TIME => &[b"__vdso_time"],
            GETCPU => &[b"__vdso_getcpu"],
            CLOCK_GETRES => &[b"__vdso_clock_getres"],
            GETRANDOM => &[b"__vdso_getrandom"],
            KERNEL_VSYSCALL => &[b"__kernel_vsyscall"],
            SIGRETURN => &[b"__kernel_sigreturn"],
            RT_SIGRETURN => &[b"__kernel_rt_sigreturn"],
            CLOCK_GETTIME64 => &[b"__vdso_clock_gettime64"],
            CLOCK_GETRES_TIME64 => &[b"__vdso_clock_getres_time64"],
            _ => &[],
        }
    }

    /// The function a vDSO symbol name belongs to (the plain weak aliases included).
    pub fn by_name(name: &[u8]) -> Option<u32> {
        Some(match name {
            b"__vdso_clock_gettime" | b"clock_gettime" => CLOCK_GETTIME,
            b"__vdso_clock_gettime64" => CLOCK_GETTIME64,
            b"__vdso_clock_getres_time64" => CLOCK_GETRES_TIME64,
            b"__vdso_gettimeofday" | b"gettimeofday" => GETTIMEOFDAY,
            b"__vdso_time" | b"time" => TIME,
            b"__vdso_getcpu" | b"getcpu" => GETCPU,
            b"__vdso_clock_getres" | b"clock_getres" => CLOCK_GETRES,
            b"__vdso_getrandom" | b"getrandom" => GETRANDOM,
            b"__kernel_vsyscall" => KERNEL_VSYSCALL,
            b"__kernel_sigreturn" => SIGRETURN,
            b"__kernel_rt_sigreturn" => RT_SIGRETURN,
            _ => return None,
        })
    }
}

/// A slot (one native word) that the proxy jumps through.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VdsoSlot {
    pub slot: u64,
    pub func: u32,
    pub _pad: u32,
}

/// A range whose protection the stub sets last (`mprotect`): segments merge regions of
/// different protections, the kernel maps zero-fill ends read-write, and fixups wrote into
/// read-only pages. `prot` [`PROT_UNMAP`] means the range is not part of the image and is
/// unmapped (`munmap`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Protect {
    pub addr: u64,
    pub len: u64,
    pub prot: u32,
    pub _pad: u32,
}

/// [`Protect::prot`] of a range to unmap.
pub const PROT_UNMAP: u32 = u32::MAX;
/// [`Protect::prot`] of a gap between two moved ranges of one part of the image, which the
/// stub unmaps when the image moved (it is then a part of the room reserved for it).
pub const PROT_UNMAP_MOVED: u32 = u32::MAX - 1;

/// CPU feature bits the stub can check with `cpuid`.
pub mod cpu {
    pub const SSE3: u64 = 1 << 0;
    pub const SSSE3: u64 = 1 << 1;
    pub const SSE4_1: u64 = 1 << 2;
    pub const SSE4_2: u64 = 1 << 3;
    pub const POPCNT: u64 = 1 << 4;
    pub const CX16: u64 = 1 << 5;
    pub const AVX: u64 = 1 << 6;
    pub const AVX2: u64 = 1 << 7;
    pub const BMI1: u64 = 1 << 8;
    pub const BMI2: u64 = 1 << 9;
    pub const FMA: u64 = 1 << 10;
    pub const LZCNT: u64 = 1 << 11;
    pub const MOVBE: u64 = 1 << 12;
    pub const F16C: u64 = 1 << 13;
    pub const AVX512F: u64 = 1 << 14;
    pub const AVX512BW: u64 = 1 << 15;
    pub const AVX512CD: u64 = 1 << 16;
    pub const AVX512DQ: u64 = 1 << 17;
    pub const AVX512VL: u64 = 1 << 18;
    pub const XSAVE: u64 = 1 << 19;
    pub const CMOV: u64 = 1 << 20;
    pub const SSE2: u64 = 1 << 21;
    pub const XSAVEC: u64 = 1 << 22;

    /// Feature names, for messages, in bit order.
    pub const NAMES: [&str; 23] = [
        "SSE3", "SSSE3", "SSE4.1", "SSE4.2", "POPCNT", "CX16", "AVX", "AVX2", "BMI1", "BMI2",
        "FMA", "LZCNT", "MOVBE", "F16C", "AVX512F", "AVX512BW", "AVX512CD", "AVX512DQ", "AVX512VL",
        "XSAVE", "CMOV", "SSE2", "XSAVEC",
    ];
}

/// Size in bytes of the descriptor header.
pub const DESCRIPTOR_SIZE: usize = core::mem::size_of::<Descriptor>();

const _: () = assert!(core::mem::size_of::<Fixup>() == 24);
const _: () = assert!(core::mem::size_of::<VdsoSlot>() == 16);
const _: () = assert!(core::mem::size_of::<Protect>() == 24);
const _: () = assert!(DESCRIPTOR_SIZE.is_multiple_of(8));

const _: () = assert!(core::mem::size_of::<Tls>() == 8 + 4 * 4);
const _: () = assert!(core::mem::size_of::<Registrations>() == 5 * 8 + 2 * 4);
const _: () = assert!(core::mem::size_of::<MmLayout>() == 6 * 8);
const _: () = {
    use core::mem::size_of;
    assert!(
        DESCRIPTOR_SIZE
            == 8 + 4
                + 4
                + 6 * 8
                + size_of::<Tls>()
                + size_of::<Registrations>()
                + size_of::<MmLayout>()
                + 8
                + 8
                + 4 * size_of::<Table>()
                + 8
                + 2 * 8
                + 8
                + 2 * 4
                + size_of::<Aslr>()
    )
};
const _: () = assert!(core::mem::size_of::<Aslr>() == 8 + 4 * 8 + 5 * 16);
const _: () = assert!(core::mem::size_of::<Move>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(
            parse_release(b"5.10.0-28-amd64"),
            Some(kernel_version(5, 10, 0))
        );
        assert_eq!(
            parse_release(b"6.1.0-18-amd64"),
            Some(kernel_version(6, 1, 0))
        );
        assert_eq!(parse_release(b"4.9.337"), Some(kernel_version(4, 9, 255)));
        assert_eq!(parse_release(b"3.2"), Some(kernel_version(3, 2, 0)));
        assert_eq!(parse_release(b"6.18.0+\0"), Some(kernel_version(6, 18, 0)));
        assert_eq!(parse_release(b"x"), None);
        assert!(kernel_version(3, 18, 0) > kernel_version(3, 2, 140));
    }
}
