//! Reading the alert registries of the rule state (`<rules_prefix>active` and
//! `<rules_prefix>resolved`, hashes `<rule>/<gk>` → alert record JSON, see
//! `docs/ALERTING.md`). The settle and clock scripts write them; re-senders only read.

use redis::RedisError;

use super::{Connection, value_items, value_text};

/// Fields asked for per HSCAN call: keeps each call short on a large registry, so Redis
/// stays responsive to the settle scripts in between.
const SCAN_COUNT: usize = 500;

/// Every record of one registry (the hash values). HSCAN rather than HGETALL: a registry
/// holds one field per firing group, which may be many; a record changed during the scan
/// is returned in its old or new form, both fine for a re-send.
pub async fn records(connection: &mut Connection, registry_key: &str) -> Result<Vec<String>, RedisError> {
    let mut records = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let reply: redis::Value = redis::cmd("HSCAN")
            .arg(registry_key)
            .arg(&cursor)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(connection)
            .await?;
        let parts = value_items(&reply);
        let (Some(next_cursor), Some(pairs)) = (parts.first().and_then(value_text), parts.get(1)) else {
            return Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "HSCAN reply is not [cursor, fields]",
            )));
        };
        records.extend(
            value_items(pairs)
                .chunks_exact(2)
                .filter_map(|pair| value_text(&pair[1])),
        );
        if next_cursor == "0" {
            return Ok(records);
        }
        cursor = next_cursor;
    }
}
