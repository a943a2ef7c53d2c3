//! `elfpack inspect`: reads the `.elfpack` document of a packed file and prints it, as text
//! or as the JSON document itself (schema `elfpack-inspect/1`, described in the README).
//!
//! The file is untrusted: only a regular file is read (a FIFO or a device is refused
//! before anything is read from it), it is mapped rather than read whole, and every string
//! taken from it is printed with its control characters escaped.
use crate::error::{unpackable, Result};
use crate::meta::{Meta, SCHEMA, SECTION};
use goblin::elf::Elf;
use std::fmt::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest `.elfpack` document read (the builder writes a few kilobytes per library).
const MAX_DOCUMENT: u64 = 64 << 20;

/// The bytes of a regular file, mapped; anything else is refused without blocking.
fn map_regular(path: &Path) -> Result<(crate::files::Bytes, u64)> {
    let shown = escape(&path.display().to_string());
    let f = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO would block open(2) until a writer appears.
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| unpackable!("{shown}: {}", crate::program::io_reason(&e)))?;
    let md = f
        .metadata()
        .map_err(|e| unpackable!("{shown}: {}", crate::program::io_reason(&e)))?;
    if md.is_dir() {
        return Err(unpackable!("{shown}: is a directory"));
    }
    if !md.is_file() {
        return Err(unpackable!(
            "{shown}: not a regular file (elfpack reads only files it wrote)"
        ));
    }
    let bytes = crate::files::map_file(&f)
        .map_err(|e| unpackable!("{shown}: {}", crate::program::io_reason(&e)))?;
    Ok((bytes, md.len()))
}

/// The document of a packed file, and the file's size.
pub fn read(path: &Path) -> Result<(Meta, u64)> {
    let shown = escape(&path.display().to_string());
    let (bytes, size) = map_regular(path)?;
    let not_packed = || unpackable!("{shown}: not a file packed by elfpack");
    let elf = Elf::parse(&bytes).map_err(|_| not_packed())?;
    let sh = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(SECTION))
        .ok_or_else(not_packed)?;
    if sh.sh_size > MAX_DOCUMENT {
        return Err(not_packed());
    }
    let doc = usize::try_from(sh.sh_offset)
        .ok()
        .zip(usize::try_from(sh.sh_size).ok())
        .and_then(|(o, n)| bytes.get(o..o.checked_add(n)?))
        .ok_or_else(not_packed)?;
    let meta: Meta = serde_json::from_slice(doc).map_err(|_| not_packed())?;
    if meta.schema != SCHEMA {
        return Err(unpackable!(
            "{shown}: packed by an elfpack with another format ({})",
            escape(&meta.schema)
        ));
    }
    Ok((meta, size))
}

/// `s` with every control character (C0, DEL, C1) written as `\xNN` (or `\n`, `\t`,
/// `\\`), so that a crafted file cannot send terminal escape sequences.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// The text (or JSON) that `inspect` prints.
pub fn render(path: &Path, meta: &Meta, file_size: u64, json: bool) -> String {
    let mut o = String::new();
    if json {
        let mut v = serde_json::to_value(meta).expect("serialisable");
        v["sizes"]["file"] = serde_json::json!(file_size);
        o.push_str(&serde_json::to_string_pretty(&v).expect("serialisable"));
        o.push('\n');
        return o;
    }
    describe(&mut o, path, meta);
    contents(&mut o, meta, file_size);
    o
}

/// `-` for an unknown build ID.
fn id(b: &Option<String>) -> String {
    b.as_deref().map_or_else(|| "-".into(), escape)
}

/// The text's first part: versions, CPU level, program, capture, resume point, tunables.
fn describe(o: &mut String, path: &Path, m: &Meta) {
    let e = escape;
    let _ = writeln!(
        o,
        "{}: packed by elfpack {} (format {})",
        e(&path.display().to_string()),
        e(&m.elfpack_version),
        m.format_version
    );
    let needs: Vec<String> = m.cpu_needs.iter().map(|s| e(s)).collect();
    let _ = writeln!(
        o,
        "architecture: {}, CPU level: {} (needs {})",
        e(&m.arch),
        e(&m.cpu_level),
        needs.join(", ")
    );
    let _ = writeln!(o, "runs on: Linux {} or later", e(&m.min_kernel));
    let a = &m.aslr;
    let _ = writeln!(
        o,
        "address randomisation: {}",
        match (a.enabled, a.program_moves) {
            (false, _) => "off (the captured layout at every run)".to_string(),
            (true, true) => format!(
                "on (the program by {} bits, ld.so and the libraries where mmap puts them; {} relocations in {} pages)",
                a.program_bits, a.relocations, a.relocated_pages
            ),
            (true, false) => format!(
                "on (ld.so and the libraries where mmap puts them; the program is not position-independent and stays; {} relocations in {} pages)",
                a.relocations, a.relocated_pages
            ),
        }
    );
    let _ = writeln!(
        o,
        "program: {} (build-id {})",
        e(&m.program.path),
        id(&m.program.build_id)
    );
    let _ = writeln!(
        o,
        "captured with: kernel {}, glibc {}{}",
        e(&m.captured_with.kernel),
        m.captured_with
            .glibc
            .as_deref()
            .map_or_else(|| "?".into(), e),
        m.captured_with
            .time
            .map(|t| format!(", at {t} (SOURCE_DATE_EPOCH)"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        o,
        "resume: {} at {} (program entry {})",
        e(&m.resume.kind),
        e(&m.resume.pc),
        e(&m.resume.entry)
    );
    let tunables: Vec<String> = m.tunables.iter().map(|t| e(t)).collect();
    let _ = writeln!(
        o,
        "tunables: {}",
        if tunables.is_empty() {
            "none".into()
        } else {
            tunables.join(" ")
        }
    );
}

/// The text's second part: libraries, regions, sizes.
fn contents(o: &mut String, m: &Meta, file_size: u64) {
    let e = escape;
    let _ = writeln!(o, "libraries:");
    for l in &m.libraries {
        let _ = writeln!(
            o,
            "  {:<20} {} ({} bytes, build-id {})",
            l.soname.as_deref().map_or_else(|| "-".into(), e),
            e(&l.path),
            l.size,
            id(&l.build_id)
        );
    }
    let _ = writeln!(o, "regions:");
    for r in &m.regions {
        let _ = writeln!(
            o,
            "  {:>14}-{:<14} {} stored {:>9} zero {:>9}  {}",
            e(&r.start),
            e(&r.end),
            e(&r.prot),
            r.stored,
            r.zero,
            e(&r.origin)
        );
    }
    let _ = writeln!(
        o,
        "sizes: file {file_size}, stored {}, zero-filled {}, {} segments, stub {}, {} symbols",
        m.sizes.stored, m.sizes.zero, m.sizes.segments, m.sizes.stub, m.sizes.symbols
    );
}

pub fn run(path: &Path, json: bool) -> Result<()> {
    let (meta, size) = read(path)?;
    crate::report::print_stdout(render(path, &meta, size, json).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\x1b[31mb"), "a\\x1b[31mb");
        assert_eq!(escape("x\ny\tz\\"), "x\\ny\\tz\\\\");
        assert_eq!(escape("\u{9b}2J\u{7f}"), "\\x9b2J\\x7f");
        assert_eq!(escape("libc.so.6 é"), "libc.so.6 é");
    }
}
