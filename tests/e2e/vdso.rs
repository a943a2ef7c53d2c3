//! A packed program meets a vDSO unlike the one it was captured with, as it would on
//! another kernel: the program is started under ptrace, and before its stub runs, the
//! kernel's vDSO in that process is rewritten: `__vdso_clock_gettime` and
//! `__vdso_gettimeofday` move to new code at other addresses (their old code becomes
//! `ud2`), and `__vdso_time` and `__vdso_getcpu` disappear. clock_gettime, gettimeofday,
//! time and getcpu must still work (the stub finds the moved ones by name in this run's
//! table, and uses the system calls for the missing ones). Under qemu-user there is no vDSO at all; the
//! fixture matrix covers that case.
use elfpack_tests::*;
use nix::sys::ptrace;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

const AT_SYSINFO_EHDR: u64 = 33;

fn auxv_value(pid: i32, tag: u64) -> Option<u64> {
    let raw = std::fs::read(format!("/proc/{pid}/auxv")).unwrap();
    raw.chunks_exact(16).find_map(|e| {
        let t = u64::from_le_bytes(e[..8].try_into().unwrap());
        (t == tag).then(|| u64::from_le_bytes(e[8..].try_into().unwrap()))
    })
}

/// Rewrites the vDSO of the stopped process `pid` as described above.
fn alter_vdso(pid: i32) {
    let base = auxv_value(pid, AT_SYSINFO_EHDR).expect("no vDSO");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps.lines().find(|l| l.ends_with("[vdso]")).unwrap();
    let (a, b) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    let len = (u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap()) as usize;
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .unwrap();
    let mut image = vec![0u8; len];
    mem.read_exact_at(&mut image, base).unwrap();
    let original = image.clone();
    let elf = goblin::elf::Elf::parse(&original).unwrap();
    let dynsym = elf
        .section_headers
        .iter()
        .find(|s| s.sh_type == goblin::elf::section_header::SHT_DYNSYM)
        .unwrap();
    let dynstr = elf.section_headers[dynsym.sh_link as usize].sh_offset as usize;
    let index = |name: &str| {
        elf.dynsyms
            .iter()
            .position(|s| elf.dynstrtab.get_at(s.st_name) == Some(name))
            .unwrap()
    };
    let name_at = |name: &str| dynstr + elf.dynsyms.get(index(name)).unwrap().st_name;
    let sym = |name: &str| elf.dynsyms.get(index(name)).unwrap();
    // Offsets in the image of link-time addresses (the vDSO's one PT_LOAD starts at 0 or
    // at its link address).
    let load = elf
        .program_headers
        .iter()
        .find(|p| p.p_type == goblin::elf::program_header::PT_LOAD)
        .unwrap();
    let at = |vaddr: u64| (vaddr - load.p_vaddr) as usize;
    let (time, getcpu) = (sym("__vdso_time"), sym("__vdso_getcpu"));
    let (old_gettime, old_tod) = (
        sym("__vdso_clock_gettime").st_value,
        sym("__vdso_gettimeofday").st_value,
    );
    // Two functions move: clock_gettime and gettimeofday get new code where time and
    // getcpu were (`mov $NR, %eax; syscall; ret`, arguments already in place), and their
    // old code becomes `ud2`. Only a look-up by name in this run's table finds them.
    for (new, nr) in [(time, 228u8), (getcpu, 96u8)] {
        assert!(
            new.st_size >= 8,
            "vDSO function too small to hold the new code"
        );
        let o = at(new.st_value);
        image[o..o + 8].copy_from_slice(&[0xb8, nr, 0, 0, 0, 0x0f, 0x05, 0xc3]);
    }
    for old in [old_gettime, old_tod] {
        let o = at(old);
        image[o..o + 2].copy_from_slice(&[0x0f, 0x0b]);
    }
    // Elf64_Sym: st_name (4), st_info, st_other, st_shndx (4), st_value (8), st_size (8).
    let value_at = |k: usize| dynsym.sh_offset as usize + k * 24 + 8;
    for (k, s) in elf.dynsyms.iter().enumerate() {
        let new_value = if s.st_value == old_gettime {
            Some(time.st_value)
        } else if s.st_value == old_tod {
            Some(getcpu.st_value)
        } else if s.st_value == time.st_value || s.st_value == getcpu.st_value {
            Some(0) // the plain aliases `time` and `getcpu` go with them
        } else {
            None
        };
        if let Some(v) = new_value {
            image[value_at(k)..value_at(k) + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
    let (time_at, getcpu_at) = (name_at("__vdso_time"), name_at("__vdso_getcpu"));
    image[time_at..time_at + 11].copy_from_slice(b"__vdso_tim_");
    image[getcpu_at..getcpu_at + 13].copy_from_slice(b"__vdso_getcp_");
    mem.write_all_at(&image, base).unwrap();
    // The process now sees the altered table.
    let mut check = vec![0u8; len];
    mem.read_exact_at(&mut check, base).unwrap();
    assert_eq!(check, image, "the vDSO could not be rewritten");
}

/// Runs `packed ARGS` with its vDSO altered before the first instruction.
fn run_with_altered_vdso(packed: &std::path::Path, args: &[&str], cpu: u32) -> String {
    let mut cmd = Command::new(require("taskset"));
    cmd.arg("-c")
        .arg(cpu.to_string())
        .arg(packed)
        .args(args)
        .stdout(Stdio::piped());
    // taskset execs the packed file: stop at that exec (the second one).
    // SAFETY: between fork and exec only ptrace(PTRACE_TRACEME) runs.
    unsafe {
        cmd.pre_exec(|| ptrace::traceme().map_err(std::io::Error::from));
    }
    let child = spawn(&mut cmd);
    let pid = Pid::from_raw(child.id() as i32);
    let exe = std::fs::canonicalize(packed).unwrap();
    loop {
        match waitpid(pid, None).unwrap() {
            WaitStatus::Stopped(_, _) => {
                if std::fs::read_link(format!("/proc/{pid}/exe")).unwrap() == exe {
                    break;
                }
                ptrace::cont(pid, None).unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    alter_vdso(pid.as_raw());
    ptrace::detach(pid, None).unwrap();
    let out = wait_output(child, "the packed program with an altered vDSO");
    assert!(out.status.success(), "{:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn restores_against_a_different_vdso() {
    let packed = packed(&fixture("fixture-x86_64-pie"), &[]);
    let clock = run_with_altered_vdso(&packed, &["clock"], 1);
    assert_eq!(
        clock,
        "monotonic advances=yes\nrealtime consistent=yes\ngetres=0\n"
    );
    let cpu = run_with_altered_vdso(&packed, &["getcpu"], 1);
    assert_eq!(cpu, "cpu=1 getcpu=0:1\n");
    // And the same program, unaltered, says the same.
    let placed = Placed::new(&packed, Mode::Native, Arch::X86_64);
    assert_eq!(placed.run(&["clock"], b"", None).stdout, clock);
}

/// The system calls that a vDSO function replaces, as strace names them.
const VDSO_CALLS: &str = "trace=clock_gettime,clock_gettime64,gettimeofday,time,clock_getres,\
                          clock_getres_time64,getcpu";

/// How many of [`VDSO_CALLS`] `cmd` made, counted by strace.
fn vdso_syscalls(prog: &std::path::Path, args: &[&str]) -> usize {
    let d = scratch();
    let log = d.path().join("strace");
    let mut cmd = Command::new(require("strace"));
    cmd.args(["-f", "-qq", "-e", VDSO_CALLS, "-o"])
        .arg(&log)
        .arg(prog)
        .args(args)
        .env_clear()
        .envs(test_env());
    let out = cmd.output_t();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    std::fs::read_to_string(&log).unwrap().lines().count()
}

/// With a vDSO present, the packed program's clock and CPU functions run in the vDSO, as
/// the original's do: strace sees as many of their system calls as for the original (one
/// on i386, whose glibc asks the kernel for the clock resolution), and none at all for a
/// loop of 1000 clock_gettime calls.
#[test]
fn vdso_functions_make_no_system_calls() {
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = fixture(&format!("fixture-{}-pie", arch.tag()));
        let packed = packed(&orig, &[]);
        for case in [&["clock"][..], &["getcpu"], &["vdsoloop", "1000"]] {
            let o = vdso_syscalls(&orig, case);
            let p = vdso_syscalls(&packed, case);
            assert_eq!(
                p,
                o,
                "{} {case:?}: system calls that the vDSO should have answered (packed, original)",
                arch.tag()
            );
            if case[0] == "vdsoloop" {
                assert_eq!(p, 0, "{}: clock_gettime took the system call", arch.tag());
            }
        }
    }
}
