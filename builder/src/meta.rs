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
    pub program: Library,
    pub captured_with: CapturedWith,
    pub libraries: Vec<Library>,
    pub regions: Vec<RegionInfo>,
    pub resume: Resume,
    pub sizes: Sizes,
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

/// Builds the document. `usage` holds (stored, zero) bytes per image region.
pub fn build(
    image: &Image,
    prog: &Program,
    usage: &[(u64, u64)],
    stub_size: u64,
    segments: u64,
    symbols: u64,
) -> Meta {
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
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let time = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    let regions = image
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
        .collect();
    Meta {
        schema: SCHEMA.into(),
        elfpack_version: env!("CARGO_PKG_VERSION").into(),
        format_version: elfpack_stub::abi::FORMAT_VERSION,
        arch: prog.arch.name().into(),
        cpu_level: image.cpu_level.clone(),
        cpu_needs: crate::cpu::names(image.cpu_needs)
            .split(", ")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        program,
        captured_with: CapturedWith {
            kernel,
            glibc,
            time,
        },
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
