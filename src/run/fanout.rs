//! Fan-out to many hosts at once, with each answer journaled as it comes: answers that come
//! in together share one write.

use crate::journal::{Event, Journal};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;

/// Answers that came in together are journaled in one write; a larger batch waits for the next.
const JOURNAL_BATCH: usize = 256;

/// Runs `futures` at once and journals the events each returns as it finishes, those that
/// finished together in one write (a write per host cost a system call per host, twice per
/// fan-out); returns their results in the order of `futures`.
pub(super) async fn journaled<T, F>(journal: &Journal, futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: Future<Output = (T, Vec<Event>)>,
{
    let running: FuturesUnordered<_> = futures
        .into_iter()
        .enumerate()
        .map(|(i, f)| async move { (i, f.await) })
        .collect();
    let mut results: Vec<Option<T>> = std::iter::repeat_with(|| None).take(running.len()).collect();
    let mut finished = running.ready_chunks(JOURNAL_BATCH);
    while let Some(batch) = finished.next().await {
        let mut events = Vec::with_capacity(batch.len());
        for (i, (result, e)) in batch {
            results[i] = Some(result);
            events.extend(e);
        }
        journal.record_all(events);
    }
    results.into_iter().map(|r| r.expect("every future finished")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A removal that waits out its grace must not hold back the lines of those answered
    /// before it: the quick answer's line is in the file while the slow one still waits.
    #[tokio::test]
    async fn each_answer_is_journaled_as_it_comes_not_with_the_last() {
        let dir = std::env::temp_dir().join(format!("faultline-journaled-{}", std::process::id()));
        let path = dir.join("run.jsonl");
        let journal = Journal::create(&path, "EXP1").unwrap();
        let (open, gate) = tokio::sync::oneshot::channel::<()>();
        let hosts = [("quick", None), ("slow", Some(gate))];
        let answers = hosts.into_iter().map(|(host, gate)| async move {
            if let Some(gate) = gate {
                gate.await.expect("the watcher opens the gate");
            }
            (host, vec![Event::AgentDisconnected { host: host.into() }])
        });
        let lines = || -> Vec<Event> {
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<crate::journal::Entry>(l).unwrap().event)
                .collect()
        };
        let watcher = async {
            tokio::time::timeout(Duration::from_secs(5), async {
                while lines().is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the quick answer is journaled while the slow one waits");
            assert_eq!(lines(), vec![Event::AgentDisconnected { host: "quick".into() }]);
            open.send(()).unwrap();
        };
        let (results, ()) = tokio::join!(journaled(&journal, answers), watcher);
        assert_eq!(results, vec!["quick", "slow"], "results keep the order of the futures");
        assert_eq!(
            lines(),
            ["quick", "slow"].map(|h| Event::AgentDisconnected { host: h.into() })
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
