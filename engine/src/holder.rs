//! The current rule set of a running daemon, replaced whole on reload.

use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::{LoadErrors, QuotaLedger, RuleSet};

/// Holds the active [`RuleSet`]. A reload builds the new set completely before swapping it in,
/// so every event is judged by one whole set, old or new; a set that fails to load never
/// replaces the running one.
#[derive(Debug)]
pub struct Engine {
    current: RwLock<Arc<RuleSet>>,
}

impl Engine {
    pub fn new(set: RuleSet) -> Engine {
        Engine {
            current: RwLock::new(Arc::new(set)),
        }
    }

    /// The active set. Keep the `Arc` for the whole evaluation of an event.
    pub fn current(&self) -> Arc<RuleSet> {
        // A poisoned lock still holds a whole Arc: the swap below cannot half-happen.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Makes `set` the active set and returns the previous one.
    pub fn replace(&self, set: RuleSet) -> Arc<RuleSet> {
        let new = Arc::new(set);
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *guard, new)
    }

    /// Installs a freshly loaded set, or keeps the current one if loading failed. On success,
    /// `ledger` keeps the quota buckets of rules whose id and quota are unchanged.
    pub fn reload(
        &self,
        loaded: Result<RuleSet, LoadErrors>,
        ledger: &mut QuotaLedger,
    ) -> Result<Arc<RuleSet>, LoadErrors> {
        let set = loaded?;
        ledger.retain_for(&set);
        self.replace(set);
        Ok(self.current())
    }

    /// [`Engine::reload`] from a rules directory.
    pub fn reload_dir(
        &self,
        dir: &Path,
        ledger: &mut QuotaLedger,
    ) -> Result<Arc<RuleSet>, LoadErrors> {
        let loaded = RuleSet::load_dir_reusing(dir, &self.current());
        self.reload(loaded, ledger)
    }
}
