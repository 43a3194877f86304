//! Event fields as rules name them: the fixed fields of [`LogEvent`] or an extra field.

use crate::event::{EventRef, Level, LogEvent};

/// What the rules read of an event: an owned [`LogEvent`] or a borrowed [`EventRef`]
/// (the police's hot path), which must answer alike for the same event.
pub trait EventFields {
    fn level(&self) -> Level;
    fn timestamp(&self) -> &str;
    /// The field's value; `None` only for a missing extra field.
    fn value(&self, field: &Field) -> Option<&str>;
}

impl EventFields for LogEvent {
    fn level(&self) -> Level {
        self.level
    }

    fn timestamp(&self) -> &str {
        &self.timestamp
    }

    fn value(&self, field: &Field) -> Option<&str> {
        field.get(self)
    }
}

impl EventFields for EventRef<'_> {
    fn level(&self) -> Level {
        self.level
    }

    fn timestamp(&self) -> &str {
        &self.timestamp
    }

    fn value(&self, field: &Field) -> Option<&str> {
        Some(match field {
            Field::Id => &self.id,
            Field::Timestamp => &self.timestamp,
            Field::Level => self.level.as_str(),
            Field::Service => &self.service,
            Field::Host => &self.host,
            Field::Message => &self.message,
            Field::Extra(name) => return self.extra(name),
        })
    }
}

/// A field of an event. `id`, `timestamp`, `level`, `service`, `host` and `message` are
/// the event's own fields; any other name is looked up in its extra fields (`log.level` is
/// the extra field named `log.level`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Id,
    Timestamp,
    Level,
    Service,
    Host,
    Message,
    Extra(String),
}

impl Field {
    pub fn named(name: &str) -> Field {
        match name {
            "id" => Field::Id,
            "timestamp" => Field::Timestamp,
            "level" => Field::Level,
            "service" => Field::Service,
            "host" => Field::Host,
            "message" => Field::Message,
            other => Field::Extra(other.to_string()),
        }
    }

    /// The field's value in `event`; `None` only for a missing extra field.
    pub fn get<'event>(&self, event: &'event LogEvent) -> Option<&'event str> {
        Some(match self {
            Field::Id => &event.id,
            Field::Timestamp => &event.timestamp,
            Field::Level => event.level.as_str(),
            Field::Service => &event.service,
            Field::Host => &event.host,
            Field::Message => &event.message,
            Field::Extra(name) => return event.extra.get(name).map(String::as_str),
        })
    }
}
