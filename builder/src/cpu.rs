//! CPU feature levels: which glibc IFUNC implementations the capture may pick, and which
//! CPU features the packed image then needs (checked by the stub at every start).
//!
//! glibc resolves IFUNCs (memcpy, strlen, ...) once, in ld.so, from the CPU it runs on; the
//! packed image keeps those choices. At capture elfpack masks the features above the
//! chosen level with glibc's own tunable `glibc.cpu.hwcaps` (glibc
//! `sysdeps/x86/cpu-tunables.c`, `TUNABLE_CALLBACK (set_hwcaps)`), so the image runs on
//! any CPU of that level.
use crate::error::{unpackable, Result};
use crate::program::Arch;
use elfpack_stub::abi::cpu::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    /// Whatever this machine's CPU has: fastest here, may not start elsewhere.
    Native,
    /// The architecture's baseline (x86-64: the original x86-64; i386: i686 with SSE2,
    /// which glibc also reports in AT_HWCAP).
    Baseline,
    #[value(name = "x86-64-v2")]
    V2,
    #[value(name = "x86-64-v3")]
    V3,
    #[value(name = "x86-64-v4")]
    V4,
}

const V2: u64 = SSE3 | SSSE3 | SSE4_1 | SSE4_2 | POPCNT | CX16;
const V3: u64 = V2 | AVX | AVX2 | BMI1 | BMI2 | FMA | LZCNT | MOVBE | F16C;
const V4: u64 = V3 | AVX512F | AVX512BW | AVX512CD | AVX512DQ | AVX512VL;

/// The features glibc's tunable can mask, with its names for them.
const MASKABLE: [(u64, &str); 19] = [
    (SSE3, "SSE3"),
    (SSSE3, "SSSE3"),
    (SSE4_1, "SSE4_1"),
    (SSE4_2, "SSE4_2"),
    (POPCNT, "POPCNT"),
    (AVX, "AVX"),
    (AVX2, "AVX2"),
    (BMI1, "BMI1"),
    (BMI2, "BMI2"),
    (FMA, "FMA"),
    (LZCNT, "LZCNT"),
    (MOVBE, "MOVBE"),
    (F16C, "F16C"),
    (AVX512F, "AVX512F"),
    (AVX512BW, "AVX512BW"),
    (AVX512CD, "AVX512CD"),
    (AVX512DQ, "AVX512DQ"),
    (AVX512VL, "AVX512VL"),
    (SSE2, "SSE2"),
];

/// glibc 2.31's names for the "usable" bits its IFUNC selectors test.
const LEGACY_USABLE: [(u64, &str); 6] = [
    (AVX, "AVX_Usable"),
    (AVX2, "AVX2_Usable"),
    (FMA, "FMA_Usable"),
    // FMA4 (AMD only) needs AVX usable; no level allows it without AVX.
    (AVX, "FMA4_Usable"),
    (AVX512F, "AVX512F_Usable"),
    (AVX512DQ, "AVX512DQ_Usable"),
];

/// This machine's features, as `abi::cpu` bits.
pub fn host() -> u64 {
    let mut f = 0;
    macro_rules! detect {
        ($($feat:tt => $bit:expr),* $(,)?) => {
            $( if std::arch::is_x86_feature_detected!($feat) { f |= $bit; } )*
        };
    }
    detect!(
        "sse2" => SSE2, "sse3" => SSE3, "ssse3" => SSSE3, "sse4.1" => SSE4_1, "sse4.2" => SSE4_2,
        "popcnt" => POPCNT, "cmpxchg16b" => CX16, "avx" => AVX, "avx2" => AVX2, "bmi1" => BMI1,
        "bmi2" => BMI2, "fma" => FMA, "lzcnt" => LZCNT, "movbe" => MOVBE, "f16c" => F16C,
        "avx512f" => AVX512F, "avx512bw" => AVX512BW, "avx512cd" => AVX512CD,
        "avx512dq" => AVX512DQ, "avx512vl" => AVX512VL, "xsave" => XSAVE, "xsavec" => XSAVEC,
    );
    f | CMOV
}

/// What packing at `level` means for `arch` on this machine.
pub struct Plan {
    pub name: String,
    /// Features the image needs (checked by the stub).
    pub needs: u64,
    /// The `glibc.cpu.hwcaps` value for the capture, if anything is masked.
    pub hwcaps: Option<String>,
    /// The features the selected implementations may use (crate::cpu_check); `None` for
    /// `native`, which allows whatever this CPU has.
    pub allowed: Option<u64>,
}

pub fn plan(level: Level, arch: Arch) -> Result<Plan> {
    let host = host();
    let (name, allowed) = match (level, arch) {
        (Level::Native, _) => ("native".to_string(), host),
        (Level::Baseline, _) => (arch.spec().baseline_name.to_string(), CMOV | SSE2),
        (Level::V2, _) => ("x86-64-v2".to_string(), V2 | CMOV | SSE2),
        (Level::V3, _) => ("x86-64-v3".to_string(), V3 | CMOV | SSE2),
        (Level::V4, _) => ("x86-64-v4".to_string(), V4 | CMOV | SSE2),
    };
    let lacking = allowed & !host;
    if lacking != 0 {
        return Err(unpackable!(
            "--cpu {name}: this machine lacks {}, so it cannot capture for that level",
            names(lacking)
        ));
    }
    let masked: Vec<&str> = MASKABLE
        .iter()
        .filter(|(bit, _)| host & bit != 0 && allowed & bit == 0)
        .map(|&(_, n)| n)
        .collect();
    let mut masked = masked;
    // glibc 2.31 and older select implementations by "usable" bits of their own, computed
    // before the tunable is applied; masking the CPUID bit leaves them set (glibc-2.31
    // `sysdeps/x86/cpu-tunables.c`; the bits became CPU_FEATURE_USABLE in 2.32). Newer
    // glibc ignores these names.
    for (bit, name) in LEGACY_USABLE {
        if host & bit != 0 && allowed & bit == 0 {
            masked.push(name);
        }
    }
    if host & AVX2 != 0 && allowed & AVX2 == 0 {
        // glibc derives this preference from AVX2 before it applies the tunable, and
        // memmove/memcpy select their AVX versions by it (sysdeps/x86/cpu-features.c,
        // `init_cpu_features`; sysdeps/x86_64/multiarch/ifunc-memmove.h).
        masked.push("AVX_Fast_Unaligned_Load");
    }
    // The lazy-binding trampoline that ld.so puts in every GOT[2] saves the vector state
    // with XSAVEC or XSAVE where it can (sysdeps/x86/cpu-features.c, `update_active`;
    // sysdeps/x86_64/dl-machine.h, `elf_machine_runtime_setup`). XSAVEC belongs to no
    // level and XSAVE only to those with AVX: without them it uses FXSAVE.
    if level != Level::Native {
        if host & XSAVEC != 0 {
            masked.push("XSAVEC");
            masked.push("XSAVEC_Usable");
        }
        if host & XSAVE != 0 && allowed & AVX == 0 {
            masked.push("XSAVE");
        }
    }
    let hwcaps = (!masked.is_empty()).then(|| {
        masked
            .iter()
            .map(|n| format!("-{n}"))
            .collect::<Vec<_>>()
            .join(",")
    });
    // What the image relies on: the level's features that this CPU has (native: the ones
    // glibc selects implementations by).
    let selectable: u64 = MASKABLE.iter().map(|&(b, _)| b).fold(0, |a, b| a | b);
    let needs = allowed & host & (selectable | CMOV);
    // The levels with AVX include XSAVE: the OS must save the YMM state for AVX.
    let xsave = if allowed & AVX != 0 { XSAVE } else { 0 };
    Ok(Plan {
        name,
        needs,
        hwcaps,
        allowed: (level != Level::Native).then_some(allowed | xsave),
    })
}

/// Comma-separated feature names of `bits`.
pub fn names(bits: u64) -> String {
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// GLIBC_TUNABLES for the capture: the caller's, with the hwcaps mask appended (a later
/// assignment of a tunable wins in glibc's parser, so a mask the caller set is kept last).
pub fn tunables(existing: Option<&str>, hwcaps: &str) -> String {
    let ours = format!("glibc.cpu.hwcaps={hwcaps}");
    match existing {
        Some(e) if e.contains("glibc.cpu.hwcaps=") => format!("{ours}:{e}"),
        Some(e) if !e.is_empty() => format!("{e}:{ours}"),
        _ => ours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunables_merge_with_the_callers() {
        assert_eq!(tunables(None, "-AVX2"), "glibc.cpu.hwcaps=-AVX2");
        assert_eq!(tunables(Some(""), "-AVX2"), "glibc.cpu.hwcaps=-AVX2");
        assert_eq!(
            tunables(Some("glibc.malloc.check=3"), "-AVX2"),
            "glibc.malloc.check=3:glibc.cpu.hwcaps=-AVX2"
        );
        // The caller's own hwcaps setting comes last, so it wins.
        assert_eq!(
            tunables(Some("glibc.cpu.hwcaps=-SSE4_2"), "-AVX2"),
            "glibc.cpu.hwcaps=-AVX2:glibc.cpu.hwcaps=-SSE4_2"
        );
    }

    #[test]
    fn baseline_masks_everything_this_cpu_has_above_it() {
        let host = host();
        let p = plan(Level::Baseline, Arch::X86_64).unwrap();
        assert_eq!(p.needs, CMOV | SSE2);
        let masked = p.hwcaps.unwrap_or_default();
        for (bit, name) in MASKABLE {
            if bit == SSE2 {
                continue;
            }
            assert_eq!(
                host & bit != 0,
                masked.split(',').any(|m| m == format!("-{name}")),
                "{name}"
            );
        }
        if host & AVX2 != 0 {
            assert!(masked.contains("-AVX_Fast_Unaligned_Load"));
        }
    }

    #[test]
    fn native_masks_nothing_and_needs_what_the_cpu_has() {
        let p = plan(Level::Native, Arch::X86_64).unwrap();
        assert!(p.hwcaps.is_none());
        assert_eq!(p.needs & !host(), 0);
    }

    #[test]
    fn names_in_bit_order() {
        assert_eq!(names(AVX2 | SSE3), "SSE3, AVX2");
        assert_eq!(names(0), "");
    }
}
