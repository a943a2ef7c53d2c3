//! The program interpreter (PT_INTERP), checked before anything runs: the capture executes
//! it, so it must be glibc's ld.so for the program's class and machine. Anything else
//! (a static program, musl's loader, a library of another architecture) is refused.
use crate::error::{unpackable, Result};
use crate::program::{io_reason, Arch};
use goblin::elf::{header, program_header as ph, Elf};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The path PT_INTERP names, as the kernel reads it (linux `fs/binfmt_elf.c`,
/// `load_elf_binary`: the segment's bytes must end with a NUL, else ENOEXEC); `None` when
/// the program has no PT_INTERP.
pub fn path(shown: &str, bytes: &[u8], elf: &Elf) -> Result<Option<PathBuf>> {
    let Some(p) = elf
        .program_headers
        .iter()
        .find(|p| p.p_type == ph::PT_INTERP)
    else {
        return Ok(None);
    };
    let seg = usize::try_from(p.p_offset)
        .ok()
        .zip(usize::try_from(p.p_filesz).ok())
        .and_then(|(o, n)| bytes.get(o..o.checked_add(n)?))
        .ok_or_else(|| {
            unpackable!("{shown}: truncated ELF (PT_INTERP lies past the end of the file)")
        })?;
    match seg.split_last() {
        Some((0, s)) if !s.is_empty() => {
            let s = s.split(|&c| c == 0).next().unwrap_or(s);
            if s.is_empty() {
                return Err(unpackable!("{shown}: PT_INTERP names an empty path"));
            }
            Ok(Some(PathBuf::from(OsStr::from_bytes(s))))
        }
        _ => Err(unpackable!(
            "{shown}: PT_INTERP is not a NUL-terminated path; the kernel refuses to run this program"
        )),
    }
}

/// Whether `bytes` look like musl's dynamic loader (which is musl's libc.so).
fn is_musl(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"musl")
}

/// Checks that `interp` is a glibc ld.so of `arch`: an ELF shared object of the program's
/// class and machine that defines the version `GLIBC_PRIVATE` and the symbols of glibc's
/// loader that the capture and the stub rely on (`_dl_argv`, `__libc_enable_secure`).
/// Returns whether its list of variables removed in secure mode is the one the stub
/// applies (glibc 2.36's).
pub fn check(shown: &str, interp: &Path, arch: Arch) -> Result<bool> {
    let name = interp.display();
    let musl = || {
        unpackable!(
            "{shown}: its interpreter {name} is musl's loader; musl programs are not supported yet (only glibc's ld.so)"
        )
    };
    if interp
        .file_name()
        .is_some_and(|n| n.as_bytes().starts_with(b"ld-musl-"))
    {
        return Err(musl());
    }
    let md = std::fs::metadata(interp)
        .map_err(|e| unpackable!("{shown}: its interpreter {name}: {}", io_reason(&e)))?;
    if !md.is_file() {
        return Err(unpackable!(
            "{shown}: its interpreter {name} is not a regular file"
        ));
    }
    let bytes = crate::files::map(interp)
        .map_err(|e| unpackable!("{shown}: its interpreter {name}: {}", io_reason(&e)))?;
    let not_glibc = |why: &str| {
        unpackable!(
            "{shown}: its interpreter {name} is not glibc's ld.so for {} ({why}); elfpack runs only glibc's loader",
            arch.name()
        )
    };
    let elf = match Elf::parse(&bytes) {
        Ok(e) if bytes.starts_with(b"\x7fELF") => e,
        _ => return Err(not_glibc("not an ELF file")),
    };
    if elf.is_64 != arch.spec().is64() || elf.header.e_machine != arch.e_machine() {
        return Err(not_glibc("another class or machine"));
    }
    if elf.header.e_type != header::ET_DYN {
        return Err(not_glibc("not a shared object"));
    }
    let glibc_private = elf.verdef.as_ref().is_some_and(|vd| {
        vd.iter().any(|d| {
            d.iter()
                .any(|a| elf.dynstrtab.get_at(a.vda_name) == Some("GLIBC_PRIVATE"))
        })
    });
    let defines = |sym: &str| {
        elf.dynsyms
            .iter()
            .any(|s| s.st_shndx != 0 && elf.dynstrtab.get_at(s.st_name) == Some(sym))
    };
    if !glibc_private || !defines("_dl_argv") || !defines("__libc_enable_secure") {
        if is_musl(&bytes) {
            return Err(musl());
        }
        return Err(not_glibc("no GLIBC_PRIVATE loader symbols"));
    }
    Ok(elfpack_stub::secure_env::ld_so_has_this_list(&bytes))
}
