//! Deferring the signals that would interrupt writing OUTPUT.
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT until dropped.
pub struct DeferSignals(Option<SigSet>);

impl DeferSignals {
    pub fn new() -> DeferSignals {
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            set.add(s);
        }
        let mut old = SigSet::empty();
        let ok = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).is_ok();
        DeferSignals(ok.then_some(old))
    }
}

impl Drop for DeferSignals {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
    }
}
