//! Symbol look-ups in the files the image was loaded from.
use goblin::elf::Elf;

/// The value of dynamic symbol `name` in the ELF file at `path` (link-time address).
pub fn lookup_dynsym(path: &str, name: &str) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let elf = Elf::parse(&bytes).ok()?;
    elf.dynsyms
        .iter()
        .find(|s| s.st_value != 0 && elf.dynstrtab.get_at(s.st_name) == Some(name))
        .map(|s| s.st_value)
}
