//! The ledger of GPU memory: every byte a resource holds is charged to
//! its desktop before it is allocated, against the desktop's budget, and
//! released when the resource (or the session) goes. Shared by every
//! session on a host; no Vulkan, no IO.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// GPU memory charged per desktop, against each desktop's budget.
#[derive(Debug, Default)]
pub struct Ledger {
    desktops: Mutex<BTreeMap<String, Account>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub charged_bytes: u64,
    pub budget_bytes: u64,
}

impl Ledger {
    /// Opens (or re-budgets) desktop `desktop`'s account.
    pub fn open(&self, desktop: &str, budget_bytes: u64) {
        self.desktops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(desktop.to_owned())
            .or_default()
            .budget_bytes = budget_bytes;
    }

    /// Charges `bytes` to `desktop` unless that passes its budget.
    pub fn charge(&self, desktop: &str, bytes: u64) -> bool {
        let mut desktops = self.desktops.lock().unwrap_or_else(|p| p.into_inner());
        let Some(account) = desktops.get_mut(desktop) else {
            return false;
        };
        match account.charged_bytes.checked_add(bytes) {
            Some(total) if total <= account.budget_bytes => {
                account.charged_bytes = total;
                true
            }
            _ => false,
        }
    }

    pub fn release(&self, desktop: &str, bytes: u64) {
        let mut desktops = self.desktops.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(account) = desktops.get_mut(desktop) {
            account.charged_bytes = account.charged_bytes.saturating_sub(bytes);
        }
    }

    /// Closes `desktop`'s account (its last session ended).
    pub fn close(&self, desktop: &str) {
        self.desktops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(desktop);
    }

    pub fn accounts(&self) -> BTreeMap<String, Account> {
        self.desktops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn total_charged(&self) -> u64 {
        self.accounts().values().map(|a| a.charged_bytes).sum()
    }
}
