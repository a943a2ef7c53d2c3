//! Compiles the fixture programs with the `cc` crate's compiler (x86-64 and, with -m32,
//! i386; PIE and non-PIE; C and C++) into OUT_DIR, and tells the tests where they are.
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the C program `src` as `NAME-pie` and `NAME-nopie` in `out`.
fn pie_and_nopie(m32: bool, src: &Path, libs: &[&str], out: &Path, name: &str) {
    for (pie, flags) in [
        ("pie", ["-fPIE", "-pie"]),
        ("nopie", ["-fno-pie", "-no-pie"]),
    ] {
        compile(
            false,
            m32,
            &flags,
            &[src],
            libs,
            &out.join(format!("{name}-{pie}")),
        );
    }
}

fn compile(cpp: bool, m32: bool, flags: &[&str], srcs: &[&Path], libs: &[&str], out: &Path) {
    let tool = cc::Build::new()
        .cpp(cpp)
        .cargo_metadata(false)
        .opt_level(1)
        .target(if m32 {
            "i686-unknown-linux-gnu"
        } else {
            "x86_64-unknown-linux-gnu"
        })
        .host("x86_64-unknown-linux-gnu")
        .get_compiler();
    let mut cmd: Command = tool.to_command();
    if m32 {
        cmd.arg("-m32");
    }
    cmd.args(flags).args(srcs).arg("-o").arg(out).args(libs);
    let st = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler: {e}"));
    if !st.success() {
        panic!(
            "compiling fixture {} failed{}",
            out.display(),
            if m32 {
                " (is gcc-multilib / g++-multilib installed? tests/run installs them)"
            } else {
                ""
            }
        );
    }
}

/// Turns the PT_GNU_STACK header of an ELF file into PT_NULL, as in programs linked before
/// the GNU stack note existed; the kernel then gives i386 programs READ_IMPLIES_EXEC.
fn drop_gnu_stack(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let is64 = b[4] == 2;
    let rd = |b: &[u8], o: usize, n: usize| {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&b[o..o + n]);
        u64::from_le_bytes(v) as usize
    };
    let (phoff, phentsize, phnum) = if is64 {
        (rd(&b, 32, 8), rd(&b, 54, 2), rd(&b, 56, 2))
    } else {
        (rd(&b, 28, 4), rd(&b, 42, 2), rd(&b, 44, 2))
    };
    let mut found = false;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if rd(&b, o, 4) == 0x6474_e551 {
            b[o..o + 4].copy_from_slice(&0u32.to_le_bytes());
            found = true;
        }
    }
    assert!(found, "{} has no PT_GNU_STACK", path.display());
    std::fs::write(path, b).unwrap();
}

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("fixtures");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("fixtures");
    std::fs::create_dir_all(&out).unwrap();
    println!("cargo:rerun-if-changed={}", dir.display());
    let c = dir.join("fixture.c");
    let cxx = dir.join("cxx.cpp");
    let needlib = dir.join("needlib.c");
    let libsrc = dir.join("libneeded.c");
    let dlopen_soname = dir.join("dlopen_soname.c");
    let slow_audit = dir.join("slow_audit.c");
    let hardening = dir.join("hardening.c");
    compile(
        false,
        false,
        &["-shared", "-fPIC"],
        &[&dir.join("fork_audit.c")],
        &[],
        &out.join("fork_audit.so"),
    );
    compile(
        false,
        false,
        &["-shared", "-fPIC"],
        &[&slow_audit],
        &[],
        &out.join("slow_audit.so"),
    );
    for (arch, m32) in [("x86_64", false), ("i386", true)] {
        for (pie, flag) in [("pie", "-pie"), ("nopie", "-no-pie")] {
            let pic = if pie == "pie" { "-fPIE" } else { "-fno-pie" };
            compile(
                false,
                m32,
                &[pic, flag, "-pthread", "-fstack-protector-strong"],
                &[&c],
                &["-Wl,--no-as-needed", "-lm", "-ldl"],
                &out.join(format!("fixture-{arch}-{pie}")),
            );
            compile(
                true,
                m32,
                &[pic, flag, "-pthread"],
                &[&cxx],
                &[],
                &out.join(format!("cxx-{arch}-{pie}")),
            );
        }
        // A library with an unused undefined symbol, linked by `lazy-ARCH` (found through
        // its RUNPATH) and, as libplug.so, dlopen()ed by it with RTLD_LAZY.
        let lazydir = out.join(format!("lib-{arch}-lazy"));
        std::fs::create_dir_all(&lazydir).unwrap();
        for name in ["liblazy.so", "libplug.so"] {
            compile(
                false,
                m32,
                &["-shared", "-fPIC", &format!("-Wl,-soname,{name}")],
                &[&dir.join("lazylib.c")],
                &[],
                &lazydir.join(name),
            );
        }
        compile(
            false,
            m32,
            &[
                "-fPIE",
                "-pie",
                "-Wl,-z,lazy",
                "-Wl,--allow-shlib-undefined",
            ],
            &[&dir.join("lazy.c")],
            &[
                &format!("-L{}", lazydir.display()),
                &format!("-Wl,-rpath,{}", lazydir.display()),
                "-llazy",
                "-ldl",
            ],
            &out.join(format!("lazy-{arch}")),
        );
        // Where the program, libc, TLS and the heap lie in one run (tests/e2e/aslr.rs).
        pie_and_nopie(
            m32,
            &dir.join("aslr.c"),
            &["-ldl"],
            &out,
            &format!("aslr-{arch}"),
        );
        // A program with RUNPATH $ORIGIN/plugins, a plugin next to it (in the capture
        // directory) and another build of the plugin for the tests to place elsewhere.
        let origin = out.join(format!("origin-{arch}"));
        std::fs::create_dir_all(origin.join("plugins")).unwrap();
        for (lib, where_) in [
            (origin.join("plugins/libp2.so"), "the capture directory"),
            (origin.join("libp2-moved.so"), "next to the program"),
        ] {
            compile(
                false,
                m32,
                &["-shared", "-fPIC", &format!("-DWHERE=\"{where_}\"")],
                &[&dir.join("origin_plugin.c")],
                &[],
                &lib,
            );
        }
        compile(
            false,
            m32,
            &[
                "-fPIE",
                "-pie",
                "-Wl,-rpath,$ORIGIN/plugins",
                "-Wl,--enable-new-dtags",
            ],
            &[&dir.join("origin_app.c")],
            &["-ldl"],
            &origin.join("app"),
        );
        // A program whose own IFUNC resolver reads CPUID and ignores glibc's mask.
        compile(
            false,
            m32,
            &["-fPIE", "-pie"],
            &[&dir.join("ifunc_clone.c")],
            &[],
            &out.join(format!("ifunc-clone-{arch}")),
        );
        // Programs with a large bss.
        let bigbss = dir.join("bigbss.c");
        for mb in [523, 1536] {
            compile(
                false,
                m32,
                &["-fPIE", "-pie", &format!("-DBSS_MB={mb}")],
                &[&bigbss],
                &[],
                &out.join(format!("bigbss-{arch}-{mb}")),
            );
        }
        // A program without PT_GNU_STACK.
        let nostack = out.join(format!("fixture-{arch}-nostack"));
        compile(
            false,
            m32,
            &["-fPIE", "-pie", "-pthread", "-fstack-protector-strong"],
            &[&c],
            &["-Wl,--no-as-needed", "-lm", "-ldl"],
            &nostack,
        );
        drop_gnu_stack(&nostack);
        // The hardening tests' fixture (tests/e2e/hardening.rs).
        pie_and_nopie(m32, &hardening, &[], &out, &format!("hardening-{arch}"));
        // Linked at the lowest address the kernel maps: no room below it for an i386 stub.
        compile(
            false,
            m32,
            &["-fno-pie", "-no-pie", "-Wl,-Ttext-segment=0x10000"],
            &[&hardening],
            &[],
            &out.join(format!("hardening-low-{arch}")),
        );
        compile(
            false,
            m32,
            &["-static"],
            &[&hardening],
            &[],
            &out.join(format!("hardening-static-{arch}")),
        );
        // A program whose library exists only while the tests create it.
        let libdir = out.join(format!("lib-{arch}"));
        std::fs::create_dir_all(&libdir).unwrap();
        compile(
            false,
            m32,
            &["-shared", "-fPIC", "-Wl,-soname,libneeded.so"],
            &[&libsrc],
            &[],
            &libdir.join("libneeded.so"),
        );
        compile(
            false,
            m32,
            &["-pie", "-fPIE"],
            &[&needlib],
            &[&format!("-L{}", libdir.display()), "-lneeded"],
            &out.join(format!("needlib-{arch}")),
        );
        // The same library without DT_SONAME, and a program that dlopen()s a name given
        // at run time.
        let nosoname = out.join(format!("lib-{arch}-nosoname"));
        std::fs::create_dir_all(&nosoname).unwrap();
        compile(
            false,
            m32,
            &["-shared", "-fPIC"],
            &[&libsrc],
            &[],
            &nosoname.join("libneeded.so"),
        );
        // And with DT_SONAME libneeded.so.1, reached through the link libneeded.so (as a
        // development package installs libraries).
        let versioned = out.join(format!("lib-{arch}-versioned"));
        std::fs::create_dir_all(&versioned).unwrap();
        compile(
            false,
            m32,
            &["-shared", "-fPIC", "-Wl,-soname,libneeded.so.1"],
            &[&libsrc],
            &[],
            &versioned.join("libneeded.so.1"),
        );
        let link = versioned.join("libneeded.so");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("libneeded.so.1", &link).unwrap();
        compile(
            false,
            m32,
            &["-pie", "-fPIE"],
            &[&dir.join("dlopen_arg.c")],
            &["-ldl"],
            &out.join(format!("dlopen-arg-{arch}")),
        );
        compile(
            false,
            m32,
            &["-pie", "-fPIE"],
            &[&dlopen_soname],
            &["-ldl"],
            &out.join(format!("dlopen-soname-{arch}")),
        );
        compile(
            false,
            m32,
            &["-static"],
            &[&c],
            &["-lm", "-pthread"],
            &out.join(format!("static-{arch}")),
        );
    }
    // AddressSanitizer and ThreadSanitizer builds (gcc's libasan8 and libtsan2; tests/setup
    // installs them). Without the runtime the fixture is missing and its tests fail.
    for (name, flag, lib) in [
        ("asan", "-fsanitize=address", "libasan.so"),
        ("tsan", "-fsanitize=thread", "libtsan.so"),
    ] {
        let exe = out.join(format!("{name}-x86_64"));
        let _ = std::fs::remove_file(&exe);
        let probe = cc::Build::new()
            .cargo_metadata(false)
            .get_compiler()
            .to_command()
            .args([flag, &format!("-print-file-name={lib}")])
            .output();
        if probe.is_ok_and(|o| Path::new(String::from_utf8_lossy(&o.stdout).trim()).is_absolute()) {
            compile(
                false,
                false,
                &[flag, "-fPIE", "-pie", "-pthread"],
                &[&dir.join(format!("{name}.c"))],
                &[],
                &exe,
            );
            if name == "asan" {
                // Not position-independent: elfpack has no place for it.
                compile(
                    false,
                    false,
                    &[flag, "-fno-PIE", "-no-pie"],
                    &[&dir.join("asan.c")],
                    &[],
                    &out.join("asan-x86_64-nopie"),
                );
            }
        }
    }
    println!("cargo:rustc-env=FIXTURES_DIR={}", out.display());
}
