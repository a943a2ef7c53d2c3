//! What a packed file says about itself (`elfpack inspect`): a versioned JSON document
//! stored in the non-loaded section `.elfpack`. It holds nothing that varies between two
//! builds of the same input (a capture time only when SOURCE_DATE_EPOCH is set).
use crate::image::Image;
use crate::program::Program;
use goblin::elf::Elf;
use serde::{Deserialize, Serialize};

/// The name of the section that holds the document.
pub const SECTION: &str = ".elfpack";
/// Version of the document's schema (documented in the README).
pub const SCHEMA: &str = "elfpack-inspect/1";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Meta {
    pub schema: String,
    pub elfpack_version: String,
    pub format_version: u32,
    pub arch: String,
    pub cpu_level: String,
    pub cpu_needs: Vec<String>,
    /// The oldest Linux release the packed file runs on ("3.2"); the stub refuses older.
    #[serde(default)]
    pub min_kernel: String,
    pub program: Library,
    pub captured_with: CapturedWith,
    /// The glibc tunables the capture ran with, `KEY=VALUE` (GLIBC_TUNABLES and its
    /// aliases such as MALLOC_PERTURB_): ld.so and malloc read them at start-up, so they
    /// hold in every run of the packed file.
    #[serde(default)]
    pub tunables: Vec<String>,
    /// Address-space randomisation.
    #[serde(default)]
    pub aslr: AslrInfo,
    pub libraries: Vec<Library>,
    pub regions: Vec<RegionInfo>,
    pub resume: Resume,
    pub sizes: Sizes,
}

/// What the packed file randomises at every run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct AslrInfo {
    /// The image moves at every run (not packed with `--no-aslr` or `--stop-at-entry`).
    pub enabled: bool,
    /// The program moves too (it is position-independent).
    pub program_moves: bool,
    /// Bits of page-granular randomness of the program's place.
    pub program_bits: u32,
    /// Words the stub relocates at every run.
    pub relocations: u64,
    /// The pages they lie in: the pages each instance writes, and so does not share.
    #[serde(default)]
    pub relocated_pages: u64,
}

impl AslrInfo {
    pub fn of(a: Option<&crate::relocs::Aslr>) -> AslrInfo {
        a.map_or_else(AslrInfo::default, |a| AslrInfo {
            enabled: true,
            program_moves: a.program_moves,
            program_bits: if a.program_moves { a.rnd_bits } else { 0 },
            relocations: a.relocs.len() as u64,
            relocated_pages: {
                let mut pages: Vec<u64> = a.relocs.iter().map(|&(addr, _)| addr >> 12).collect();
                pages.dedup();
                pages.len() as u64
            },
        })
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Library {
    pub path: String,
    pub soname: Option<String>,
    pub build_id: Option<String>,
    pub size: u64,
    /// Load address (bias) in the image.
    pub base: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CapturedWith {
    pub kernel: String,
    pub glibc: Option<String>,
    /// Seconds since the epoch, from SOURCE_DATE_EPOCH; absent otherwise.
    pub time: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RegionInfo {
    pub start: String,
    pub end: String,
    pub prot: String,
    pub stored: u64,
    pub zero: u64,
    pub origin: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Resume {
    /// "dl_start_user" or "entry".
    pub kind: String,
    pub pc: String,
    pub entry: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Sizes {
    pub stored: u64,
    pub zero: u64,
    pub segments: u64,
    pub stub: u64,
    pub symbols: u64,
}

pub fn hex(v: u64) -> String {
    format!("{v:#x}")
}

pub fn prot_string(p: u32) -> String {
    format!(
        "{}{}{}",
        if p & 1 != 0 { 'r' } else { '-' },
        if p & 2 != 0 { 'w' } else { '-' },
        if p & 4 != 0 { 'x' } else { '-' }
    )
}

/// The GNU build-id of an ELF file, in hex.
pub fn build_id(bytes: &[u8], elf: &Elf) -> Option<String> {
    elf.iter_note_headers(bytes)?
        .filter_map(Result::ok)
        .find(|n| n.n_type == goblin::elf::note::NT_GNU_BUILD_ID && n.name == "GNU")
        .map(|n| n.desc.iter().map(|b| format!("{b:02x}")).collect())
}

/// The kernel version of an ELF file's GNU ABI tag (`.note.ABI-tag`, NT_GNU_ABI_TAG: OS 0
/// is Linux, then major, minor, patch), as `abi::kernel_version` encodes it.
pub fn abi_tag(bytes: &[u8], elf: &Elf) -> Option<u32> {
    let n = elf
        .iter_note_headers(bytes)?
        .filter_map(Result::ok)
        .find(|n| n.n_type == goblin::elf::note::NT_GNU_ABI_TAG && n.name == "GNU")?;
    let w: Vec<u32> = n
        .desc
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    match w[..] {
        [0, major, minor, patch, ..] => Some(elfpack_stub::abi::kernel_version(
            major.min(255),
            minor.min(255),
            patch,
        )),
        _ => None,
    }
}

/// The oldest kernel every restore step and every object of the image work on: the
/// stub's own floor ([`STUB_MIN_KERNEL`]), raised by the objects' ABI tags (glibc 2.36's
/// libc and ld.so say 3.2.0). ld.so checked the tag at capture; a packed program resumes
/// after that check, so the stub makes it.
pub fn min_kernel(objects: &[crate::image::Object]) -> u32 {
    objects
        .iter()
        .filter_map(|o| {
            let bytes = crate::files::map(&o.path).ok()?;
            let elf = Elf::parse(&bytes).ok()?;
            abi_tag(&bytes, &elf)
        })
        .fold(STUB_MIN_KERNEL, u32::max)
}

/// The stub needs AT_RANDOM (2.6.29) and `set_robust_list` (2.6.17); glibc 2.26 and
/// later need 3.2 on x86 anyway, so that is the floor.
pub const STUB_MIN_KERNEL: u32 = elfpack_stub::abi::kernel_version(3, 2, 0);

/// "3.2" or "4.18.1" for a version `abi::kernel_version` encoded.
pub fn kernel_string(v: u32) -> String {
    let (major, minor, patch) = (v >> 16, (v >> 8) & 0xff, v & 0xff);
    if patch == 0 {
        format!("{major}.{minor}")
    } else {
        format!("{major}.{minor}.{patch}")
    }
}

/// glibc's version, from the "release version X.Y" string inside libc.so.6.
fn glibc_version(bytes: &[u8]) -> Option<String> {
    let key = b"release version ";
    let at = bytes.windows(key.len()).position(|w| w == key)? + key.len();
    let v: String = bytes[at..]
        .iter()
        .take_while(|c| c.is_ascii_digit() || **c == b'.')
        .map(|&c| c as char)
        .collect();
    let v = v.trim_end_matches('.').to_string();
    (!v.is_empty()).then_some(v)
}

fn library(path: &std::path::Path, base: u64) -> Library {
    let bytes = crate::files::map(path).unwrap_or(crate::files::Bytes::Empty);
    let elf = Elf::parse(&bytes).ok();
    Library {
        // JSON text: a path that is not UTF-8 is shown with U+FFFD in its place.
        path: path.to_string_lossy().into_owned(),
        soname: elf.as_ref().and_then(|e| e.soname.map(str::to_string)),
        build_id: elf.as_ref().and_then(|e| build_id(&bytes, e)),
        size: bytes.len() as u64,
        base: hex(base),
    }
}

/// The program's entry, the libraries' and glibc's version, from the image's objects.
/// The version of the glibc in the image (its libc.so.6), if it says.
pub fn glibc_of(image: &Image) -> Option<String> {
    let libc = image.objects.iter().find(|o| {
        crate::files::map(&o.path)
            .ok()
            .and_then(|b| Elf::parse(&b).ok().map(|e| e.soname == Some("libc.so.6")))
            .unwrap_or(false)
    })?;
    glibc_version(&crate::files::map(&libc.path).ok()?)
}

fn objects(image: &Image, prog: &Program) -> (Library, Vec<Library>, Option<String>) {
    let program_path = std::fs::canonicalize(&prog.path).unwrap_or_else(|_| prog.path.clone());
    let mut libraries = Vec::new();
    let mut program = library(&program_path, 0);
    let mut glibc = None;
    for o in &image.objects {
        if o.path == program_path {
            program = library(&o.path, o.base);
            continue;
        }
        let lib = library(&o.path, o.base);
        if lib.soname.as_deref() == Some("libc.so.6") {
            glibc = crate::files::map(&o.path)
                .ok()
                .and_then(|b| glibc_version(&b));
        }
        libraries.push(lib);
    }
    (program, libraries, glibc)
}

fn region_infos(image: &Image, usage: &[(u64, u64)]) -> Vec<RegionInfo> {
    image
        .regions
        .iter()
        .zip(usage)
        .map(|(r, &(stored, zero))| RegionInfo {
            start: hex(r.start),
            end: hex(r.end),
            prot: prot_string(r.prot),
            stored,
            zero,
            origin: if r.origin.is_empty() {
                "[anonymous]".into()
            } else {
                r.origin.clone()
            },
        })
        .collect()
}

/// Builds the document. `usage` holds (stored, zero) bytes per image region.
pub fn build(
    image: &Image,
    target: &crate::descriptor::Target,
    prog: &Program,
    usage: &[(u64, u64)],
    stub_size: u64,
    segments: u64,
    symbols: u64,
) -> Meta {
    let (program, libraries, glibc) = objects(image, prog);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let time = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    let regions = region_infos(image, usage);
    Meta {
        schema: SCHEMA.into(),
        elfpack_version: env!("CARGO_PKG_VERSION").into(),
        format_version: elfpack_stub::abi::FORMAT_VERSION,
        arch: prog.arch.name().into(),
        cpu_level: target.cpu_level.clone(),
        cpu_needs: crate::cpu::names(target.cpu_needs)
            .split(", ")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        min_kernel: kernel_string(target.min_kernel),
        program,
        captured_with: CapturedWith {
            kernel,
            glibc,
            time,
        },
        tunables: Vec::new(),
        aslr: AslrInfo::default(),
        libraries,
        regions,
        resume: Resume {
            kind: if image.resume_kind == elfpack_stub::abi::RESUME_ENTRY {
                "entry"
            } else {
                "dl_start_user"
            }
            .into(),
            pc: hex(image.resume_pc),
            entry: hex(image.user_entry),
        },
        sizes: Sizes {
            stored: usage.iter().map(|u| u.0).sum(),
            zero: usage.iter().map(|u| u.1).sum(),
            segments,
            stub: stub_size,
            symbols,
        },
    }
}
