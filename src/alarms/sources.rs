//! Metric sources: HTTP probes, a Prometheus instant query, a command. Each turns one
//! period into one datapoint, or into a reason why there is none (a missing datapoint).
//! What a source reads is bounded: a Prometheus answer and a command's output have caps, and
//! a command that outlives its timeout is killed with every process it started.

use crate::template::{Alarm, MetricSource, Statistic};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// The largest Prometheus answer read: one aggregated series is a few hundred bytes, so an
/// answer this large is a query that forgot to aggregate, or not Prometheus.
pub const PROMETHEUS_ANSWER_CAP: usize = 1 << 20;
/// The most a command may print: it is asked for one number (or only its exit status).
pub const COMMAND_OUTPUT_CAP: usize = 64 << 10;

/// A ready-to-use source.
pub struct Probe {
    source: MetricSource,
    client: reqwest::Client,
}

impl Probe {
    /// A probe for an alarm's source.
    pub fn new(alarm: &Alarm) -> Probe {
        Probe {
            source: alarm.source.clone(),
            // A 3xx is an answer, not a hop: a redirecting health check is still healthy.
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a client without custom TLS always builds"),
        }
    }

    /// One datapoint for a period of `period`, with what went wrong on the way; a missing
    /// datapoint always says why.
    pub async fn sample(&self, period: Duration, statistic: Statistic) -> Sample {
        let missing = |note: String| Sample {
            value: None,
            note: Some(note),
        };
        match &self.source {
            MetricSource::Http {
                url,
                method,
                timeout,
                probes_per_period,
            } => {
                self.http(url, method, *timeout, *probes_per_period, period, statistic)
                    .await
            }
            MetricSource::Prometheus { url, query, timeout } => {
                // One query per period, at its end, like a scrape-aligned evaluation.
                tokio::time::sleep(period.saturating_sub(*timeout).min(period)).await;
                match self.prometheus(url, query, *timeout).await {
                    Ok(v) => Sample {
                        value: Some(v),
                        note: None,
                    },
                    Err(e) => missing(e.to_string()),
                }
            }
            MetricSource::Command { run, timeout } => {
                tokio::time::sleep(period.saturating_sub(*timeout).min(period)).await;
                match command(run, *timeout, statistic).await {
                    Ok(v) => Sample {
                        value: Some(v),
                        note: None,
                    },
                    Err(e) => missing(e.to_string()),
                }
            }
        }
    }

    async fn http(
        &self,
        url: &str,
        method: &str,
        timeout: Duration,
        probes: u32,
        period: Duration,
        statistic: Statistic,
    ) -> Sample {
        let method = match reqwest::Method::from_bytes(method.as_bytes()) {
            Ok(m) => m,
            Err(e) => {
                return Sample {
                    value: None,
                    note: Some(e.to_string()),
                }
            }
        };
        let spacing = period / probes.max(1);
        let mut results: Vec<(bool, Option<f64>)> = Vec::with_capacity(probes as usize);
        let mut errors: Vec<String> = Vec::new();
        let start = tokio::time::Instant::now();
        for i in 0..probes {
            tokio::time::sleep_until(start + spacing * i).await;
            let t = Instant::now();
            let answer = self.client.request(method.clone(), url).timeout(timeout).send().await;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            match answer {
                Ok(r) if r.status().is_success() || r.status().is_redirection() => results.push((true, Some(ms))),
                Ok(r) => {
                    errors.push(format!("HTTP {}", r.status().as_u16()));
                    results.push((false, Some(ms)));
                }
                Err(e) => {
                    errors.push(if e.is_timeout() {
                        "timeout".into()
                    } else {
                        root_cause(&e)
                    });
                    results.push((false, None));
                }
            }
        }
        let total = results.len() as f64;
        let ok = results.iter().filter(|(ok, _)| *ok).count() as f64;
        let mut latencies: Vec<f64> = results.iter().filter_map(|(_, l)| *l).collect();
        latencies.sort_by(f64::total_cmp);
        let note = (!errors.is_empty()).then(|| {
            errors.dedup();
            format!("{} of {} probes failed: {}", total - ok, total, errors.join(", "))
        });
        let pct = |p: f64| {
            let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len().max(1));
            latencies.get(rank - 1).copied()
        };
        let value = match statistic {
            Statistic::ErrorRate => Some((total - ok) / total),
            Statistic::SuccessRate => Some(ok / total),
            // No answer, no latency: the datapoint is missing.
            Statistic::LatencyP50Ms => pct(0.50),
            Statistic::LatencyP99Ms => pct(0.99),
            Statistic::Value | Statistic::ExitStatus => None,
        };
        Sample { value, note }
    }

    async fn prometheus(&self, url: &str, query: &str, timeout: Duration) -> Result<f64, SourceError> {
        let endpoint = format!("{}/api/v1/query", url.trim_end_matches('/'));
        let unreachable = |e: reqwest::Error| SourceError::Unreachable {
            endpoint: endpoint.clone(),
            cause: root_cause(&e),
        };
        let response = self
            .client
            .get(&endpoint)
            .query(&[("query", query)])
            .timeout(timeout)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let bytes = read_capped(response, PROMETHEUS_ANSWER_CAP)
            .await
            .map_err(|e| match e {
                Capped::TooLarge => SourceError::AnswerTooLarge {
                    endpoint: endpoint.clone(),
                    cap: PROMETHEUS_ANSWER_CAP,
                },
                Capped::Read(e) => unreachable(e),
            })?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| SourceError::NotPrometheus {
            endpoint: endpoint.clone(),
            status,
            cause: e.to_string(),
        })?;
        prometheus_value(&body)
    }
}

/// Why an HTTP answer was not read.
pub(crate) enum Capped {
    /// It is larger than the cap.
    TooLarge,
    /// The connection failed while it was read.
    Read(reqwest::Error),
}

/// An answer's body, read in chunks and refused as soon as it passes `cap` bytes (or says it
/// will), so that a probe never holds an endpoint's whole answer in memory.
pub(crate) async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, Capped> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(Capped::TooLarge);
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Capped::Read)? {
        if bytes.len() + chunk.len() > cap {
            return Err(Capped::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// One period's datapoint and what the probes had to say.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The datapoint; `None` is missing data.
    pub value: Option<f64>,
    /// Errors seen while sampling, e.g. "2 of 5 probes failed: Connection refused".
    pub note: Option<String>,
}

/// Why a source gave no datapoint for a period; the message is the datapoint's note.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The Prometheus endpoint did not answer.
    #[error("{endpoint}: {cause}")]
    Unreachable {
        /// The query URL.
        endpoint: String,
        /// The innermost error, e.g. "Connection refused".
        cause: String,
    },
    /// The endpoint answered with something other than Prometheus API JSON.
    #[error("{endpoint}: HTTP {status}, not a Prometheus answer: {cause}")]
    NotPrometheus {
        /// The query URL.
        endpoint: String,
        /// The HTTP status of the answer.
        status: u16,
        /// Why the body is not an API answer.
        cause: String,
    },
    /// The answer is larger than [`PROMETHEUS_ANSWER_CAP`]; it was not read further.
    #[error("{endpoint}: the answer is larger than {cap} bytes, the cap on a Prometheus answer; aggregate the query to one series, e.g. sum(...)")]
    AnswerTooLarge {
        /// The query URL.
        endpoint: String,
        /// The cap, bytes.
        cap: usize,
    },
    /// Prometheus rejected the query.
    #[error("the query failed: {error_type} {error}")]
    QueryFailed {
        /// Prometheus' `errorType`, e.g. `bad_data`.
        error_type: String,
        /// Prometheus' `error`.
        error: String,
    },
    /// The query matched no series.
    #[error("the query returned no series")]
    NoSeries,
    /// The query matched several series where one datapoint is needed.
    #[error("the query returned {0} series; aggregate it to one, e.g. sum(...)")]
    ManySeries(usize),
    /// The query returned a matrix or string.
    #[error("the query returned a {0} result; an instant vector or scalar is needed")]
    WrongResultType(String),
    /// The sample is not `[time, "value"]`.
    #[error("the sample has no value")]
    NoValue,
    /// The sample is NaN, which no threshold can compare.
    #[error("the query returned NaN")]
    NaN,
    /// The sample is not a number.
    #[error("`{0}` is not a number")]
    NotANumber(String),
    /// A command source with an empty `run`.
    #[error("no program to run")]
    NoProgram,
    /// The command outlived its timeout; it and every process of its group were killed.
    #[error("{program} did not finish within {within}; it and the processes it started were killed")]
    Timeout {
        program: String,
        /// The timeout, readable.
        within: String,
    },
    /// The command could not be started.
    #[error("cannot run {program}: {cause}")]
    Spawn {
        program: String,
        /// What the system said.
        cause: String,
    },
    /// The command printed more than [`COMMAND_OUTPUT_CAP`]; it and its group were killed.
    #[error("{program} printed more than {cap} bytes, the cap on a command's output; print one number")]
    OutputTooLarge {
        /// The program.
        program: String,
        /// The cap, bytes.
        cap: usize,
    },
    /// The command died of a signal, so it has no exit status.
    #[error("{0} was killed by a signal")]
    Signalled(String),
    /// The command's last line is not a number.
    #[error("{program} printed `{printed}`, not a number")]
    NotNumeric {
        program: String,
        /// Its last non-empty line.
        printed: String,
    },
}

/// The single value of a Prometheus instant-query answer (vector of one series, or scalar).
pub fn prometheus_value(body: &serde_json::Value) -> Result<f64, SourceError> {
    if body["status"] != "success" {
        return Err(SourceError::QueryFailed {
            error_type: body["errorType"].as_str().unwrap_or("error").to_string(),
            error: body["error"].as_str().unwrap_or("").to_string(),
        });
    }
    let data = &body["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => {
            let series = data["result"].as_array().map(Vec::as_slice).unwrap_or_default();
            match series {
                [one] => &one["value"],
                [] => return Err(SourceError::NoSeries),
                many => return Err(SourceError::ManySeries(many.len())),
            }
        }
        other => return Err(SourceError::WrongResultType(other.unwrap_or("malformed").to_string())),
    };
    let text = sample[1].as_str().ok_or(SourceError::NoValue)?;
    match text {
        "NaN" => Err(SourceError::NaN),
        _ => text
            .parse::<f64>()
            .map_err(|_| SourceError::NotANumber(text.to_string())),
    }
}

/// Runs a program (no shell) and takes its exit status or the number it prints. The program
/// leads a process group of its own, so that a timeout or too much output kills whatever it
/// started too, not only itself.
async fn command(run: &[String], timeout: Duration, statistic: Statistic) -> Result<f64, SourceError> {
    let (program, args) = run.split_first().ok_or(SourceError::NoProgram)?;
    // Only the exit status is wanted: what it prints is not read, so it cannot fill a pipe.
    let stdout = if statistic == Statistic::ExitStatus {
        std::process::Stdio::null()
    } else {
        std::process::Stdio::piped()
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SourceError::Spawn {
            program: program.clone(),
            cause: e.to_string(),
        })?;
    let group = child.id();
    let mut pipe = child.stdout.take();
    let finished = async {
        let mut out = Vec::new();
        if let Some(pipe) = pipe.as_mut() {
            pipe.take(COMMAND_OUTPUT_CAP as u64 + 1).read_to_end(&mut out).await?;
            if out.len() > COMMAND_OUTPUT_CAP {
                return Ok(None);
            }
        }
        child.wait().await.map(|status| Some((status, out)))
    };
    let ended = match tokio::time::timeout(timeout, finished).await {
        Ok(Ok(Some(done))) => Ok(done),
        Ok(Ok(None)) => Err(SourceError::OutputTooLarge {
            program: program.clone(),
            cap: COMMAND_OUTPUT_CAP,
        }),
        Ok(Err(e)) => Err(SourceError::Spawn {
            program: program.clone(),
            cause: e.to_string(),
        }),
        Err(_) => Err(SourceError::Timeout {
            program: program.clone(),
            within: crate::duration::human(timeout),
        }),
    };
    let (status, out) = match ended {
        Ok(done) => done,
        Err(e) => {
            // The leader is not reaped yet, so its id still names this group and no other.
            if let Some(pgid) = group {
                // SAFETY: a plain system call on the group this function created.
                unsafe { libc::killpg(pgid as libc::pid_t, libc::SIGKILL) };
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
            return Err(e);
        }
    };
    match statistic {
        Statistic::ExitStatus => status
            .code()
            .map(f64::from)
            .ok_or_else(|| SourceError::Signalled(program.clone())),
        _ => {
            let text = String::from_utf8_lossy(&out);
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            last.parse::<f64>().map_err(|_| SourceError::NotNumeric {
                program: program.clone(),
                printed: last.to_string(),
            })
        }
    }
}

/// The innermost error, which is the one a person can act on (e.g. "Connection refused").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_shapes_of_the_prometheus_api() {
        let vector = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"job": "lb"}, "value": [1_700_000_000.0, "0.25"]}]}});
        assert_eq!(prometheus_value(&vector), Ok(0.25));
        let scalar = json!({"status": "success", "data": {"resultType": "scalar", "result": [1_700_000_000.0, "3"]}});
        assert_eq!(prometheus_value(&scalar), Ok(3.0));
        let two = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [1.0, "1"]}, {"metric": {}, "value": [1.0, "2"]}]}});
        assert_eq!(prometheus_value(&two), Err(SourceError::ManySeries(2)));
        assert!(prometheus_value(&two).unwrap_err().to_string().contains("sum(...)"));
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(prometheus_value(&empty), Err(SourceError::NoSeries));
        let bad = json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
        assert_eq!(
            prometheus_value(&bad).unwrap_err().to_string(),
            "the query failed: bad_data parse error"
        );
    }

    #[tokio::test]
    async fn commands_give_their_status_or_their_number() {
        let status = command(
            &["sh".into(), "-c".into(), "exit 3".into()],
            Duration::from_secs(5),
            Statistic::ExitStatus,
        )
        .await;
        assert_eq!(status, Ok(3.0));
        let value = command(
            &["echo".into(), "42.5".into()],
            Duration::from_secs(5),
            Statistic::Value,
        )
        .await;
        assert_eq!(value, Ok(42.5));
        let slow = command(
            &["sleep".into(), "5".into()],
            Duration::from_millis(100),
            Statistic::ExitStatus,
        )
        .await;
        assert!(matches!(slow, Err(SourceError::Timeout { .. })), "{slow:?}");
    }

    /// A server that answers every request with `body`, chunked (no length to refuse it by).
    pub(crate) async fn answering(body: Vec<u8>) -> String {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut head = [0u8; 4096];
                    let _ = conn.read(&mut head).await;
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                        )
                        .await;
                    for piece in body.chunks(16 << 10) {
                        let _ = conn.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await;
                        let _ = conn.write_all(piece).await;
                        let _ = conn.write_all(b"\r\n").await;
                    }
                    let _ = conn.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn prometheus_probe(url: &str) -> Probe {
        Probe {
            source: MetricSource::Prometheus {
                url: url.into(),
                query: "up".into(),
                timeout: Duration::from_secs(10),
            },
            client: reqwest::Client::new(),
        }
    }

    #[tokio::test]
    async fn a_prometheus_answer_is_read_up_to_its_cap() {
        let small = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"7"]}}"#.to_vec();
        let url = answering(small).await;
        let t = Duration::from_secs(10);
        assert_eq!(prometheus_probe(&url).prometheus(&url, "up", t).await, Ok(7.0));

        // Valid JSON the whole way, so only the cap can refuse it.
        let mut huge = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"7"]},"pad":""#.to_vec();
        huge.extend(std::iter::repeat_n(b'x', 2 * PROMETHEUS_ANSWER_CAP));
        huge.extend(b"\"}");
        let url = answering(huge).await;
        let err = prometheus_probe(&url).prometheus(&url, "up", t).await.unwrap_err();
        assert!(matches!(err, SourceError::AnswerTooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("the cap on a Prometheus answer"), "{err}");
    }

    #[tokio::test]
    async fn a_command_that_prints_too_much_is_stopped_at_the_cap() {
        let started = Instant::now();
        let err = command(&["yes".into()], Duration::from_secs(20), Statistic::Value)
            .await
            .unwrap_err();
        assert!(matches!(err, SourceError::OutputTooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("the cap on a command's output"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "refused at the cap, not at the timeout"
        );
    }

    /// Whether `pid` is a live process (not gone, not a zombie).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|rest| !rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn a_timeout_kills_everything_the_command_started() {
        let dir = std::env::temp_dir().join(format!(
            "fl-probe-group-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("child");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let slow = command(
            &["sh".into(), "-c".into(), script],
            Duration::from_millis(500),
            Statistic::ExitStatus,
        )
        .await;
        assert!(matches!(slow, Err(SourceError::Timeout { .. })), "{slow:?}");
        let grandchild: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // SIGKILL is delivered before killpg returns; only the reaping by init may lag.
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(grandchild) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let survived = running(grandchild);
        if survived {
            // SAFETY: the test's own grandchild: it leaves nothing behind either way.
            unsafe { libc::kill(grandchild as i32, libc::SIGKILL) };
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!survived, "the command's child {grandchild} outlived the timeout");
    }
}
