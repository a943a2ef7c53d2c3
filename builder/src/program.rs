//! The input program: finding it like a shell would and deciding whether it can be packed.
use crate::error::{unpackable, Result};
use goblin::elf::{header, program_header as ph, Elf};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Architectures elfpack packs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    I386,
}

/// The facts about each architecture are in [`crate::arch::ArchSpec`].
impl Arch {
    pub fn word(self) -> usize {
        self.spec().word
    }
    pub fn name(self) -> &'static str {
        self.spec().name
    }
    pub fn e_machine(self) -> u16 {
        self.spec().e_machine
    }
}

/// What elfpack needs to know about the input before running it.
#[derive(Clone, Debug)]
pub struct Program {
    pub path: PathBuf,
    pub arch: Arch,
    pub pie: bool,
    pub interp: PathBuf,
    /// Flags of PT_GNU_STACK (PF_R | PF_W, plus PF_X for an executable stack); `None`
    /// when the program has none.
    pub stack_flags: Option<u32>,
    /// The program's PT_LOAD segments as (vaddr, memsz, filesz, flags), link-time addresses.
    pub loads: Vec<(u64, u64, u64, u32)>,
    /// Whether ld.so removes in secure mode exactly what the stub removes (glibc 2.36).
    pub secure_list_known: bool,
    /// The sanitizer the program is built with, if any: the image then goes where its
    /// runtime expects the program (`ArchSpec`'s `sanitizer_base`).
    pub sanitizer: Option<&'static str>,
}

/// Finds PROGRAM as a shell would: a name with a slash is a path, others are looked up in
/// PATH.
pub fn locate(name: &OsStr) -> Result<PathBuf> {
    if name.is_empty() {
        return Err(unpackable!("empty program name"));
    }
    if name.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(name);
        if let Ok(md) = std::fs::metadata(&cand) {
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return Ok(cand);
            }
        }
    }
    Err(unpackable!(
        "{}: not found in PATH",
        Path::new(name).display()
    ))
}

/// Reads and checks the program.
pub fn inspect(path: &Path) -> Result<Program> {
    let shown = path.display();
    check_file(path)?;
    let bytes = crate::files::map(path).map_err(|e| unpackable!("{shown}: {}", io_reason(&e)))?;
    if bytes.starts_with(b"#!") {
        return Err(unpackable!(
            "{shown}: is a script, not an ELF program; pack its interpreter"
        ));
    }
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(unpackable!("{shown}: not an ELF file"));
    }
    let elf =
        Elf::parse(&bytes).map_err(|e| unpackable!("{shown}: truncated or malformed ELF ({e})"))?;
    let arch = elf_arch(path, &elf)?;
    if !elf.little_endian {
        return Err(unpackable!("{shown}: big-endian ELF"));
    }
    for p in &elf.program_headers {
        let end = p.p_offset.checked_add(p.p_filesz);
        if end.is_none_or(|e| e > bytes.len() as u64) {
            return Err(unpackable!(
                "{shown}: truncated ELF (a segment lies past the end of the file)"
            ));
        }
    }
    let interp = crate::interp::path(&shown.to_string(), &bytes, &elf)?;
    check_type(path, &elf, interp.is_some())?;
    let Some(interp) = interp else {
        return Err(unpackable!(
            "{shown}: is already statically linked; it needs no packing"
        ));
    };
    // The capture runs the interpreter: it must be glibc's ld.so, checked before anything
    // runs.
    let secure_list_known = crate::interp::check(&shown.to_string(), &interp, arch)?;
    let sanitizer = sanitizer(&elf);
    if let Some(name) = sanitizer {
        let placeable = arch.spec().steer.sanitizer_base.is_some()
            && elf.header.e_type == header::ET_DYN
            && name != "HWAddressSanitizer";
        if !placeable {
            return Err(sanitizer_error(&shown.to_string(), name));
        }
    }
    let stack_flags = elf
        .program_headers
        .iter()
        .find(|p| p.p_type == ph::PT_GNU_STACK)
        .map(|p| p.p_flags);
    let loads = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == ph::PT_LOAD)
        .map(|p| (p.p_vaddr, p.p_memsz, p.p_filesz, p.p_flags))
        .collect();
    Ok(Program {
        path: path.to_path_buf(),
        arch,
        pie: elf.header.e_type == header::ET_DYN,
        interp,
        stack_flags,
        loads,
        secure_list_known,
        sanitizer,
    })
}

/// Refuses what is not a regular file, or is a privileged program.
fn check_file(path: &Path) -> Result<()> {
    let shown = path.display();
    let md = std::fs::metadata(path).map_err(|e| unpackable!("{shown}: {}", io_reason(&e)))?;
    if md.is_dir() {
        return Err(unpackable!("{shown}: is a directory"));
    }
    if !md.is_file() {
        return Err(unpackable!("{shown}: not a regular file"));
    }
    let mode = md.permissions().mode();
    if mode & 0o4000 != 0 || mode & 0o2000 != 0 {
        return Err(unpackable!(
            "{shown}: is setuid/setgid; elfpack refuses to pack privileged programs"
        ));
    }
    if has_file_capabilities(path) {
        return Err(unpackable!(
            "{shown}: has file capabilities (setcap); elfpack refuses to pack privileged programs"
        ));
    }
    Ok(())
}

/// The architecture of an ELF header (class and machine).
fn elf_arch(path: &Path, elf: &Elf) -> Result<Arch> {
    match (elf.is_64, elf.header.e_machine) {
        (true, header::EM_X86_64) => Ok(Arch::X86_64),
        (false, header::EM_386) => Ok(Arch::I386),
        (is64, m) => Err(unpackable!(
            "{}: unsupported architecture ({}-bit, {}); elfpack packs x86-64 and i386 programs",
            path.display(),
            if is64 { 64 } else { 32 },
            header::machine_to_str(m)
        )),
    }
}

/// Refuses an ELF file that is not a program: a shared library, an object file.
fn check_type(path: &Path, elf: &Elf, has_interp: bool) -> Result<()> {
    let shown = path.display();
    let is_pie = elf
        .dynamic
        .as_ref()
        .is_some_and(|d| d.info.flags_1 & goblin::elf::dynamic::DF_1_PIE != 0);
    match elf.header.e_type {
        header::ET_EXEC => Ok(()),
        header::ET_DYN if is_pie || (has_interp && elf.entry != 0 && elf.soname.is_none()) => {
            Ok(())
        }
        header::ET_DYN => Err(unpackable!("{shown}: is a shared library, not a program")),
        t => Err(unpackable!(
            "{shown}: not an executable (ELF type {})",
            header::et_to_str(t)
        )),
    }
}

/// The sanitizer whose runtime an object links (DT_NEEDED) or contains (its start-up
/// symbol, for `-static-libasan` and the like), by the name its runtime gives itself.
pub fn sanitizer(elf: &Elf) -> Option<&'static str> {
    const RUNTIMES: &[(&str, &str, &str)] = &[
        ("libasan.so", "__asan_init", "AddressSanitizer"),
        ("libhwasan.so", "__hwasan_init", "HWAddressSanitizer"),
        ("libtsan.so", "__tsan_init", "ThreadSanitizer"),
        ("liblsan.so", "__lsan_init", "LeakSanitizer"),
        (
            "libubsan.so",
            "__ubsan_handle_builtin_unreachable",
            "UndefinedBehaviorSanitizer",
        ),
    ];
    let named = |n: &str| RUNTIMES.iter().find(|(lib, _, _)| n.starts_with(lib));
    if let Some((_, _, name)) = elf.soname.and_then(named) {
        return Some(name);
    }
    if let Some((_, _, name)) = elf.libraries.iter().find_map(|l| named(l)) {
        return Some(name);
    }
    // A runtime linked in statically defines its start-up function.
    elf.dynsyms.iter().find_map(|s| {
        if s.st_shndx == 0 {
            return None;
        }
        let n = elf.dynstrtab.get_at(s.st_name)?;
        RUNTIMES
            .iter()
            .find(|(_, init, _)| *init == n && !init.starts_with("__ubsan"))
            .map(|(_, _, name)| *name)
    })
}

/// The refusal of a sanitizer build elfpack cannot place (exit 3): only x86-64 PIE
/// programs with AddressSanitizer, ThreadSanitizer, LeakSanitizer or
/// UndefinedBehaviorSanitizer have a place where their runtime expects them.
pub fn sanitizer_error(shown: &str, name: &str) -> crate::error::Error {
    unpackable!(
        "{shown}: is built with {name}; elfpack packs sanitizer builds only as x86-64 position-independent programs with AddressSanitizer, ThreadSanitizer, LeakSanitizer or UndefinedBehaviorSanitizer"
    )
}

/// Whether `path` carries file capabilities (the `security.capability` attribute that
/// setcap(8) writes; linux `security/commoncap.c`, `get_vfs_caps_from_disk`).
fn has_file_capabilities(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: getxattr(2) with a NULL buffer of size 0 only returns the value's size; both
    // strings are NUL-terminated and live across the call.
    let n = unsafe {
        nix::libc::getxattr(
            c.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n > 0
}

/// The reason of an I/O error, without Rust's "(os error N)" suffix.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => {
            let s = e.to_string();
            s.split(" (os error").next().unwrap_or(&s).to_string()
        }
    }
}

/// The paths ld.so's cache (`/etc/ld.so.cache`, written by ldconfig) gives for `soname`
/// on `arch`, read directly: no program is run. The format is glibc's
/// `glibc-ld.so.cache1.1` (`sysdeps/generic/dl-cache.h`: a 48-byte header with the entry
/// count, then 24-byte entries `{flags, key, value, osversion, hwcap}` whose key and value
/// are offsets of NUL-terminated strings from the start of the file). An old-format
/// (`ld.so-1.7.0`) or unreadable cache gives nothing.
pub fn ld_so_cache(cache: &Path, soname: &OsStr, arch: Arch) -> Vec<PathBuf> {
    const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
    let want_flags = arch.spec().ld_cache_flags;
    let Ok(bytes) = crate::files::map(cache) else {
        return Vec::new();
    };
    if !bytes.starts_with(MAGIC) {
        return Vec::new();
    }
    let u32_at = |o: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?))
    };
    let string_at = |o: u32| -> Option<&[u8]> {
        let rest = bytes.get(o as usize..)?;
        Some(&rest[..rest.iter().position(|&c| c == 0)?])
    };
    let Some(nlibs) = u32_at(MAGIC.len()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in 0..nlibs as usize {
        let Some(at) = i.checked_mul(24).and_then(|o| o.checked_add(48)) else {
            break;
        };
        let (Some(flags), Some(key), Some(value)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8))
        else {
            break;
        };
        if flags & 0xffff != want_flags || string_at(key) != Some(soname.as_bytes()) {
            continue;
        }
        if let Some(v) = string_at(value) {
            out.push(PathBuf::from(std::ffi::OsStr::from_bytes(v)));
        }
    }
    out
}

/// The DT_SONAME of the library at `path`.
pub fn soname(path: &Path) -> Option<String> {
    let b = crate::files::map(path).ok()?;
    Elf::parse(&b).ok()?.soname.map(str::to_string)
}

/// Finds a library as ld.so would for `--include`: a name with a slash is a path; a soname
/// is looked up in LD_LIBRARY_PATH, then in ld.so's cache (read directly), then in the
/// default directories. The library must match the program's architecture. The flag tells
/// whether ld.so's own search for the name finds the same file (LD_LIBRARY_PATH or the
/// cache; elfpack's default directories are broader than any one ld.so's).
pub fn find_library(
    name: &OsStr,
    arch: Arch,
    ld_library_path: Option<&OsStr>,
) -> Result<(PathBuf, bool)> {
    let shown = Path::new(name).display();
    let matches = |p: &Path| -> bool {
        crate::files::map(p)
            .ok()
            .and_then(|b| {
                // Class and machine: an x32 library is EM_X86_64 too, but 32-bit.
                Elf::parse(&b).ok().map(|e| {
                    e.header.e_machine == arch.e_machine() && e.is_64 == arch.spec().is64()
                })
            })
            .unwrap_or(false)
    };
    if name.as_bytes().contains(&b'/') {
        let p = PathBuf::from(name);
        if !p.is_file() {
            return Err(unpackable!("--include {shown}: no such file"));
        }
        if !matches(&p) {
            return Err(unpackable!(
                "--include {shown}: not an {} library",
                arch.name()
            ));
        }
        return Ok((p, false));
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    for dir in ld_library_path
        .map(|p| p.as_bytes())
        .unwrap_or(b"")
        .split(|&c| c == b':')
        .filter(|d| !d.is_empty())
    {
        candidates.push(Path::new(OsStr::from_bytes(dir)).join(name));
    }
    candidates.extend(ld_so_cache(Path::new("/etc/ld.so.cache"), name, arch));
    let searched_by_ld_so = candidates.len();
    let defaults = arch.spec().lib_dirs;
    candidates.extend(defaults.iter().map(|d| Path::new(d).join(name)));
    candidates
        .into_iter()
        .enumerate()
        .find(|(_, p)| p.is_file() && matches(p))
        .map(|(i, p)| (p, i < searched_by_ld_so))
        .ok_or_else(|| unpackable!("--include {shown}: no {} library of that name found (LD_LIBRARY_PATH, ld.so cache, default directories)", arch.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache in glibc's format with the given (flags, key, value) entries.
    fn cache(entries: &[(u32, &str, &str)]) -> Vec<u8> {
        let mut head = b"glibc-ld.so.cache1.1".to_vec();
        head.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        head.resize(48, 0);
        let strings_at = 48 + 24 * entries.len();
        let mut strings = Vec::new();
        for &(flags, k, v) in entries {
            let key = (strings_at + strings.len()) as u32;
            strings.extend_from_slice(k.as_bytes());
            strings.push(0);
            let value = (strings_at + strings.len()) as u32;
            strings.extend_from_slice(v.as_bytes());
            strings.push(0);
            head.extend_from_slice(&flags.to_le_bytes());
            head.extend_from_slice(&key.to_le_bytes());
            head.extend_from_slice(&value.to_le_bytes());
            head.extend_from_slice(&[0u8; 12]);
        }
        head.extend_from_slice(&strings);
        head
    }

    #[test]
    fn reads_the_ld_so_cache_by_architecture() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ld.so.cache");
        std::fs::write(
            &p,
            cache(&[
                (0x0303, "libx.so.1", "/lib64/libx.so.1"),
                (0x0003, "libx.so.1", "/lib32/libx.so.1"),
                (0x0303, "liby.so.1", "/lib64/liby.so.1"),
            ]),
        )
        .unwrap();
        assert_eq!(
            ld_so_cache(&p, OsStr::new("libx.so.1"), Arch::X86_64),
            vec![PathBuf::from("/lib64/libx.so.1")]
        );
        assert_eq!(
            ld_so_cache(&p, OsStr::new("libx.so.1"), Arch::I386),
            vec![PathBuf::from("/lib32/libx.so.1")]
        );
        assert!(ld_so_cache(&p, OsStr::new("libz.so.1"), Arch::X86_64).is_empty());
        // Truncated or foreign files give nothing, without a panic.
        let bytes = std::fs::read(&p).unwrap();
        for n in 0..bytes.len() {
            std::fs::write(&p, &bytes[..n]).unwrap();
            let _ = ld_so_cache(&p, OsStr::new("libx.so.1"), Arch::X86_64);
        }
    }

    #[test]
    fn reads_this_systems_cache() {
        let found = ld_so_cache(
            Path::new("/etc/ld.so.cache"),
            OsStr::new("libc.so.6"),
            Arch::X86_64,
        );
        assert!(found.iter().any(|p| p.is_file()), "{found:?}");
    }
}
