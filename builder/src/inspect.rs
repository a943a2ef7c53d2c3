//! `elfpack inspect`: reads the `.elfpack` document of a packed file and prints it, as text
//! or as the JSON document itself (schema `elfpack-inspect/1`, described in the README).
use crate::error::{unpackable, Result};
use crate::meta::{Meta, SCHEMA, SECTION};
use goblin::elf::Elf;
use std::path::Path;

/// The document of a packed file.
pub fn read(path: &Path) -> Result<Meta> {
    let shown = path.display();
    let bytes = std::fs::read(path)
        .map_err(|e| unpackable!("{shown}: {}", crate::program::io_reason(&e)))?;
    let not_packed = || unpackable!("{shown}: not a file packed by elfpack");
    let elf = Elf::parse(&bytes).map_err(|_| not_packed())?;
    let sh = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(SECTION))
        .ok_or_else(not_packed)?;
    let doc = bytes
        .get(sh.sh_offset as usize..(sh.sh_offset + sh.sh_size) as usize)
        .ok_or_else(not_packed)?;
    let meta: Meta = serde_json::from_slice(doc).map_err(|_| not_packed())?;
    if meta.schema != SCHEMA {
        return Err(unpackable!(
            "{shown}: packed by an elfpack with another format ({})",
            meta.schema
        ));
    }
    Ok(meta)
}

pub fn run(path: &Path, json: bool) -> Result<()> {
    let meta = read(path)?;
    let file_size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if json {
        let mut v = serde_json::to_value(&meta).expect("serialisable");
        v["sizes"]["file"] = serde_json::json!(file_size);
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("serialisable")
        );
        return Ok(());
    }
    let m = &meta;
    println!(
        "{}: packed by elfpack {} (format {})",
        path.display(),
        m.elfpack_version,
        m.format_version
    );
    println!(
        "architecture: {}, CPU level: {} (needs {})",
        m.arch,
        m.cpu_level,
        m.cpu_needs.join(", ")
    );
    println!("runs on: Linux {} or later", m.min_kernel);
    let id = |b: &Option<String>| b.clone().unwrap_or_else(|| "-".into());
    println!(
        "program: {} (build-id {})",
        m.program.path,
        id(&m.program.build_id)
    );
    println!(
        "captured with: kernel {}, glibc {}{}",
        m.captured_with.kernel,
        m.captured_with.glibc.as_deref().unwrap_or("?"),
        m.captured_with
            .time
            .map(|t| format!(", at {t} (SOURCE_DATE_EPOCH)"))
            .unwrap_or_default()
    );
    println!(
        "resume: {} at {} (program entry {})",
        m.resume.kind, m.resume.pc, m.resume.entry
    );
    println!("libraries:");
    for l in &m.libraries {
        println!(
            "  {:<20} {} ({} bytes, build-id {})",
            l.soname.as_deref().unwrap_or("-"),
            l.path,
            l.size,
            id(&l.build_id)
        );
    }
    println!("regions:");
    for r in &m.regions {
        println!(
            "  {:>14}-{:<14} {} stored {:>9} zero {:>9}  {}",
            r.start, r.end, r.prot, r.stored, r.zero, r.origin
        );
    }
    println!(
        "sizes: file {file_size}, stored {}, zero-filled {}, {} segments, stub {}, {} symbols",
        m.sizes.stored, m.sizes.zero, m.sizes.segments, m.sizes.stub, m.sizes.symbols
    );
    Ok(())
}
