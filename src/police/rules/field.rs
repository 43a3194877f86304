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
/// the event's own fields; `extra.NAME` is the extra field `NAME`, as in templates (the
/// event's JSON holds its extra fields in the object `extra`); any other name is looked up
/// in its extra fields too (`log.level` is the extra field named `log.level`).
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

/// The prefix that names an extra field explicitly, in filters, `group_by` and templates.
pub const EXTRA_PREFIX: &str = "extra.";

impl Field {
    /// The field `name` names; `extra.` is taken off first, once, so `extra.id` is the
    /// extra field `id` and `extra.extra.x` the extra field `extra.x`. A bare `extra.` names
    /// no field (the rule file refuses it, see [`EXTRA_PREFIX`]).
    pub fn named(name: &str) -> Field {
        if let Some(extra_name) = name.strip_prefix(EXTRA_PREFIX)
            && !extra_name.is_empty()
        {
            return Field::Extra(extra_name.to_string());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_prefix_names_the_extra_field_as_templates_do() {
        assert_eq!(Field::named("service"), Field::Service);
        assert_eq!(Field::named("region"), Field::Extra("region".into()));
        assert_eq!(Field::named("extra.region"), Field::Extra("region".into()));
        assert_eq!(Field::named("extra.service"), Field::Extra("service".into()));
        assert_eq!(Field::named("extra.extra.x"), Field::Extra("extra.x".into()));
        assert_eq!(Field::named("log.level"), Field::Extra("log.level".into()));
        let event = LogEvent {
            id: "a:1:0".into(),
            timestamp: "2026-12-01T12:00:00Z".into(),
            level: Level::Info,
            service: "api".into(),
            host: "h".into(),
            message: "m".into(),
            extra: [("region".to_string(), "eu".to_string())].into(),
        };
        assert_eq!(Field::named("extra.region").get(&event), Some("eu"));
        assert_eq!(Field::named("region").get(&event), Some("eu"));
        assert_eq!(
            Field::named("extra.service").get(&event),
            None,
            "an extra field, not the service"
        );
    }
}
