//! Analysis: from the captures to what the stub must redo at every run. It owns the
//! sub-steps [`crate::fixups`] (the words that hold per-run values), [`crate::normalize`]
//! (what differs between captures, and the capture's own thread state) and
//! [`crate::vdso`] (the vDSO proxy's entries). Each step takes the image it works on by
//! value and hands on a new value: [`Prepared`] per capture, then one [`Analysed`].
use crate::capture::{Shift, Snapshot, StackInfo};
use crate::error::Result;
use crate::image::{Fixup, Image, Vdso};
use crate::relocs::{self, Aslr};
use crate::{fixups, normalize, vdso};

/// One capture, its per-run words found and zeroed, its thread state reset.
pub struct Prepared {
    pub image: Image,
    pub fixups: Vec<Fixup>,
    pub stack: StackInfo,
    /// Words inside the capture-time stack's range that point at none of its parts.
    pub notes: Vec<String>,
    pub warnings: Vec<crate::warning::Warning>,
}

/// The image to pack and what the stub redoes in it.
pub struct Analysed {
    /// The first capture, with every per-run and varying word zeroed.
    pub image: Image,
    /// Sorted by address.
    pub fixups: Vec<Fixup>,
    /// The vDSO proxy: the image's copy of the vDSO and its function entries.
    pub vdso: Option<Vdso>,
    /// Words zeroed because they differ between the captures.
    pub varying: Vec<u64>,
    /// vDSO functions the proxy leaves as they are.
    pub unknown_vdso: Vec<String>,
    /// The parts and relocations of address-space randomisation; `None` for a fixed
    /// layout.
    pub aslr: Option<Aslr>,
}

/// Finds the per-run words of one capture and resets its thread state.
pub fn prepare(c: Snapshot) -> Result<Prepared> {
    let Snapshot {
        mut image,
        stack,
        warnings,
    } = c;
    let (fixups, notes) = fixups::find(&mut image, &stack)?;
    normalize::reset_thread_state(&mut image);
    Ok(Prepared {
        image,
        fixups,
        stack,
        notes,
        warnings,
    })
}

/// Combines the capture to pack (`first`) with a comparison capture (`second`, made with
/// one argument more when `argc_probe` is the first's argument count, and with other
/// values of the auxv entries ld.so copies) and, for address randomisation, with a capture
/// like the first made at other places (`moved`, by its shift; `crate::relocs`).
pub fn combine(
    first: Prepared,
    second: Prepared,
    moved: Option<(Prepared, Shift)>,
    argc_probe: Option<u64>,
) -> Result<Analysed> {
    let (mut aslr, odd) = match moved {
        Some((m, shift)) => {
            let (a, odd) = relocs::find(&first.image, &m.image, shift)?;
            (Some(a), odd)
        }
        None => (None, Vec::new()),
    };
    let aux_values = fixups::aux_values(&first.image, &second.image, &first.stack, &second.stack);
    let (mut image, mut fixups) = (first.image, first.fixups);
    let varying = normalize::zero_differences(
        &mut image,
        &mut fixups,
        &second.image,
        &second.fixups,
        argc_probe,
    )?;
    drop(second);
    let varying: Vec<u64> = varying
        .into_iter()
        .filter(|a| !aux_values.iter().any(|f| f.addr == *a))
        .collect();
    fixups.extend(aux_values);
    fixups.sort_by_key(|f| f.addr);
    let (vdso, unknown_vdso) = vdso::find_entries(&image)?;
    relocs::explain(&odd, &varying, &image)?;
    if let Some(a) = aslr.as_mut() {
        // Zeroed words stay zero, and the stub writes each fixup's word afresh.
        a.forget(&varying);
        a.forget(&fixups.iter().map(|f| f.addr).collect::<Vec<_>>());
        if let Some(v) = vdso.as_ref().filter(|v| !v.entries.is_empty()) {
            if image.arch.spec().slots_move_with_proxy {
                a.slots = Some(relocs::add_slot_page(&mut image, v)?);
            }
        }
    }
    Ok(Analysed {
        image,
        fixups,
        vdso,
        varying,
        unknown_vdso,
        aslr,
    })
}
