//! Analysis: from the captures to what the stub must redo at every run. It owns the
//! sub-steps [`crate::fixups`] (the words that hold per-run values), [`crate::normalize`]
//! (what differs between captures, and the capture's own thread state) and
//! [`crate::vdso`] (the vDSO proxy's entries). Each step takes the image it works on by
//! value and hands on a new value: [`Prepared`] per capture, then one [`Analysed`].
use crate::capture::{Snapshot, StackInfo};
use crate::error::Result;
use crate::image::{Fixup, Image, Vdso};
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
/// values of the auxv entries ld.so copies).
pub fn combine(first: Prepared, second: Prepared, argc_probe: Option<u64>) -> Result<Analysed> {
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
    Ok(Analysed {
        image,
        fixups,
        vdso,
        varying,
        unknown_vdso,
    })
}
