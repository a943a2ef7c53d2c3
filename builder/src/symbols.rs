//! Symbol look-ups in the files the image was loaded from.
use goblin::elf::Elf;

/// The value of dynamic symbol `name` in the ELF file at `path` (link-time address).
pub fn lookup_dynsym(path: &std::path::Path, name: &str) -> Option<u64> {
    let bytes = crate::files::map(path).ok()?;
    let elf = Elf::parse(&bytes).ok()?;
    elf.dynsyms
        .iter()
        .find(|s| s.st_value != 0 && elf.dynstrtab.get_at(s.st_name) == Some(name))
        .map(|s| s.st_value)
}

/// What to add to the object's symbol values: its load address, except for a
/// position-dependent program (ET_EXEC), whose addresses are absolute.
fn load_bias(elf: &Elf, base: u64) -> u64 {
    if elf.header.e_type == goblin::elf::header::ET_EXEC {
        0
    } else {
        base
    }
}

/// The run-time address of dynamic symbol `name` where the object at `path`, loaded at
/// `base`, defines it (not merely refers to it); an ET_EXEC's addresses are absolute.
pub fn defined_at(path: &std::path::Path, base: u64, name: &str) -> Option<u64> {
    let bytes = crate::files::map(path).ok()?;
    let elf = Elf::parse(&bytes).ok()?;
    let bias = load_bias(&elf, base);
    elf.dynsyms
        .iter()
        .find(|s| {
            s.st_shndx != goblin::elf::section_header::SHN_UNDEF as usize
                && elf.dynstrtab.get_at(s.st_name) == Some(name)
        })
        .map(|s| s.st_value + bias)
}

/// The addresses in the image of every object's own definition of the data symbol `name`
/// (for example a program's copy-relocated `__libc_enable_secure`), ld.so excluded.
pub fn definitions(
    objects: &[crate::image::Object],
    name: &str,
    skip: &std::ffi::OsStr,
) -> Vec<u64> {
    let mut out = Vec::new();
    for o in objects.iter().filter(|o| o.path.as_os_str() != skip) {
        let Ok(bytes) = crate::files::map(&o.path) else {
            continue;
        };
        let Ok(elf) = Elf::parse(&bytes) else {
            continue;
        };
        let bias = load_bias(&elf, o.base);
        out.extend(
            elf.dynsyms
                .iter()
                .filter(|s| {
                    s.st_value != 0
                        && s.st_shndx != 0
                        && s.st_type() == goblin::elf::sym::STT_OBJECT
                        && elf.dynstrtab.get_at(s.st_name) == Some(name)
                })
                .map(|s| bias.wrapping_add(s.st_value)),
        );
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// A symbol of the image, at its address in the packed process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSymbol {
    pub name: String,
    pub addr: u64,
    pub size: u64,
    /// STT_FUNC or STT_OBJECT.
    pub kind: u8,
    pub global: bool,
}

/// The function and object symbols of every object in the image (its .symtab where it has
/// one, and its .dynsym), at their addresses in the image; sorted and without duplicates.
pub fn collect(objects: &[crate::image::Object]) -> Vec<ImageSymbol> {
    use goblin::elf::sym;
    let mut out = Vec::new();
    for o in objects {
        let Ok(bytes) = crate::files::map(&o.path) else {
            continue;
        };
        let Ok(elf) = Elf::parse(&bytes) else {
            continue;
        };
        let bias = load_bias(&elf, o.base);
        let tables = [(&elf.syms, &elf.strtab), (&elf.dynsyms, &elf.dynstrtab)];
        for (syms, strs) in tables {
            for s in syms.iter() {
                let kind = s.st_type();
                if s.st_value == 0
                    || s.st_shndx == 0
                    || !(kind == sym::STT_FUNC || kind == sym::STT_OBJECT)
                {
                    continue;
                }
                // `_GLOBAL_OFFSET_TABLE_` names a linker-made .got section, which the
                // packed file does not have (ELF checkers insist on one).
                let Some(name) = strs
                    .get_at(s.st_name)
                    .filter(|n| !n.is_empty() && *n != "_GLOBAL_OFFSET_TABLE_")
                else {
                    continue;
                };
                out.push(ImageSymbol {
                    name: name.to_string(),
                    addr: bias.wrapping_add(s.st_value),
                    size: s.st_size,
                    kind,
                    global: s.st_bind() != sym::STB_LOCAL,
                });
            }
        }
    }
    out.sort_by(|a, b| (a.addr, &a.name).cmp(&(b.addr, &b.name)));
    out.dedup_by(|a, b| a.addr == b.addr && a.name == b.name);
    out
}
