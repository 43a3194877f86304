//! Severity levels, ordered from least to most severe.

use std::fmt;
use std::str::FromStr;

/// Severity of a log event. The order of the variants is the order of severity, so
/// `level >= Level::Critical` reads as "critical or worse". `Unknown` (a line whose level
/// could not be found) ranks lowest: it never raises a level alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Unknown,
    Trace,
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown level {0:?}")]
pub struct UnknownLevel(pub String);

impl Level {
    pub const ALL: [Level; 10] = [
        Level::Unknown,
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Notice,
        Level::Warning,
        Level::Error,
        Level::Critical,
        Level::Alert,
        Level::Emergency,
    ];

    /// Canonical upper-case name, as written on the stream.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Unknown => "UNKNOWN",
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Notice => "NOTICE",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
            Level::Alert => "ALERT",
            Level::Emergency => "EMERGENCY",
        }
    }

    /// Level of a syslog severity (RFC 5424 §6.2.1: 0 is emergency, 7 is debug).
    pub fn from_syslog_severity(severity: u8) -> Option<Level> {
        Some(match severity {
            0 => Level::Emergency,
            1 => Level::Alert,
            2 => Level::Critical,
            3 => Level::Error,
            4 => Level::Warning,
            5 => Level::Notice,
            6 => Level::Info,
            7 => Level::Debug,
            _ => return None,
        })
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl FromStr for Level {
    type Err = UnknownLevel;

    /// Case-insensitive, with the aliases of common loggers and syslog severities 0–7.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if let Ok(severity) = trimmed.parse::<u8>() {
            return Level::from_syslog_severity(severity).ok_or_else(|| UnknownLevel(text.into()));
        }
        // Case-insensitive comparison without allocating: this runs once per event.
        const ALIASES: &[(&str, Level)] = &[
            ("INFO", Level::Info),
            ("WARNING", Level::Warning),
            ("ERROR", Level::Error),
            ("CRITICAL", Level::Critical),
            ("DEBUG", Level::Debug),
            ("TRACE", Level::Trace),
            ("NOTICE", Level::Notice),
            ("ALERT", Level::Alert),
            ("EMERGENCY", Level::Emergency),
            ("UNKNOWN", Level::Unknown),
            ("warn", Level::Warning),
            ("err", Level::Error),
            ("crit", Level::Critical),
            ("fatal", Level::Critical),
            ("emerg", Level::Emergency),
            ("panic", Level::Emergency),
            ("information", Level::Info),
            ("informational", Level::Info),
            ("inf", Level::Info),
            ("trc", Level::Trace),
            ("dbg", Level::Debug),
            ("wrn", Level::Warning),
            ("eror", Level::Error),
        ];
        Ok(
            match ALIASES.iter().find(|(alias, _)| alias.eq_ignore_ascii_case(trimmed)) {
                Some((_, level)) => *level,
                _ => return Err(UnknownLevel(text.into())),
            },
        )
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn aliases_and_case() {
        assert_eq!("warn".parse::<Level>(), Ok(Level::Warning));
        assert_eq!("WaRnInG".parse::<Level>(), Ok(Level::Warning));
        assert_eq!("err".parse::<Level>(), Ok(Level::Error));
        assert_eq!("crit".parse::<Level>(), Ok(Level::Critical));
        assert_eq!("FATAL".parse::<Level>(), Ok(Level::Critical));
        assert_eq!("emerg".parse::<Level>(), Ok(Level::Emergency));
        assert_eq!("panic".parse::<Level>(), Ok(Level::Emergency));
        assert_eq!(" info ".parse::<Level>(), Ok(Level::Info));
        assert!("verbose".parse::<Level>().is_err());
        assert!("".parse::<Level>().is_err());
    }

    #[test]
    fn syslog_severities() {
        let expected = [
            Level::Emergency,
            Level::Alert,
            Level::Critical,
            Level::Error,
            Level::Warning,
            Level::Notice,
            Level::Info,
            Level::Debug,
        ];
        for (severity, level) in expected.iter().enumerate() {
            assert_eq!(severity.to_string().parse::<Level>(), Ok(*level));
        }
        assert!("8".parse::<Level>().is_err());
    }

    #[test]
    fn order_is_severity() {
        assert!(Level::Emergency > Level::Alert);
        assert!(Level::Alert > Level::Critical);
        assert!(Level::Critical > Level::Error);
        assert!(Level::Trace < Level::Debug);
    }

    proptest! {
        #[test]
        fn canonical_names_round_trip(index in 0usize..10, upper in any::<bool>()) {
            let level = Level::ALL[index];
            let name = if upper { level.as_str().to_string() } else { level.as_str().to_lowercase() };
            prop_assert_eq!(name.parse::<Level>(), Ok(level));
        }

        #[test]
        fn parsing_never_panics(text in ".*") {
            let _ = text.parse::<Level>();
        }
    }
}
