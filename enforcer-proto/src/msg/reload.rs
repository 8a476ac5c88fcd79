//! Config reload (`enforcerctl reload`, SIGHUP).

use serde::{Deserialize, Serialize};

/// One config key whose value a reload changes (or would change), values as TOML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// Dotted key: `idle.timeout`, `rules[0].max_sessions_per_user`.
    pub key: String,
    /// `None`: not set before (a rule key, a new rule).
    pub old: Option<String>,
    /// `None`: no longer set.
    pub new: Option<String>,
}

impl std::fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
        write!(f, "{}: {} → {}", self.key, show(&self.old), show(&self.new))
    }
}

/// A reload that was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The file re-read (the one enforcerd was started with).
    pub config_path: String,
    /// What changed; empty when the file says what was already in force.
    pub changes: Vec<ConfigChange>,
}
