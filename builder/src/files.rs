//! Read-only views of input files (the program and its libraries), mapped rather than
//! copied: elfpack reads the same few megabytes several times (ELF headers, symbols,
//! build-ids, page comparisons).
use std::path::Path;

/// A file's bytes.
pub enum Bytes {
    Mapped(memmap2::Mmap),
    Empty,
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Empty => &[],
        }
    }
}

/// Maps `path` read-only.
pub fn map(path: impl AsRef<Path>) -> std::io::Result<Bytes> {
    map_file(&std::fs::File::open(path)?)
}

/// Maps the open file `f` read-only.
pub fn map_file(f: &std::fs::File) -> std::io::Result<Bytes> {
    if f.metadata()?.len() == 0 {
        return Ok(Bytes::Empty);
    }
    // SAFETY: the mapping is private and read-only; elfpack's inputs are installed files
    // that nothing rewrites while it runs (a concurrent rewrite could change what is read,
    // not memory safety of elfpack's own data: the bytes are only parsed, with bounds
    // checks, by goblin and by slicing).
    let m = unsafe { memmap2::Mmap::map(f)? };
    Ok(Bytes::Mapped(m))
}
