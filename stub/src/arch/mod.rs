//! Per-architecture code. Each module provides the same items: `_start`, `syscall6`,
//! `use_vsyscall`, `set_thread_pointer`, `resume`, `vdso_fallback`; the two share `cpuid`
//! and `xgetbv0`, written once in `cpuid.rs`. Nothing outside `arch` contains assembly.

#[cfg(target_arch = "x86")]
mod x86;
#[cfg(target_arch = "x86")]
pub use x86::*;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;
