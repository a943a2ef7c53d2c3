//! `$ORIGIN` in the program's RUNPATH or RPATH, made to follow the packed file.
//!
//! ld.so expands `$ORIGIN` (the program's directory, from `readlink("/proc/self/exe")`)
//! once and keeps the result: the program's link map holds the expanded search list
//! (`l_runpath_dirs` / `l_rpath_dirs`, `struct r_search_path_struct`) and the directory
//! (`l_origin`). Left as captured, a later `dlopen` searches the capture directory. Both
//! are reset to "not computed yet" (NULL), the state ld.so starts from: at the first search
//! after restore ld.so decomposes the RUNPATH again (glibc `elf/dl-load.c`, `cache_rpath`
//! and `decompose_rpath`) and computes `l_origin` again (`_dl_get_origin`,
//! `sysdeps/unix/sysv/linux/dl-origin.c`), from the packed file's own path, as for a copy
//! of the original program moved next to its plugins.
//!
//! The fields are found, not assumed at version-dependent offsets: `l_origin` is the one
//! word of the link map that points to the program's directory, and a search list is a
//! word pointing to a NULL-terminated array of `struct r_search_path_elem`, whose `what`
//! field points to the string "RUNPATH" or "RPATH".

use crate::image::Image;
use crate::warning::Warning;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What the analysis needs to read of the image.
pub trait Memory {
    fn word(&self, addr: u64) -> Option<u64>;
    fn string(&self, addr: u64) -> Option<Vec<u8>>;
}

impl Memory for Image {
    fn word(&self, addr: u64) -> Option<u64> {
        Image::word(self, addr)
    }
    fn string(&self, addr: u64) -> Option<Vec<u8>> {
        Image::string(self, addr).map(<[u8]>::to_vec)
    }
}

/// The first RUNPATH or RPATH entry list of the ELF file at `path` that uses `$ORIGIN`.
fn origin_path(path: &Path) -> Option<String> {
    let bytes = crate::files::map(path).ok()?;
    let elf = goblin::elf::Elf::parse(&bytes).ok()?;
    let found = elf.runpaths.iter().chain(elf.rpaths.iter()).copied();
    found
        .into_iter()
        .find(|p| uses_origin(p.as_bytes()))
        .map(str::to_owned)
}

/// Makes `$ORIGIN` in the RUNPATH of `program` follow the packed file: returns the image
/// with the program's search list and origin reset, and a warning for each object whose
/// `$ORIGIN` stays the capture directory (a library's own, or the program's where its
/// fields cannot be identified).
/// Returns the image, the warnings and the addresses of the words it reset.
pub fn follow(mut image: Image, program: &Path) -> (Image, Vec<Warning>, Vec<u64>) {
    let canonical = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let kept = |path: &Path, runpath: String| Warning::OriginKept {
        object: path.to_path_buf(),
        runpath,
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let mut warnings: Vec<Warning> = image
        .objects
        .iter()
        .filter(|o| o.path != canonical)
        .filter_map(|o| Some(kept(&o.path, origin_path(&o.path)?)))
        .collect();
    let Some(runpath) = origin_path(&canonical) else {
        return (image, warnings, Vec::new());
    };
    let dir = canonical
        .parent()
        .map_or(&[][..], |d| d.as_os_str().as_bytes());
    let w = image.arch.word() as u64;
    let words = crate::linkmap::main_map(&image)
        .filter(|&m| m != 0)
        .and_then(|map| reset_words(&image, map, w, 256 * w, dir));
    let reset = match words {
        Some(words) => {
            for &a in &words {
                image.write_word(a, 0);
            }
            words
        }
        None => {
            warnings.push(kept(&canonical, runpath));
            Vec::new()
        }
    };
    (image, warnings, reset)
}

/// The words of the program's link map at `map` (`size` bytes of it are searched) to set
/// to 0, for a program in directory `dir` whose dynamic section asks for `$ORIGIN`.
/// `None` if a field cannot be identified exactly (then nothing is changed).
pub fn reset_words(
    mem: &dyn Memory,
    map: u64,
    word: u64,
    size: u64,
    dir: &[u8],
) -> Option<Vec<u64>> {
    let fields: Vec<u64> = (0..size / word).map(|i| map + i * word).collect();
    let origin: Vec<u64> = fields
        .iter()
        .copied()
        .filter(|&f| mem.word(f).and_then(|p| mem.string(p)).as_deref() == Some(dir))
        .collect();
    let lists: Vec<u64> = fields
        .iter()
        .copied()
        .filter(|&f| is_search_list(mem, f, word))
        .collect();
    // l_origin may still be unset (NULL) if nothing expanded it; a list must be there.
    if origin.len() > 1 || lists.is_empty() || lists.len() > 2 {
        return None;
    }
    Some(origin.into_iter().chain(lists).collect())
}

/// Whether the word at `f` points to a search list: an array of element pointers whose
/// first element has, within its first four words, a pointer to "RUNPATH" or "RPATH".
fn is_search_list(mem: &dyn Memory, f: u64, word: u64) -> bool {
    let Some(dirs) = mem.word(f).filter(|&d| d != 0 && d != mask(word)) else {
        return false;
    };
    let Some(first) = mem.word(dirs).filter(|&e| e != 0) else {
        return false;
    };
    (0..4).any(|i| {
        mem.word(first + i * word)
            .and_then(|p| mem.string(p))
            .is_some_and(|s| s == b"RUNPATH" || s == b"RPATH")
    })
}

fn mask(word: u64) -> u64 {
    if word == 8 {
        u64::MAX
    } else {
        u32::MAX as u64
    }
}

/// Whether a RUNPATH/RPATH string uses `$ORIGIN` (also written `${ORIGIN}`).
pub fn uses_origin(path: &[u8]) -> bool {
    path.windows(7).any(|w| w == b"$ORIGIN") || path.windows(9).any(|w| w == b"${ORIGIN}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake {
        words: HashMap<u64, u64>,
        strings: HashMap<u64, Vec<u8>>,
    }

    impl Memory for Fake {
        fn word(&self, addr: u64) -> Option<u64> {
            self.words.get(&addr).copied()
        }
        fn string(&self, addr: u64) -> Option<Vec<u8>> {
            self.strings.get(&addr).cloned()
        }
    }

    #[test]
    fn finds_the_origin_and_the_runpath_list() {
        let mut f = Fake {
            words: HashMap::new(),
            strings: HashMap::new(),
        };
        f.strings.insert(0x9000, b"/opt/app".to_vec());
        f.strings.insert(0x9100, b"RUNPATH".to_vec());
        f.strings.insert(0x9200, b"/opt/app/plugins/".to_vec());
        // link map at 0x1000: l_origin at +0x40, l_runpath_dirs at +0x80.
        f.words.insert(0x1040, 0x9000);
        f.words.insert(0x1080, 0x5000);
        f.words.insert(0x5000, 0x6000);
        f.words.insert(0x5008, 0);
        // r_search_path_elem: next, what, where, dirname.
        f.words.insert(0x6000, 0);
        f.words.insert(0x6008, 0x9100);
        f.words.insert(0x6018, 0x9200);
        assert_eq!(
            reset_words(&f, 0x1000, 8, 0x200, b"/opt/app"),
            Some(vec![0x1040, 0x1080])
        );
        // Without the list nothing is identified.
        f.words.remove(&0x1080);
        assert_eq!(reset_words(&f, 0x1000, 8, 0x200, b"/opt/app"), None);
    }

    #[test]
    fn origin_spellings() {
        assert!(uses_origin(b"$ORIGIN/plugins"));
        assert!(uses_origin(b"/a:${ORIGIN}/../lib"));
        assert!(!uses_origin(b"/usr/lib/app"));
    }
}
