//! The checks around the capture: OUTPUT can be written (before), and what `--include`
//! asked for was loaded, with no sanitizer runtime (after).
use crate::error::{unpackable, Error, Result};
use crate::warning::Warning;
use crate::{files, image, linkmap, output, program};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// After capture: every `--include` is loaded (ld.so ignores a preload it cannot use,
/// with a message, and goes on), and one given by name is in ld.so's link map under that
/// name or as its soname, which a later `dlopen` of the name matches.
pub fn check_loaded(image: &image::Image, includes: &[(OsString, PathBuf)]) -> Result<()> {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let entries = linkmap::read_entries(image);
    for (name, path) in includes {
        let shown = Path::new(name).display();
        let want = id(path);
        let loaded = want.is_some() && image.objects.iter().any(|o| id(&o.path) == want);
        let by_name = !name.as_bytes().contains(&b'/');
        if by_name {
            if let Some(entries) = &entries {
                let known = entries.iter().any(|e| {
                    e.names.iter().any(|n| n.as_bytes() == name.as_bytes())
                        || program::soname(&e.path).is_some_and(|s| s.as_bytes() == name.as_bytes())
                });
                if known {
                    continue;
                }
                if loaded {
                    return Err(Error::Capture(format!(
                        "--include {shown}: ld.so loaded {} but not under that name, so a later dlopen of it would look for it on the file system",
                        path.display()
                    )));
                }
            }
        }
        if !loaded {
            return Err(Error::Capture(format!(
                "--include {shown}: ld.so did not load {}",
                path.display()
            )));
        }
    }
    Ok(())
}

/// No loaded object brings a sanitizer runtime, unless the program is a sanitizer build
/// (then the image sits where that runtime expects it).
pub fn check_sanitizers(image: &image::Image, prog: &program::Program) -> Result<()> {
    if prog.sanitizer.is_some() {
        return Ok(());
    }
    for o in &image.objects {
        let Ok(bytes) = files::map(&o.path) else {
            continue;
        };
        if let Some(name) = goblin::elf::Elf::parse(&bytes)
            .ok()
            .and_then(|e| program::sanitizer(&e))
        {
            return Err(program::sanitizer_error(
                &o.path.display().to_string(),
                name,
            ));
        }
    }
    Ok(())
}

/// Refuses an OUTPUT that is the program itself or cannot be written, before capturing.
/// Returns the directory OUTPUT goes into.
pub fn check_output(output: &Path, program: &Path) -> Result<PathBuf> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if output.as_os_str().is_empty() || output.file_name().is_none() {
        return Err(unpackable!("{}: not a file name", output.display()));
    }
    if let (Ok(o), Ok(p)) = (std::fs::metadata(output), std::fs::metadata(program)) {
        if o.dev() == p.dev() && o.ino() == p.ino() {
            return Err(unpackable!(
                "{}: OUTPUT is the program itself; choose another name",
                output.display()
            ));
        }
        if o.is_dir() {
            return Err(unpackable!("{}: is a directory", output.display()));
        }
    }
    // OUTPUT is replaced by a rename: never a device, FIFO or socket that happens to be
    // there.
    if let Ok(o) = std::fs::symlink_metadata(output) {
        if !o.is_file() && !o.is_symlink() && !o.is_dir() {
            return Err(unpackable!(
                "{}: exists and is not a regular file",
                output.display()
            ));
        }
    }
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(unpackable!("{}: not a directory", dir.display())),
        Err(e) => return Err(unpackable!("{}: {}", dir.display(), program::io_reason(&e))),
    }
    // Probe writability with the same kind of file the final write uses.
    output::probe(&dir)?;
    Ok(dir)
}

/// The glibc versions elfpack is tested with: what it restores of glibc's start-up state
/// (the rseq area, the tcache key, the getrandom cache, ...) was checked against each.
pub const GLIBC_TESTED: (u32, u32) = (31, 43);

/// Refuses an image whose glibc elfpack is not tested with, or whose version it cannot
/// tell, unless `untested` (`--untested-glibc`): then a warning.
pub fn check_glibc(image: &image::Image, untested: bool) -> Result<Option<Warning>> {
    let version = crate::meta::glibc_of(image);
    let minor = version
        .as_deref()
        .and_then(|v| v.strip_prefix("2."))
        .and_then(|m| m.split('.').next()?.parse::<u32>().ok());
    let (lo, hi) = GLIBC_TESTED;
    if minor.is_some_and(|m| (lo..=hi).contains(&m)) {
        return Ok(None);
    }
    let what = match &version {
        Some(v) => format!("glibc {v} is outside the versions elfpack is tested with (2.{lo} to 2.{hi})"),
        None => "the program's glibc does not say its version (no libc.so.6 with a \"release version\" string)".to_string(),
    };
    if untested {
        return Ok(Some(Warning::UntestedGlibc(what)));
    }
    Err(unpackable!(
        "{what}: its start-up state may hold what elfpack does not restore (pack anyway with --untested-glibc)"
    ))
}
