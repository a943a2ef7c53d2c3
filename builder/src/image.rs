//! The captured process as plain data: memory regions, the resume point, thread state, the
//! program break, the auxv values that describe the program and the kernel registrations
//! to replay. No I/O happens here: the capture makes an [`Image`], the analysis zeroes the
//! per-run words of its own copy and adds the [`Fixup`]s and the [`Vdso`] proxy's entries
//! (`analysis.rs`), and layout, descriptor encoding and emission read it.
use crate::program::Arch;
use elfpack_stub::abi;

/// Memory protection bits (PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4).
pub type Prot = u32;
pub const PROT_READ: Prot = 1;
pub const PROT_WRITE: Prot = 2;
pub const PROT_EXEC: Prot = 4;

/// One mapping of the captured process.
#[derive(Clone, Debug)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub prot: Prot,
    /// The file the mapping came from, `[heap]`, `[vdso proxy]`, or empty for anonymous.
    pub origin: String,
    /// The file mapped, for file mappings (its path as bytes; `origin` is for display).
    pub file: Option<std::path::PathBuf>,
    /// Offset in `origin` of the first byte, for file mappings.
    pub file_offset: u64,
    /// The contents; `None` for reserved (PROT_NONE) ranges, whose contents nobody reads.
    pub data: Option<Data>,
}

/// A region's bytes: read from the process, or (for file mappings nobody wrote to) a
/// range of the file itself, which need not be copied.
#[derive(Clone)]
pub enum Data {
    Owned(Vec<u8>),
    File(std::sync::Arc<crate::files::Bytes>, usize, usize),
}

impl std::ops::Deref for Data {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Data::Owned(v) => v,
            Data::File(f, off, len) => &f[*off..*off + *len],
        }
    }
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.len())
    }
}

impl Data {
    /// The bytes, made private to the image first if they were the file's.
    pub fn to_mut(&mut self) -> &mut Vec<u8> {
        if let Data::File(..) = self {
            *self = Data::Owned(self.to_vec());
        }
        match self {
            Data::Owned(v) => v,
            Data::File(..) => unreachable!(),
        }
    }

    /// Whether these are the file's own bytes (so nobody wrote to them).
    pub fn is_file(&self) -> bool {
        matches!(self, Data::File(..))
    }
}

impl Region {
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// A word of the image that the stub rewrites at every start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixup {
    pub addr: u64,
    pub kind: u32,
    pub arg: u32,
    pub offset: u64,
    /// Capture-time string referred to by `ENV_STRING` fixups ("NAME=value").
    pub string: Option<Vec<u8>>,
}

/// A vDSO function entry of the proxy and the function it stands for.
#[derive(Clone, Debug)]
pub struct VdsoEntry {
    /// Address of the function in the image's copy of the vDSO.
    pub addr: u64,
    pub func: u32,
    pub name: String,
}

/// The vDSO proxy: where the captured vDSO sits in the image and its function entries.
#[derive(Clone, Debug, Default)]
pub struct Vdso {
    pub start: u64,
    pub end: u64,
    pub entries: Vec<VdsoEntry>,
}

/// A library (or the program, or ld.so) mapped in the image.
#[derive(Clone, Debug)]
pub struct Object {
    pub path: std::path::PathBuf,
    pub base: u64,
}

/// Everything the packed file must reproduce.
#[derive(Clone, Debug)]
pub struct Image {
    pub arch: Arch,
    pub regions: Vec<Region>,
    pub resume_pc: u64,
    /// `abi::RESUME_DL_START_USER` or `abi::RESUME_ENTRY`, and the `%rdx` for the latter.
    pub resume_kind: u64,
    pub resume_dx: u64,
    /// AT_ENTRY of the original program (and the value `_dl_start` returned).
    pub user_entry: u64,
    pub at_phdr: u64,
    pub at_phnum: u64,
    pub at_phent: u64,
    pub at_base: u64,
    pub tls: abi::Tls,
    pub regs: abi::Registrations,
    pub mm: abi::MmLayout,
    pub enable_secure: u64,
    /// Address of `__rseq_size` (ld.so, glibc 2.35+), or 0.
    pub rseq_size: u64,
    /// Other copies of `int __libc_enable_secure` (a program's copy relocation of it).
    pub secure_copies: Vec<u64>,
    /// Where the vDSO is mapped (the image keeps a copy of it).
    pub vdso: Option<(u64, u64)>,
    /// PT_GNU_STACK flags of the output: executable exactly when the captured process's
    /// stack was (ld.so makes it so for a library whose PT_GNU_STACK asks for it). `None`
    /// when the program has no PT_GNU_STACK: the kernel then gives i386 programs
    /// READ_IMPLIES_EXEC (linux `arch/x86/include/asm/elf.h`, `elf_read_implies_exec`),
    /// which the output keeps by having none either.
    pub stack_flags: Option<u32>,
    /// The capture ran with READ_IMPLIES_EXEC: every mapping is executable, so the
    /// protection does not tell code from data.
    pub read_implies_exec: bool,
    pub objects: Vec<Object>,
    /// The program's part of the image `[lo, hi)`: its mappings, bss and heap.
    pub program_range: (u64, u64),
    /// How far the capture moved the program from where the first capture has it.
    pub program_shift: u64,
}

impl Image {
    pub fn region_of(&self, addr: u64) -> Option<&Region> {
        self.regions.iter().find(|r| r.contains(addr))
    }

    /// The `len` captured bytes at `addr`, within one region.
    pub fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let r = self.region_of(addr)?;
        let off = usize::try_from(addr - r.start).ok()?;
        r.data.as_ref()?.get(off..off.checked_add(len)?)
    }

    /// The word (of the architecture's size) at `addr`.
    pub fn word(&self, addr: u64) -> Option<u64> {
        let w = self.arch.word();
        let mut v = [0u8; 8];
        v[..w].copy_from_slice(self.read(addr, w)?);
        Some(u64::from_le_bytes(v))
    }

    /// The NUL-terminated string at `addr` (without the NUL), within one region.
    pub fn string(&self, addr: u64) -> Option<&[u8]> {
        let r = self.region_of(addr)?;
        let off = usize::try_from(addr - r.start).ok()?;
        let rest = r.data.as_ref()?.get(off..)?;
        Some(&rest[..rest.iter().position(|&c| c == 0)?])
    }

    /// Writes `len` bytes at `addr`; false if the range is not captured data.
    pub fn write_bytes(&mut self, addr: u64, bytes: &[u8]) -> bool {
        let Some(r) = self.regions.iter_mut().find(|r| r.contains(addr)) else {
            return false;
        };
        let off = (addr - r.start) as usize;
        match r
            .data
            .as_mut()
            .and_then(|d| d.to_mut().get_mut(off..off + bytes.len()))
        {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    pub fn write_word(&mut self, addr: u64, value: u64) -> bool {
        let w = self.arch.word();
        let bytes = value.to_le_bytes();
        self.write_bytes(addr, &bytes[..w])
    }
}

#[cfg(test)]
impl Image {
    /// An image of one read-write region at `start` holding `bytes`.
    pub fn for_test(arch: Arch, start: u64, bytes: Vec<u8>) -> Image {
        Image {
            arch,
            regions: vec![Region {
                start,
                end: start + bytes.len() as u64,
                prot: 3,
                origin: String::new(),
                file: None,
                file_offset: 0,
                data: Some(Data::Owned(bytes)),
            }],
            resume_pc: 0,
            resume_kind: 0,
            resume_dx: 0,
            user_entry: 0,
            at_phdr: 0,
            at_phnum: 0,
            at_phent: 0,
            at_base: 0,
            tls: Default::default(),
            regs: Default::default(),
            mm: Default::default(),
            enable_secure: 0,
            rseq_size: 0,
            secure_copies: vec![],
            vdso: None,
            stack_flags: Some(6),
            read_implies_exec: false,
            objects: vec![],
            program_range: (0, 0),
            program_shift: 0,
        }
    }
}
