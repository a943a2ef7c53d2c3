//! ld.so's list of loaded objects, read from the captured image: what name each object is
//! known by, which decides whether a later `dlopen` of a name finds it already loaded.
use crate::image::Image;
use goblin::elf::Elf;
use std::path::PathBuf;

/// One loaded object: its `l_name` (the file ld.so opened; empty for the program) and the
/// names a later `dlopen` matches (`l_libname`: the names it was loaded as).
#[derive(Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub names: Vec<String>,
}

fn string(image: &Image, addr: u64) -> Option<String> {
    image
        .string(addr)
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

/// The address of the program's own `struct link_map`: `_r_debug.r_map`, the first of the
/// list (0 for an empty list).
pub fn main_map(image: &Image) -> Option<u64> {
    let ldso = image.objects.iter().find(|o| o.base == image.at_base)?;
    let bytes = crate::files::map(&ldso.path).ok()?;
    let elf = Elf::parse(&bytes).ok()?;
    let sym = elf
        .dynsyms
        .iter()
        .find(|s| s.st_shndx != 0 && elf.dynstrtab.get_at(s.st_name) == Some("_r_debug"))?;
    let r_debug = ldso.base.checked_add(sym.st_value)?;
    image.word(r_debug + image.arch.word() as u64)
}

/// The link map of the base namespace, through ld.so's `_r_debug` (glibc `elf/link.h`:
/// `struct r_debug {int r_version; struct link_map *r_map; ...}`) and each
/// `struct link_map` (`include/link.h`: l_addr, l_name, l_ld, l_next, l_prev, l_real, l_ns,
/// then `struct libname_list *l_libname`, whose entries are `{name, next, ...}`). `None`
/// when ld.so or its `_r_debug` cannot be found in the image.
pub fn read_entries(image: &Image) -> Option<Vec<Entry>> {
    let w = image.arch.word() as u64;
    let mut map = main_map(image)?;
    let mut out = Vec::new();
    // A corrupt list must not loop forever.
    for _ in 0..4096 {
        if map == 0 {
            return Some(out);
        }
        let path = PathBuf::from(string(image, image.word(map + w)?).unwrap_or_default());
        let mut names = Vec::new();
        let mut l = image.word(map + 7 * w)?;
        for _ in 0..64 {
            if l == 0 {
                break;
            }
            if let Some(n) = image.word(l).and_then(|a| string(image, a)) {
                names.push(n);
            }
            l = image.word(l + w)?;
        }
        out.push(Entry { path, names });
        map = image.word(map + 3 * w)?;
    }
    None
}
