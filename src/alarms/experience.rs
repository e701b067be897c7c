//! Probing what the users see: the template's `userExperience` endpoint (Prometheus text
//! format, e.g. the load balancer's `/metrics`) scraped every period while the run lasts,
//! each scrape journaled as it is read. The report's figures are made from these samples
//! ([`crate::report::experience`]).

use super::sources::{read_capped, root_cause, Capped};

/// The most a scrape of the userExperience endpoint reads (a load balancer's `/metrics` is a
/// few KiB).
pub const SCRAPE_CAP: usize = 4 << 20;
use crate::journal::{Event, Journal};
use crate::template::UserExperience;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// One scrape: counters as read (cumulative), or why there is nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When it was read.
    pub at: SystemTime,
    /// Sum of the request counters.
    pub requests: Option<f64>,
    /// Sum of the error counters.
    pub errors: Option<f64>,
    /// Finite buckets of the latency histogram, `(upper bound s, cumulative count)`, by bound.
    pub buckets: Vec<(f64, f64)>,
    /// The histogram's observation count.
    pub count: Option<f64>,
}

impl Sample {
    /// The sample a journaled [`Event::UserExperience`] holds.
    pub fn from_event(at: SystemTime, event: &Event) -> Option<Sample> {
        match event {
            Event::UserExperience {
                requests,
                errors,
                buckets,
                count,
                ..
            } => Some(Sample {
                at,
                requests: *requests,
                errors: *errors,
                buckets: buckets.clone(),
                count: *count,
            }),
            _ => None,
        }
    }

    fn event(&self, error: Option<String>) -> Event {
        Event::UserExperience {
            requests: self.requests,
            errors: self.errors,
            buckets: self.buckets.clone(),
            count: self.count,
            error,
        }
    }
}

/// Sums of a Prometheus text exposition: every sample's value added up by metric name
/// (labels dropped), and histogram buckets by their `le`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Exposition {
    sums: BTreeMap<String, f64>,
    buckets: BTreeMap<String, Vec<(f64, f64)>>,
}

impl Exposition {
    /// Parses the text format; lines that are not samples (comments, blanks, garbage) are skipped.
    pub fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, rest) = match line.find('{') {
                Some(open) => match line[open..].find('}') {
                    Some(close) => (&line[..open + close + 1], &line[open + close + 1..]),
                    None => continue,
                },
                None => match line.split_once(char::is_whitespace) {
                    Some((name, rest)) => (name, rest),
                    None => continue,
                },
            };
            let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            *e.sums.entry(name.to_string()).or_default() += value;
            if let Some(le) = label(labels, "le").filter(|_| name.ends_with("_bucket")) {
                let bound = match le {
                    "+Inf" => f64::INFINITY,
                    b => match b.parse::<f64>() {
                        Ok(b) => b,
                        Err(_) => continue,
                    },
                };
                let list = e.buckets.entry(name.to_string()).or_default();
                match list.iter_mut().find(|(b, _)| *b == bound) {
                    Some((_, c)) => *c += value,
                    None => list.push((bound, value)),
                }
            }
        }
        for list in e.buckets.values_mut() {
            list.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        e
    }

    /// The sum of these metrics' series; `None` when one of them is absent.
    pub fn sum(&self, names: &[String]) -> Option<f64> {
        names.iter().map(|n| self.sums.get(n).copied()).sum()
    }

    /// A histogram's finite buckets and its count (the `+Inf` bucket).
    pub fn histogram(&self, name: &str) -> (Vec<(f64, f64)>, Option<f64>) {
        let list = self.buckets.get(&format!("{name}_bucket")).cloned().unwrap_or_default();
        let count = list
            .iter()
            .find(|(b, _)| b.is_infinite())
            .map(|(_, c)| *c)
            .or_else(|| self.sums.get(&format!("{name}_count")).copied());
        (list.into_iter().filter(|(b, _)| b.is_finite()).collect(), count)
    }
}

/// The value of label `key` in `{a="b",key="v"}`.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("{key}=\"");
    let start = labels.find(&pattern)? + pattern.len();
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

/// Why a scrape gave nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    /// The endpoint did not answer.
    #[error("{url}: {cause}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What went wrong.
        cause: String,
    },
    /// It answered with an error status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The endpoint.
        url: String,
        status: u16,
    },
    /// The answer is larger than the cap.
    #[error("{url}: the answer is larger than {cap} bytes, the cap on a userExperience scrape; point it at an endpoint with fewer series")]
    TooLarge {
        url: String,
        /// The cap, bytes.
        cap: usize,
    },
    /// A request counter is not in the answer.
    #[error("{url} has none of {metrics}")]
    Missing {
        /// The endpoint.
        url: String,
        /// The counters looked for.
        metrics: String,
    },
}

/// Reads the endpoint once.
pub async fn scrape(client: &reqwest::Client, ux: &UserExperience) -> Result<Sample, ScrapeError> {
    let unreachable = |e: reqwest::Error| ScrapeError::Unreachable {
        url: ux.url.clone(),
        cause: if e.is_timeout() {
            "timeout".into()
        } else {
            root_cause(&e)
        },
    };
    let response = client
        .get(&ux.url)
        .timeout(ux.timeout)
        .send()
        .await
        .map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(ScrapeError::Status {
            url: ux.url.clone(),
            status: response.status().as_u16(),
        });
    }
    let text = match read_capped(response, SCRAPE_CAP).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(Capped::Read(e)) => return Err(unreachable(e)),
        Err(Capped::TooLarge) => {
            return Err(ScrapeError::TooLarge {
                url: ux.url.clone(),
                cap: SCRAPE_CAP,
            })
        }
    };
    let at = SystemTime::now();
    let e = Exposition::parse(&text);
    let requests = e.sum(&ux.requests).ok_or_else(|| ScrapeError::Missing {
        url: ux.url.clone(),
        metrics: ux.requests.join(", "),
    })?;
    // An error counter that has not appeared yet has counted nothing.
    let errors = ux
        .errors
        .iter()
        .map(|n| e.sum(std::slice::from_ref(n)).unwrap_or(0.0))
        .sum();
    let (buckets, count) = ux.latency.as_deref().map(|l| e.histogram(l)).unwrap_or_default();
    Ok(Sample {
        at,
        requests: Some(requests),
        errors: Some(errors),
        buckets,
        count,
    })
}

/// Scrapes every period until `cancel`, journaling each sample; returns them all.
pub async fn watch(ux: UserExperience, journal: Arc<Journal>, cancel: CancellationToken) -> Vec<Sample> {
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    let mut next = tokio::time::Instant::now();
    loop {
        let sample = tokio::select! {
            _ = cancel.cancelled() => break,
            s = scrape(&client, &ux) => s,
        };
        match sample {
            Ok(s) => {
                journal.record(s.event(None));
                samples.push(s);
            }
            Err(e) => {
                tracing::debug!(error = %e, "no user-experience sample this period");
                let empty = Sample {
                    at: SystemTime::now(),
                    requests: None,
                    errors: None,
                    buckets: Vec::new(),
                    count: None,
                };
                journal.record(empty.event(Some(e.to_string())));
            }
        }
        next += ux.period;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        next = next.max(tokio::time::Instant::now());
    }
    // One last reading closes the last phase where the run ended.
    if let Ok(s) = scrape(&client, &ux).await {
        journal.record(s.event(None));
        samples.push(s);
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarms::sources::tests::answering;
    use std::time::Duration;

    fn ux(url: String) -> UserExperience {
        UserExperience {
            url,
            requests: vec!["lb_requests_total".into()],
            errors: Vec::new(),
            latency: None,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn a_scrape_is_read_up_to_its_cap() {
        let client = reqwest::Client::new();
        let small = ux(answering(b"lb_requests_total 12\n".to_vec()).await);
        assert_eq!(scrape(&client, &small).await.unwrap().requests, Some(12.0));

        // A valid exposition the whole way, so only the cap can refuse it.
        let mut huge = b"lb_requests_total 12\n".to_vec();
        while huge.len() <= 2 * SCRAPE_CAP {
            huge.extend_from_slice(b"# padding padding padding padding padding padding padding\n");
        }
        let err = scrape(&client, &ux(answering(huge).await)).await.unwrap_err();
        assert!(matches!(err, ScrapeError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("the cap on a userExperience scrape"), "{err}");
    }
}
