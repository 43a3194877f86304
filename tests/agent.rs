//! The agent's identity and its exit: run ids of agents sharing an agent id, exit codes and
//! summaries that tell what was and was not delivered.

mod common;

use std::collections::HashSet;

use common::*;

#[test]
fn agents_with_one_agent_id_started_together_get_distinct_run_ids() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let agents: Vec<_> = (0..2)
        .map(|_| spawn_agent(&url, "same-id", &["--count", "2000", "--rate", "0"]))
        .collect();
    let summaries: Vec<AgentSummary> = agents.into_iter().map(agent_summary).collect();
    assert_ne!(summaries[0].run_id, summaries[1].run_id);
    let events = stream_events(&mut connection);
    assert_eq!(events.len(), 4000);
    let event_ids: HashSet<&str> = events.iter().map(|event| event["id"].as_str().unwrap()).collect();
    assert_eq!(event_ids.len(), 4000, "event ids of the two agents collided");
}
