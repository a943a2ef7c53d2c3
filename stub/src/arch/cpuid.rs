// `cpuid` and `xgetbv`, the same on both architectures, written once: `x86.rs` and
// `x86_64.rs` include this file, so that they stay items of those modules (in a module of
// their own they would change how rustc partitions and inlines the stub's code).

/// `cpuid` leaf/subleaf → (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    // cpuid exists on every x86-64 CPU (AMD64 APM vol. 3, "CPUID") and on every CPU that
    // runs i686 code (Intel SDM vol. 2, "CPUID").
    let r = __cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// `xgetbv(0)`, the OS-enabled state components; only valid when OSXSAVE is set.
pub fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller checked CPUID.1:ECX.OSXSAVE, which makes XGETBV legal (Intel SDM
    // vol. 2, "XGETBV").
    unsafe {
        asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}
