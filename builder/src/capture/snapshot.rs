//! The snapshot: with the tracee stopped at the handover, its mappings, memory, thread
//! pointer, break and the addresses of the glibc variables the stub sets are read into an
//! [`Image`].
use super::handover::{Handover, Recorded};
use super::procfs::{self, Mapping, Memory};
use super::stack::{self, StackInfo};
use super::steer::{self, Start, Steering};
use super::tracee::Regs;
use crate::arch::{ArchSpec, TlsSource};
use crate::error::{capture_err, unpackable, Result};
use crate::files::Bytes;
use crate::image::{self, Image, Object, Region};
use crate::program::Program;
use crate::warning::Warning;
use elfpack_stub::abi;
use goblin::elf::program_header::{PF_R, PF_W, PF_X};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything the snapshot is made from.
pub struct Parts<'a> {
    pub pid: i32,
    pub mem: &'a Memory,
    pub spec: &'static ArchSpec,
    pub prog: &'a Program,
    pub start: Start,
    pub ldso_base: u64,
    pub steering: Steering,
    pub handover: Handover,
    pub skip_code: bool,
}

/// Reads the stopped tracee into an image; adds warnings to `warnings`.
pub fn take(p: Parts, regs: &Regs, warnings: &mut Vec<Warning>) -> Result<Image> {
    let maps = procfs::maps(p.pid)?;
    // The initial stack: the mapping that holds the stack pointer and the anonymous ones
    // right next to it. When ld.so makes the stack executable (glibc `elf/dl-execstack.c`,
    // `_dl_make_stack_executable`) its mprotect splits the mapping, and only the part that
    // holds the start of the stack keeps the name [stack].
    let stack_range = steer::stack_extent(&maps, p.start.stack.sp);
    let in_stack = |m: &Mapping| stack_range.is_some_and(|(a, b)| a <= m.start && m.end <= b);
    check_compact(&maps, &p.start.exe_path, p.steering.window, &in_stack)?;
    let read_implies_exec = procfs::read_implies_exec(p.pid)?;
    let (regions, objects, vdso) =
        read_regions(&p, &maps, &in_stack, p.skip_code && !read_implies_exec)?;
    let Handover {
        mut rec,
        resume_kind,
        resume_dx,
    } = p.handover;
    let tls = thread_pointer(p.spec, &rec, regs)?;
    if let Some(warning) = tid_cache(p.mem, &mut rec, &tls)? {
        warnings.push(warning);
    }
    let mm = mm_layout(
        p.pid,
        p.prog,
        &maps,
        &p.start.exe_path,
        &rec,
        p.steering.brk_start,
    )?;
    let program_range = program_range(&maps, &p.start.exe_path);
    let interp = Path::new(&p.start.interp_path);
    let stack = &p.start.stack;
    Ok(Image {
        arch: p.prog.arch,
        regions,
        resume_pc: regs.rip & p.spec.mask,
        resume_kind,
        resume_dx,
        user_entry: p.start.at_entry,
        at_phdr: p.start.at_phdr,
        at_phnum: stack.aux(stack::AT_PHNUM).unwrap_or(0),
        at_phent: stack.aux(stack::AT_PHENT).unwrap_or(0),
        at_base: p.ldso_base,
        tls,
        regs: rec.regs,
        mm,
        enable_secure: crate::symbols::lookup_dynsym(interp, "__libc_enable_secure")
            .map(|v| v + p.ldso_base)
            .unwrap_or(0),
        rseq_size: rseq_size(&objects, &p.start.exe_path, interp, p.ldso_base),
        secure_copies: crate::symbols::definitions(
            &objects,
            "__libc_enable_secure",
            &p.start.interp_path,
        ),
        vdso,
        stack_flags: stack_flags(p.prog, &maps, stack),
        read_implies_exec,
        objects,
        program_range,
        program_shift: p.start.program_shift,
    })
}

/// The program's part of the image: its mappings, its bss and its heap (the emulated one
/// lies right after the bss; the kernel's is `[heap]`).
fn program_range(maps: &[Mapping], exe_path: &OsString) -> (u64, u64) {
    let (lo, hi) = steer::program_extent(maps, exe_path);
    let heap = maps
        .iter()
        .filter(|m| m.path == "[heap]" && m.start >= hi)
        .map(|m| m.end)
        .max();
    (lo, heap.unwrap_or(hi).max(hi))
}

/// Refuses a capture whose mappings (but the program's, its bss, the heap and the stack)
/// do not all lie in the window.
fn check_compact(
    maps: &[Mapping],
    exe_path: &OsString,
    window: (u64, u64),
    in_stack: &dyn Fn(&Mapping) -> bool,
) -> Result<()> {
    for m in maps {
        let special = (m.is_special() && m.path != "[heap]") || in_stack(m);
        let exe = m.path == *exe_path;
        if special || exe || m.path == "[heap]" || (m.start >= window.0 && m.end <= window.1) {
            continue;
        }
        // Anonymous bss right after the program is part of the program.
        let after_exe = maps.iter().any(|e| e.path == *exe_path && e.end == m.start);
        if !after_exe {
            return Err(unpackable!(
                "could not keep the image compact: {} at {:#x}-{:#x} lies outside {:#x}-{:#x}",
                if m.path.is_empty() {
                    "an anonymous mapping".into()
                } else {
                    m.path.to_string_lossy()
                },
                m.start,
                m.end,
                window.0,
                window.1
            ));
        }
    }
    Ok(())
}

type Regions = (Vec<Region>, Vec<Object>, Option<(u64, u64)>);

/// The image's regions, the objects mapped and the vDSO's range. With `skip_code`, the
/// contents of executable mappings are left out.
fn read_regions(
    p: &Parts,
    maps: &[Mapping],
    in_stack: &dyn Fn(&Mapping) -> bool,
    skip_code: bool,
) -> Result<Regions> {
    // File mappings without a single private (written) page hold the file's own bytes:
    // take them from the file instead of copying them out of the process.
    let unwritten = procfs::unwritten_file_mappings(p.pid)?;
    let mut files: HashMap<OsString, Arc<Bytes>> = HashMap::new();
    for m in maps.iter().filter(|m| unwritten.contains(&m.start)) {
        if !files.contains_key(&m.path) {
            if let Ok(b) = crate::files::map(&m.path) {
                files.insert(m.path.clone(), Arc::new(b));
            }
        }
    }
    let mut regions = Vec::new();
    let mut objects: Vec<Object> = Vec::new();
    let mut vdso = None;
    for m in maps {
        match m.path.to_str().unwrap_or("") {
            "[stack]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" => continue,
            "[vdso]" => vdso = Some((m.start, m.end)),
            _ => {}
        }
        if in_stack(m) {
            continue;
        }
        let file = unwritten
            .contains(&m.start)
            .then(|| files.get(&m.path))
            .flatten();
        let data = if m.prot == 0 || (skip_code && m.prot & image::PROT_EXEC != 0) {
            None
        } else {
            Some(contents(p, m, file)?)
        };
        if m.is_file() && !objects.iter().any(|o| o.path.as_os_str() == m.path) {
            objects.push(Object {
                path: PathBuf::from(&m.path),
                base: m.start - m.offset,
            });
        }
        regions.push(region(m, data));
    }
    Ok((regions, objects, vdso))
}

/// The bytes of mapping `m`: from `file` when the mapping holds exactly its bytes, else
/// read from the process.
fn contents(p: &Parts, m: &Mapping, file: Option<&Arc<Bytes>>) -> Result<image::Data> {
    let len = (m.end - m.start) as usize;
    if let Some(file) = file.filter(|f| m.offset as usize + len <= f.len()) {
        return Ok(image::Data::File(file.clone(), m.offset as usize, len));
    }
    Ok(image::Data::Owned(
        if m.path.is_empty() || m.path == "[heap]" {
            // Anonymous memory: only the pages the process touched can hold anything but
            // zeros (a large bss is mostly untouched, and reading it would fault it in).
            procfs::read_resident(p.pid, p.mem, m.start, len)?
        } else {
            p.mem.read(m.start, len)?
        },
    ))
}

fn region(m: &Mapping, data: Option<image::Data>) -> Region {
    let origin = if m.path == "[vdso]" {
        "[vdso proxy]".to_string()
    } else {
        m.path.to_string_lossy().into_owned()
    };
    Region {
        start: m.start,
        end: m.end,
        prot: m.prot,
        origin,
        file: m.is_file().then(|| PathBuf::from(&m.path)),
        file_offset: m.offset,
        data,
    }
}

/// The thread pointer, as the architecture's glibc set it.
fn thread_pointer(spec: &ArchSpec, rec: &Recorded, regs: &Regs) -> Result<abi::Tls> {
    Ok(match spec.tls {
        TlsSource::FsBase => abi::Tls {
            base: regs.fs_base,
            ..Default::default()
        },
        TlsSource::ThreadArea => {
            let mut tls = rec
                .thread_area
                .ok_or_else(|| capture_err!("ld.so set up no TLS (set_thread_area)"))?;
            tls.selector = regs.gs as u32;
            tls
        }
    })
}

/// Records where glibc caches the thread ID; a warning when nothing does.
fn tid_cache(mem: &Memory, rec: &mut Recorded, tls: &abi::Tls) -> Result<Option<Warning>> {
    let Some(tid) = rec.tid else {
        return Ok(None);
    };
    rec.regs.tid_cache = find_tid_cache(mem, tls.base, rec.regs.tid_address, tid)?;
    Ok((rec.regs.tid_cache == 0).then_some(Warning::NoTidCache {
        tid,
        thread_pointer: tls.base,
    }))
}

/// Where glibc caches the thread ID that set_tid_address returned (`pd->tid`,
/// `__tls_init_tp`). Up to glibc 2.41 it is the set_tid_address argument itself; since 2.42
/// that argument is `&pd->joinstate` (which holds THREAD_STATE_JOINABLE, not the ID), and
/// `pd->tid` is another word of `struct pthread`, which starts at the thread pointer on
/// x86-64 and i386: the one 32-bit word there that holds the ID.
fn find_tid_cache(mem: &Memory, tp: u64, tid_address: u64, tid: u64) -> Result<u64> {
    let read_u32 = |a: u64| -> Result<u64> {
        let b = mem.read(a, 4)?;
        Ok(u64::from(u32::from_le_bytes(b[..4].try_into().unwrap())))
    };
    if tid_address != 0 && read_u32(tid_address)? == tid {
        return Ok(tid_address);
    }
    // glibc's struct pthread is about 2 KiB (0x9c0 bytes in 2.43 on x86-64).
    const PTHREAD_SPAN: usize = 0x1000;
    let Ok(bytes) = mem.read(tp, PTHREAD_SPAN) else {
        return Ok(0);
    };
    let hits: Vec<u64> = bytes
        .chunks_exact(4)
        .enumerate()
        .filter(|(_, c)| u64::from(u32::from_le_bytes((*c).try_into().unwrap())) == tid)
        .map(|(i, _)| tp + 4 * i as u64)
        .collect();
    Ok(if hits.len() == 1 { hits[0] } else { 0 })
}

/// The memory-map fields for PR_SET_MM_MAP.
///
/// The program break: while nothing has used the heap (the normal case: ld.so allocates
/// with mmap, and libc's `__curbrk` is still NULL, glibc `misc/sbrk.c`), the packed
/// program keeps the break the kernel gives each run, randomised as usual: zero here
/// says so to the stub. A heap that was used before the snapshot (--stop-at-entry) is
/// part of the image, and the stub puts the break back at its end.
fn mm_layout(
    pid: i32,
    prog: &Program,
    maps: &[Mapping],
    exe_path: &OsString,
    rec: &Recorded,
    emulated: Option<u64>,
) -> Result<abi::MmLayout> {
    let start_brk = match emulated {
        Some(b) => b,
        None => procfs::start_brk(pid)?,
    };
    let brk = rec.brk.unwrap_or(start_brk).max(start_brk);
    let (start_brk, brk) = if brk > start_brk {
        (start_brk, brk)
    } else {
        (0, 0)
    };
    let (start_code, end_code, start_data, end_data) = program_ranges(prog, maps, exe_path);
    Ok(abi::MmLayout {
        start_code,
        end_code,
        start_data,
        end_data,
        start_brk,
        brk,
    })
}

/// start_code/end_code/start_data/end_data as the kernel computed them for the original
/// program (linux `fs/binfmt_elf.c`, `load_elf_binary`), from its PT_LOADs and load bias.
fn program_ranges(prog: &Program, maps: &[Mapping], exe_path: &OsString) -> (u64, u64, u64, u64) {
    let lowest = maps
        .iter()
        .filter(|m| m.path == *exe_path)
        .map(|m| m.start)
        .min()
        .unwrap_or(0);
    let first_vaddr = prog.loads.iter().map(|l| l.0).min().unwrap_or(0) & !(steer::PAGE - 1);
    let bias = if prog.pie { lowest - first_vaddr } else { 0 };
    let (mut sc, mut ec, mut sd, mut ed) = (u64::MAX, 0, 0, 0);
    for &(vaddr, _memsz, filesz, flags) in &prog.loads {
        let k = vaddr + bias;
        if flags & PF_X != 0 && k < sc {
            sc = k;
        }
        if k > sd {
            sd = k;
        }
        let end = k + filesz;
        if flags & PF_X != 0 && end > ec {
            ec = end;
        }
        if end > ed {
            ed = end;
        }
    }
    if sc == u64::MAX {
        sc = 0;
    }
    (sc, ec, sd, ed)
}

/// `__rseq_size` (glibc 2.35+; defined in ld.so, `sysdeps/nptl/dl-tls_init_tp.c`): the
/// stub zeroes it when this run's kernel refuses the rseq registration, as glibc does.
/// A program that reads it has its own copy (a copy relocation), which ld.so's look-up
/// finds first and everybody uses: that copy is the one to zero.
fn rseq_size(objects: &[Object], exe_path: &OsString, interp: &Path, ldso_base: u64) -> u64 {
    objects
        .iter()
        .find(|o| o.path == *exe_path)
        .and_then(|o| crate::symbols::defined_at(&o.path, o.base, "__rseq_size"))
        .or_else(|| crate::symbols::defined_at(interp, ldso_base, "__rseq_size"))
        .unwrap_or(0)
}

/// The output's PT_GNU_STACK flags. The stack is executable when ld.so made it so (glibc
/// `elf/dl-load.c`, `_dl_map_object_from_fd`: a library's PT_GNU_STACK asks for PF_X), or
/// when the program's own PT_GNU_STACK did; the output asks the kernel for the same. A
/// program without PT_GNU_STACK keeps having none (see `Image::stack_flags`).
fn stack_flags(prog: &Program, maps: &[Mapping], stack: &StackInfo) -> Option<u32> {
    let stack_exec = maps
        .iter()
        .find(|m| m.start <= stack.sp && stack.sp < m.end)
        .map_or(prog.stack_flags.is_none_or(|f| f & PF_X != 0), |m| {
            m.prot & image::PROT_EXEC != 0
        });
    prog.stack_flags
        .map(|_| PF_R | PF_W | if stack_exec { PF_X } else { 0 })
}
