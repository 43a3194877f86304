//! Event fields as rules name them: the fixed fields of [`LogEvent`] or an extra field.

use crate::event::LogEvent;

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
