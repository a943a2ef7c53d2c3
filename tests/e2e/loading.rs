//! What ld.so does after start-up, in the packed program as in the original: lazy binding
//! (symbols that only lazy binding can leave unresolved do not stop the pack, a later
//! `dlopen(RTLD_LAZY)` binds lazily, and the lazy-binding resolver the image keeps runs on a
//! CPU of the packed level), and `$ORIGIN` in a RUNPATH searched by a later `dlopen`.
use elfpack_tests::*;
use std::process::Command;

/// `lazy-ARCH` links a library with an unused undefined symbol and dlopen()s a plugin with
/// another one. Packed, it runs in every mode (an empty root included, with the plugin
/// copied next to it) and prints what the original prints.
#[test]
fn unresolved_unused_symbols_stay_lazy() {
    for arch in [Arch::X86_64, Arch::I386] {
        let orig = fixture(&format!("lazy-{}", arch.tag()));
        let plugin = fixture(&format!("lib-{}-lazy/libplug.so", arch.tag()));
        let packed = packed(&orig, &[]);
        for mode in ALL_MODES {
            let placed = Placed::new(&packed, mode, arch);
            std::fs::copy(&plugin, placed.dir().join("libplug.so")).unwrap();
            let inside = match mode {
                Mode::Chroot => "/libplug.so".to_string(),
                _ => placed.dir().join("libplug.so").display().to_string(),
            };
            let outside = placed.dir().join("libplug.so").display().to_string();
            let p = without_qemu_warnings(placed.run(&[&inside], b"", None));
            let o = run_original(&orig, placed.argv0(), &[&outside], b"", None);
            assert_same(&format!("{} lazy {mode:?}", arch.tag()), &p, &o);
            assert_eq!(p.stdout, "linked 42\nplugin 42\n");
        }
    }
}

/// The default (baseline) pack binds lazily after start-up through ld.so's resolver; on a
/// CPU without XSAVE (qemu's Nehalem model) that resolver must not use it.
#[test]
fn lazy_resolver_runs_without_xsave() {
    let qemu = require("qemu-x86_64");
    let orig = fixture("lazy-x86_64");
    let plugin = fixture("lib-x86_64-lazy/libplug.so");
    let packed = packed(&orig, &[]);
    let mut cmd = Command::new(&qemu);
    cmd.args(["-cpu", "Nehalem", "-0", "./prog"])
        .arg(&packed)
        .arg(&plugin)
        .env_clear()
        .envs(test_env());
    let p = without_qemu_warnings(run_cmd(cmd, b""));
    let o = run_original(&orig, "./prog", &[plugin.as_os_str()], b"", None);
    assert_same("lazy under qemu -cpu Nehalem", &p, &o);
}

/// A program with RUNPATH `$ORIGIN/plugins` that dlopen()s `libp2.so`: packed and moved to
/// another directory, it finds the plugin next to itself, as a moved copy of the original
/// does, and fails as that copy fails where there is no plugin. (Not in an empty root: ld.so
/// computes `$ORIGIN` from /proc/self/exe, which an empty root lacks, for the original too.)
#[test]
fn origin_follows_the_packed_file() {
    for arch in [Arch::X86_64, Arch::I386] {
        let dir = fixture(&format!("origin-{}", arch.tag()));
        let packed = packed(&dir.join("app"), &[]);
        for mode in [Mode::Native, Mode::NoAslr, Mode::Nobody, Mode::Qemu] {
            for with_plugin in [true, false] {
                let placed = Placed::new(&packed, mode, arch);
                let copy = scratch();
                std::fs::copy(dir.join("app"), copy.path().join("prog")).unwrap();
                if with_plugin {
                    for d in [placed.dir(), copy.path()] {
                        std::fs::create_dir_all(d.join("plugins")).unwrap();
                        std::fs::copy(dir.join("libp2-moved.so"), d.join("plugins/libp2.so"))
                            .unwrap();
                    }
                }
                let what = format!("{} $ORIGIN {mode:?} plugin={with_plugin}", arch.tag());
                let p = without_qemu_warnings(placed.run::<&str>(&[], b"", None));
                let o = run_original(
                    &copy.path().join("prog"),
                    placed.argv0(),
                    &[] as &[&str],
                    b"",
                    None,
                );
                assert_same(&what, &p, &o);
                let want = if with_plugin {
                    "plugin from next to the program\n"
                } else {
                    "dlopen libp2.so failed\n"
                };
                assert_eq!(p.stdout, want, "{what}");
            }
        }
    }
}
