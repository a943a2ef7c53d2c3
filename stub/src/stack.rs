//! Steps 1 and 2: this run's initial stack, and the auxv entries that describe the program.
//!
//! The stack the kernel built for OUTPUT already has the layout `_dl_start_user` expects
//! (argc, argv, NULL, envp, NULL, auxv, AT_NULL; linux `fs/binfmt_elf.c`,
//! `create_elf_tables`), with this run's arguments and environment. Only the auxv entries
//! that describe the executable are the stub's, so they are rewritten in place to the
//! original program's values. The packed image lives far from any stack the kernel places,
//! so the stack is never in the image's way.
use crate::place::Place;
use elfpack_stub::abi::Descriptor;
use linux_raw_sys::auxvec as at;

pub struct InitialStack {
    /// Address of argc.
    pub sp: *mut usize,
    pub argc: usize,
    pub argv: *mut *const u8,
    pub envp: *mut *const u8,
    pub envc: usize,
    /// Pairs of (tag, value), up to and including AT_NULL.
    pub auxv: *mut [usize; 2],
    pub auxc: usize,
}

impl InitialStack {
    /// Step 1: reads argc, argv, envp and auxv.
    ///
    /// # Safety
    /// `sp` is the stack pointer the kernel passed to the entry point.
    pub unsafe fn read(sp: *mut usize) -> Self {
        // SAFETY: the layout is the kernel's (see the module comment); every pointer below
        // stays inside the vector area it built.
        unsafe {
            let argc = *sp;
            let argv = sp.add(1) as *mut *const u8;
            let envp = argv.add(argc + 1);
            let mut envc = 0;
            while !(*envp.add(envc)).is_null() {
                envc += 1;
            }
            let auxv = envp.add(envc + 1) as *mut [usize; 2];
            let mut auxc = 0;
            while (*auxv.add(auxc))[0] != at::AT_NULL as usize {
                auxc += 1;
            }
            InitialStack {
                sp,
                argc,
                argv,
                envp,
                envc,
                auxv,
                auxc: auxc + 1,
            }
        }
    }

    fn aux_entries(&self) -> &[[usize; 2]] {
        // SAFETY: `read` counted `auxc` entries at `auxv`.
        unsafe { core::slice::from_raw_parts(self.auxv, self.auxc) }
    }

    /// The value of the last auxv entry with `tag` (ld.so, too, keeps the last one).
    pub fn aux(&self, tag: u32) -> Option<usize> {
        self.aux_entries()
            .iter()
            .rev()
            .find(|e| e[0] == tag as usize)
            .map(|e| e[1])
    }

    /// Sets every auxv entry with `tag` to `value`.
    pub fn set_aux(&mut self, tag: u32, value: usize) {
        // SAFETY: `read` counted `auxc` entries at `auxv`; `&mut self` makes this the only
        // view of them.
        let entries = unsafe { core::slice::from_raw_parts_mut(self.auxv, self.auxc) };
        for e in entries.iter_mut() {
            if e[0] == tag as usize {
                e[1] = value;
            }
        }
    }

    pub fn arg(&self, i: usize) -> Option<*const u8> {
        // SAFETY: index checked against argc.
        (i < self.argc).then(|| unsafe { *self.argv.add(i) })
    }

    pub fn env(&self, i: usize) -> *const u8 {
        debug_assert!(i < self.envc);
        // SAFETY: index below envc.
        unsafe { *self.envp.add(i) }
    }

    /// A native word of this run's AT_RANDOM bytes (`index` 0 or 1 on x86-64, 0 to 3 on
    /// i386).
    pub fn random_word(&self, index: usize) -> usize {
        const WORD: usize = core::mem::size_of::<usize>();
        let p = self.aux(at::AT_RANDOM).unwrap_or(0);
        if p == 0 {
            crate::fail::fail("the kernel gave no AT_RANDOM", 0);
        }
        // SAFETY: AT_RANDOM points at 16 random bytes on the initial stack (linux
        // `fs/binfmt_elf.c`, `create_elf_tables`); index * WORD + WORD <= 16 on both arches.
        unsafe { ((p + index * WORD) as *const usize).read_unaligned() }
    }

    /// Byte length of the NUL-terminated string at `p`.
    pub fn strlen(p: *const u8) -> usize {
        // SAFETY: argument, environment and descriptor strings are NUL-terminated.
        unsafe { crate::mem::strlen(p) }
    }

    /// Address one past the last environment (or argument) string's NUL.
    pub fn strings_end(&self) -> (usize, usize, usize, usize) {
        let arg_start = self.arg(0).map_or(0, |p| p as usize);
        let arg_end = if self.argc > 0 {
            let last = self.arg(self.argc - 1).unwrap();
            last as usize + Self::strlen(last) + 1
        } else {
            arg_start
        };
        let (env_start, env_end) = if self.envc > 0 {
            let last = self.env(self.envc - 1);
            (self.env(0) as usize, last as usize + Self::strlen(last) + 1)
        } else {
            (arg_end, arg_end)
        };
        (arg_start, arg_end, env_start, env_end)
    }
}

/// Step 3: the auxv entries that describe the executable get the original program's values
/// (ld.so reads them in `_dl_sysdep_start`, glibc `elf/dl-sysdep.c`; libc's
/// `dl_iterate_phdr` and `getauxval` read them later).
pub fn describe_program(st: &mut InitialStack, d: &Descriptor, place: &Place) {
    st.set_aux(at::AT_PHDR, place.at(d.at_phdr));
    st.set_aux(at::AT_PHNUM, d.at_phnum as usize);
    st.set_aux(at::AT_PHENT, d.at_phent as usize);
    st.set_aux(at::AT_ENTRY, place.at(d.user_entry));
    st.set_aux(at::AT_BASE, place.at(d.at_base));
}
