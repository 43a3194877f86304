//! Alert rules. A closed enum: `match` shows every kind of rule in one place.

pub mod plan;

use crate::event::{Level, LogEvent};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Fires for every event at `level` or above.
    MinLevel { name: String, level: Level },
}

impl Rule {
    pub fn min_level(level: Level) -> Rule {
        Rule::MinLevel {
            name: format!("level>={level}"),
            level,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Rule::MinLevel { name, .. } => name,
        }
    }

    /// Lowest level at which this rule can fire: events below it need not be decoded fully.
    pub fn lowest_level(&self) -> Level {
        match self {
            Rule::MinLevel { level, .. } => *level,
        }
    }

    pub fn matches(&self, event: &LogEvent) -> bool {
        match self {
            Rule::MinLevel { level, .. } => event.level >= *level,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_level_fires_at_and_above() {
        let rule = Rule::min_level(Level::Critical);
        assert_eq!(rule.name(), "level>=CRITICAL");
        let mut event = LogEvent {
            id: "a:1:0".into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            level: Level::Error,
            service: "s".into(),
            host: "h".into(),
            message: "m".into(),
            extra: Default::default(),
        };
        assert!(!rule.matches(&event));
        for level in [Level::Critical, Level::Alert, Level::Emergency] {
            event.level = level;
            assert!(rule.matches(&event));
        }
    }
}
