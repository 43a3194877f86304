//! Syslog messages, RFC 5424 and RFC 3164 (BSD), into events. The priority gives the level.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDateTime, SecondsFormat, Utc};

use super::{Level, LogEvent};

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// Parses one syslog message (without framing). `fallback_host` is used when the message
/// carries none (`-`). Errors say why the message is not syslog.
pub fn parse(id: &str, message: &str, fallback_host: &str) -> Result<LogEvent, String> {
    let message = message.trim_end_matches(['\n', '\r', '\0']);
    let Some(after_bracket) = message.strip_prefix('<') else {
        return Err("no <priority> at the start".into());
    };
    let Some((priority_text, rest)) = after_bracket.split_once('>') else {
        return Err("unterminated <priority>".into());
    };
    let priority: u8 = match priority_text.parse() {
        Ok(priority) if priority_text.len() <= 3 && priority <= 191 => priority,
        _ => return Err(format!("invalid priority {priority_text:?}")),
    };
    let level = Level::from_syslog_severity(priority % 8).expect("a severity is below 8");
    let mut extra = BTreeMap::from([(
        "facility".to_string(),
        FACILITIES[usize::from(priority / 8)].to_string(),
    )]);
    let (timestamp, host, service, text) = match rest.strip_prefix("1 ") {
        Some(rfc5424) => parse_5424(rfc5424, &mut extra)?,
        None => parse_3164(rest, &mut extra),
    };
    Ok(LogEvent {
        id: id.to_string(),
        timestamp: timestamp.unwrap_or_else(super::now_rfc3339),
        level,
        service: service.unwrap_or_else(|| "syslog".into()),
        host: host.unwrap_or_else(|| fallback_host.to_string()),
        message: text.to_string(),
        extra,
    })
}

type Parts<'a> = (Option<String>, Option<String>, Option<String>, &'a str);

/// `TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]`, `-` for nil.
fn parse_5424<'a>(rest: &'a str, extra: &mut BTreeMap<String, String>) -> Result<Parts<'a>, String> {
    let mut fields = rest.splitn(6, ' ');
    let mut next = |name: &str| fields.next().ok_or_else(|| format!("RFC 5424 message without {name}"));
    let nil = |value: &str| (value != "-").then(|| value.to_string());
    let timestamp_text = next("timestamp")?;
    let host = nil(next("hostname")?);
    let service = nil(next("app-name")?);
    let procid = nil(next("procid")?);
    let msgid = nil(next("msgid")?);
    let structured_and_message = next("structured data")?;
    let timestamp = match timestamp_text {
        "-" => None,
        text => Some(
            DateTime::parse_from_rfc3339(text)
                .map_err(|error| format!("invalid RFC 5424 timestamp {text:?}: {error}"))?
                .with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        ),
    };
    let (structured, message) = split_structured_data(structured_and_message)?;
    if let Some(procid) = procid {
        extra.insert("procid".into(), procid);
    }
    if let Some(msgid) = msgid {
        extra.insert("msgid".into(), msgid);
    }
    if structured != "-" {
        extra.insert("structured_data".into(), structured.to_string());
    }
    // A UTF-8 byte order mark may start the message (RFC 5424 §6.4).
    Ok((timestamp, host, service, message.trim_start_matches('\u{feff}')))
}

/// `-` or one or more `[id param="value" …]` elements (values may contain escaped `]`).
fn split_structured_data(text: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = text.strip_prefix('-') {
        return Ok(("-", rest.strip_prefix(' ').unwrap_or(rest)));
    }
    let bytes = text.as_bytes();
    let mut position = 0;
    while bytes.get(position) == Some(&b'[') {
        let mut in_quotes = false;
        loop {
            position += 1;
            match bytes.get(position) {
                None => return Err("unterminated structured data".into()),
                Some(b'\\') if in_quotes => position += 1,
                Some(b'"') => in_quotes = !in_quotes,
                Some(b']') if !in_quotes => break,
                _ => {}
            }
        }
        position += 1;
    }
    if position == 0 {
        return Err("RFC 5424 structured data is neither - nor [...]".into());
    }
    let message = &text[position..];
    Ok((&text[..position], message.strip_prefix(' ').unwrap_or(message)))
}

/// `Mmm dd hh:mm:ss HOSTNAME TAG[pid]: MSG`; anything that does not fit is the message.
fn parse_3164<'a>(rest: &'a str, extra: &mut BTreeMap<String, String>) -> Parts<'a> {
    let Some((timestamp, after_time)) = bsd_timestamp(rest) else {
        return (None, None, None, rest);
    };
    let after_time = after_time.trim_start();
    let (host, after_host) = match after_time.split_once(' ') {
        Some((host, after_host)) if !host.ends_with(':') => (Some(host.to_string()), after_host),
        _ => (None, after_time),
    };
    let tag_end = after_host
        .find(|c: char| c == ':' || c == '[' || c.is_whitespace())
        .unwrap_or(0);
    let (tag, mut message) = after_host.split_at(tag_end);
    if let Some(after_pid_open) = message.strip_prefix('[')
        && let Some((pid, after_pid)) = after_pid_open.split_once(']')
    {
        extra.insert("procid".into(), pid.to_string());
        message = after_pid;
    }
    let message = message.strip_prefix(':').unwrap_or(message).trim_start();
    let service = (!tag.is_empty()).then(|| tag.to_string());
    (Some(timestamp), host, service, message)
}

/// `Oct 11 22:14:15` (RFC 3164 has no year and no zone: this year, UTC).
fn bsd_timestamp(text: &str) -> Option<(String, &str)> {
    let candidate = text.get(..15)?;
    let year = Utc::now().year();
    let parsed = NaiveDateTime::parse_from_str(
        &format!("{year} {}", candidate.replace("  ", " 0")),
        "%Y %b %d %H:%M:%S",
    )
    .ok()?;
    Some((
        parsed.and_utc().to_rfc3339_opts(SecondsFormat::Micros, true),
        &text[15..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc5424_with_structured_data() {
        let message = r#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application"] An application event"#;
        let event = parse("s:1", message, "fallback").unwrap();
        assert_eq!(event.level, Level::Notice);
        assert_eq!(event.timestamp, "2003-10-11T22:14:15.003000Z");
        assert_eq!(event.host, "mymachine.example.com");
        assert_eq!(event.service, "evntslog");
        assert_eq!(event.message, "An application event");
        assert_eq!(event.extra["facility"], "local4");
        assert_eq!(event.extra["msgid"], "ID47");
        assert!(event.extra["structured_data"].starts_with("[exampleSDID@32473"));
        assert!(!event.extra.contains_key("procid"));
    }

    #[test]
    fn rfc5424_nil_fields_and_escaped_brackets() {
        let event = parse("s:2", "<10>1 - - - - - [id x=\"a\\]b\"][y@1] crit msg", "h0").unwrap();
        assert_eq!(event.level, Level::Critical);
        assert_eq!(event.host, "h0");
        assert_eq!(event.service, "syslog");
        assert_eq!(event.message, "crit msg");
        assert_eq!(event.extra["structured_data"], "[id x=\"a\\]b\"][y@1]");
    }

    #[test]
    fn rfc3164_as_sent_by_logger() {
        let event = parse("s:3", "<34>Oct  1 22:14:15 mymachine su[230]: 'su root' failed", "h0").unwrap();
        assert_eq!(event.level, Level::Critical);
        assert_eq!(event.extra["facility"], "auth");
        assert_eq!(event.host, "mymachine");
        assert_eq!(event.service, "su");
        assert_eq!(event.extra["procid"], "230");
        assert_eq!(event.message, "'su root' failed");
        assert!(event.timestamp.contains("-10-01T22:14:15"), "{}", event.timestamp);
    }

    #[test]
    fn not_syslog() {
        assert!(parse("s", "hello", "h").is_err());
        assert!(parse("s", "<999>1 - - - - - -", "h").is_err());
        assert!(parse("s", "<13>1 yesterday h a - - - m", "h").is_err());
        // no BSD timestamp: the rest is the message
        assert_eq!(parse("s", "<13>just text", "h").unwrap().message, "just text");
    }

    proptest! {
        #[test]
        fn never_panics(text in "<[0-9]{1,3}>(1 )?\\PC{0,120}") {
            let _ = parse("s", &text, "h");
        }

        #[test]
        fn priority_gives_the_level(priority in 0u8..192, text in "[a-z ]{0,30}") {
            let event = parse("s", &format!("<{priority}>{text}"), "h").unwrap();
            prop_assert_eq!(event.level, Level::from_syslog_severity(priority % 8).unwrap());
        }
    }
}
