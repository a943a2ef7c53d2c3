//! Step 0: refuse to start on a CPU that lacks a feature the image's code was chosen for
//! (glibc picked IFUNC implementations on the capture CPU), instead of dying later with
//! SIGILL.
use crate::{arch, desc, fail, line::Line, sys};
use elfpack_stub::abi::{cpu::*, Descriptor};

/// The features this CPU (and OS) offers, as `abi::cpu` bits.
pub fn present() -> u64 {
    let bit = |reg: u32, n: u32| reg & (1 << n) != 0;
    let (max, ..) = arch::cpuid(0, 0);
    let (_, _, c1, d1) = arch::cpuid(1, 0);
    let mut f = 0;
    let mut set = |cond: bool, b: u64| {
        if cond {
            f |= b
        }
    };
    set(bit(d1, 15), CMOV);
    set(bit(d1, 26), SSE2);
    set(bit(c1, 0), SSE3);
    set(bit(c1, 9), SSSE3);
    set(bit(c1, 13), CX16);
    set(bit(c1, 19), SSE4_1);
    set(bit(c1, 20), SSE4_2);
    set(bit(c1, 22), MOVBE);
    set(bit(c1, 23), POPCNT);
    set(bit(c1, 26), XSAVE);
    // AVX state must be enabled by the OS too (Intel SDM vol. 1, 14.3 "Detection of
    // Intel AVX instructions").
    let xcr0 = if bit(c1, 27) { arch::xgetbv0() } else { 0 };
    let avx_os = xcr0 & 0x6 == 0x6;
    let avx512_os = xcr0 & 0xe6 == 0xe6;
    set(bit(c1, 28) && avx_os, AVX);
    set(bit(c1, 12) && avx_os, FMA);
    set(bit(c1, 29) && avx_os, F16C);
    if max >= 7 {
        let (_, b7, _, _) = arch::cpuid(7, 0);
        set(bit(b7, 3), BMI1);
        set(bit(b7, 8), BMI2);
        set(bit(b7, 5) && avx_os, AVX2);
        set(bit(b7, 16) && avx512_os, AVX512F);
        set(bit(b7, 17) && avx512_os, AVX512DQ);
        set(bit(b7, 28) && avx512_os, AVX512CD);
        set(bit(b7, 30) && avx512_os, AVX512BW);
        set(bit(b7, 31) && avx512_os, AVX512VL);
    }
    let (maxext, ..) = arch::cpuid(0x8000_0000, 0);
    if maxext >= 0x8000_0001 {
        let (_, _, ce, _) = arch::cpuid(0x8000_0001, 0);
        set(bit(ce, 5), LZCNT);
    }
    f
}

fn put_names(line: &mut Line, bits: u64) {
    let mut first = true;
    for (i, name) in NAMES.iter().enumerate() {
        if bits & (1 << i) != 0 {
            if !first {
                line.push(b", ");
            }
            first = false;
            line.push(name.as_bytes());
        }
    }
}

/// Step 0.
pub fn check(d: &'static Descriptor) {
    if d.cpu_needs == 0 {
        return;
    }
    let missing = d.cpu_needs & !present();
    if missing == 0 {
        return;
    }
    let level = desc::string(d, d.cpu_level_name);
    let mut line = Line::new();
    line.push(b"elfpack: this program was packed for ");
    // SAFETY: the level name is a NUL-terminated string of the descriptor.
    line.push(unsafe {
        core::slice::from_raw_parts(level, crate::stack::InitialStack::strlen(level))
    });
    line.push(b" (needs ");
    put_names(&mut line, d.cpu_needs);
    line.push(b"); this CPU lacks ");
    put_names(&mut line, missing);
    line.push(" \u{2014} repack with --cpu baseline".as_bytes());
    line.emit();
    sys::exit_group(fail::EXIT_RESTORE_FAILED);
}

/// What glibc uses for an auxv entry that the kernel does not give (qemu-user, kernels
/// before 5.14 for AT_MINSIGSTKSZ), for the entries whose copies the image holds.
pub fn aux_default(tag: u32) -> usize {
    if tag != linux_raw_sys::auxvec::AT_MINSIGSTKSZ {
        // AT_CLKTCK and AT_HWCAP2: glibc keeps 0 (and `sysconf(_SC_CLK_TCK)` then says 100).
        return 0;
    }
    // glibc `sysdeps/unix/sysv/linux/x86/dl-minsigstacksize.h`, `dl_check_minsigstacksize`:
    // the kernel's signal frame with this CPU's XSAVE area, or MINSIGSTKSZ without XSAVE.
    let (max, ..) = arch::cpuid(0, 0);
    let (_, _, c1, _) = arch::cpuid(1, 0);
    let osxsave = c1 & (1 << 27) != 0;
    if max < 0xd || !osxsave {
        return 2048;
    }
    let (_, xsave_size, _, _) = arch::cpuid(0xd, 0);
    // The frame before the XSAVE buffer, 16-aligned, then padded to align the buffer at
    // 64, the buffer, and FP_XSTATE_MAGIC2 (4 bytes).
    let before = (arch::SIGFRAME_SIZE + 15).next_multiple_of(16) + (64 - 16);
    (before + xsave_size + 4) as usize
}
