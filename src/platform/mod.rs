//! The platforms that run hosts: what `aws:ec2:stop-instances`, `terminate-instances` and
//! `reboot-instances` act on, as FIS acts through the EC2 API rather than through an agent.
//!
//! A host declares its platform with the tag [`TAG`] (`faultline:platform=docker` on the
//! container topology, `local` in `faultline demo`), set by whoever starts it. A host
//! without the tag is a bare agent: no platform can stop it, and these actions are refused
//! for it before anything starts.

pub mod docker;
pub mod local;
pub mod state;
pub mod watch;

use faultline_agent::protocol::HostDescription;
use state::{InstanceState, Ledger};
use std::sync::Arc;
use std::time::Duration;

/// The tag that names a host's platform.
pub const TAG: &str = "faultline:platform";

/// How long the Auto Scaling stand-in waits after a termination before it launches the
/// replacement.
pub const REPLACEMENT_DELAY: Duration = Duration::from_secs(3);

/// The first wait before a failed start is tried again.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);

/// The longest wait between two tries of a start: once the platform is back, a host stays
/// stopped at most this long.
pub const RETRY_CAP: Duration = Duration::from_secs(10);

/// Capped exponential backoff with jitter: each wait is drawn between half and all of a
/// ceiling that doubles from [`RETRY_FIRST`] up to [`RETRY_CAP`], so that hosts (or a
/// controller and its watchdog) retrying at once spread out.
#[derive(Debug)]
pub(crate) struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff { ceiling: RETRY_FIRST }
    }

    /// The wait before the next try.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (ceiling * 2).min(RETRY_CAP);
        ceiling / 2 + (ceiling / 2).mul_f64(rand::random::<f64>())
    }
}

/// One failed try of [`Platforms::start_until_running`], for the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedStart {
    /// Which try failed, from 1.
    pub attempt: u32,
    /// What the platform said.
    pub error: PlatformError,
    /// How long until the next try.
    pub retry_in: Duration,
}

/// What the platform does to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Stop it (its programs end; it keeps its id and can be started again).
    Stop,
    /// Start a stopped one.
    Start,
    /// Restart it.
    Reboot,
    /// End it for good; a replacement with a new id comes up in the same AZ.
    Terminate,
}

/// Which platform a host is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A container of the topology, through the Docker Engine API.
    Docker,
    /// A process tree of `faultline demo`.
    Local,
}

impl Kind {
    /// The platform a host declares, `None` for a bare agent (or an unknown value).
    pub fn of(host: &HostDescription) -> Option<Kind> {
        match host.tags.get(TAG).map(String::as_str) {
            Some("docker") => Some(Kind::Docker),
            Some("local") => Some(Kind::Local),
            _ => None,
        }
    }

    /// Its name, as the tag writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Docker => "docker",
            Kind::Local => "local",
        }
    }
}

/// Why a platform could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// The host is on no platform.
    #[error(
        "{0} is on no platform (a bare agent): instance actions need a host of the container topology or of \
         `faultline demo` (tag {TAG}=docker|local)"
    )]
    NoPlatform(String),
    /// The host's platform is not reachable from this controller.
    #[error("{host} is on the {platform} platform, which this controller cannot reach: {why}")]
    Unreachable {
        host: String,
        platform: &'static str,
        why: String,
    },
    /// The host was terminated: nothing can act on it any more.
    #[error("{0} is terminated")]
    Terminated(String),
    /// The platform refused or failed.
    #[error("{host}: {operation:?} failed: {message}")]
    Failed {
        host: String,
        /// What was asked.
        operation: Operation,
        /// What the platform said.
        message: String,
    },
}

impl PlatformError {
    /// Whether trying again may succeed: the platform failed or could not be reached (Docker
    /// restarting, a socket hiccup); not when the host is terminated or on no platform this
    /// controller can ever reach.
    pub fn may_pass(&self) -> bool {
        match self {
            PlatformError::Failed { .. } => true,
            PlatformError::Unreachable { platform, .. } => *platform == Kind::Docker.as_str(),
            PlatformError::NoPlatform(_) | PlatformError::Terminated(_) => false,
        }
    }
}

/// What a termination left: the replacement's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The new host's id.
    pub host_id: String,
    /// Its AZ (the terminated host's).
    pub availability_zone: String,
}

/// The platforms this controller can act on.
#[derive(Clone, Default)]
pub struct Platforms {
    local: Option<local::Local>,
    /// Connected once it worked: a failed connection is tried again on the next call.
    docker: Arc<tokio::sync::OnceCell<docker::Docker>>,
    /// Every host acted on, so that one stopped or terminated is still known.
    ledger: Ledger,
}

impl std::fmt::Debug for Platforms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platforms")
            .field("local", &self.local.is_some())
            .finish()
    }
}

impl Platforms {
    /// With the demo's own process world.
    pub fn with_local(local: local::Local) -> Self {
        Platforms {
            local: Some(local),
            ..Default::default()
        }
    }

    /// Checks that `host` is on a platform this controller reaches, before anything starts.
    pub async fn check(&self, host: &HostDescription) -> Result<(), PlatformError> {
        self.platform(host).await.map(|_| ())
    }

    async fn platform(&self, host: &HostDescription) -> Result<Platform<'_>, PlatformError> {
        match Kind::of(host) {
            None => Err(PlatformError::NoPlatform(host.host_id.clone())),
            Some(Kind::Local) => match &self.local {
                Some(l) if l.knows(&host.host_id) => Ok(Platform::Local(l)),
                _ => Err(PlatformError::Unreachable {
                    host: host.host_id.clone(),
                    platform: "local",
                    why: "only the `faultline demo` that started it can".into(),
                }),
            },
            Some(Kind::Docker) => match self.docker().await {
                Ok(d) => Ok(Platform::Docker(d)),
                Err(why) => Err(PlatformError::Unreachable {
                    host: host.host_id.clone(),
                    platform: "docker",
                    why,
                }),
            },
        }
    }

    async fn docker(&self) -> Result<&docker::Docker, String> {
        self.docker
            .get_or_try_init(|| async { docker::Docker::connect().await.map_err(|e| e.to_string()) })
            .await
    }

    /// Does `operation` to `host`; for a termination, waits for the replacement to be
    /// launched and returns it.
    pub async fn act(
        &self,
        host: &HostDescription,
        operation: Operation,
    ) -> Result<Option<Replacement>, PlatformError> {
        let platform = self.platform(host).await?;
        let during = match operation {
            Operation::Stop => Some(InstanceState::Stopping),
            Operation::Start => Some(InstanceState::Pending),
            Operation::Terminate => Some(InstanceState::ShuttingDown),
            Operation::Reboot => None,
        };
        self.ledger.begin(host, during);
        let result = match platform {
            Platform::Local(l) => l.act(host, operation).await,
            Platform::Docker(d) => d.act(host, operation).await,
        };
        let gone = matches!(
            (&result, operation),
            (Ok(_), Operation::Terminate) | (Err(PlatformError::Terminated(_)), _)
        );
        self.ledger.end(&host.host_id, gone);
        result
    }

    /// Starts `host` and tries again, with [`Backoff`], until it runs: a Docker hiccup at the
    /// end of a stop must not leave a host stopped for good. Each failed try is handed to
    /// `report` (the engine journals it). Ends with the host running, or with the error that
    /// no retry can mend: the host was terminated, or this controller can never reach its
    /// platform (a `local` host of another demo, a bare agent).
    pub async fn start_until_running(
        &self,
        host: &HostDescription,
        mut report: impl FnMut(&FailedStart),
    ) -> Result<(), PlatformError> {
        let mut backoff = Backoff::new();
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            let error = match self.act(host, Operation::Start).await {
                Ok(_) => return Ok(()),
                Err(e) if !e.may_pass() => return Err(e),
                Err(e) => e,
            };
            let retry_in = backoff.next_wait();
            report(&FailedStart {
                attempt,
                error,
                retry_in,
            });
            tokio::time::sleep(retry_in).await;
        }
    }

    /// Stops `host` until `until` (the action starts it then): as [`Platforms::act`] with
    /// [`Operation::Stop`], and on docker with a watchdog that starts the container at
    /// `until` should this controller die meanwhile, or shortly after it should this
    /// controller live without having started it (the local platform's hosts die with it).
    pub async fn stop_until(&self, host: &HostDescription, until: std::time::SystemTime) -> Result<(), PlatformError> {
        let platform = self.platform(host).await?;
        self.ledger.begin(host, Some(InstanceState::Stopping));
        let result = match platform {
            Platform::Local(l) => l.act(host, Operation::Stop).await.map(|_| ()),
            Platform::Docker(d) => d.stop_until(host, until).await,
        };
        self.ledger
            .end(&host.host_id, matches!(result, Err(PlatformError::Terminated(_))));
        result
    }

    /// The hosts these platforms know that `connected` may lack, each with its state: every
    /// host they acted on, and, when the fleet is the container topology (a connected host
    /// is on docker), every container of it that is not running. A platform that cannot be
    /// asked says nothing (its hosts are then known from their agents only).
    pub async fn known(&self, connected: &[HostDescription]) -> Vec<(HostDescription, InstanceState)> {
        let mut known = Vec::new();
        for (host, state) in self.ledger.entries() {
            let state = match state {
                Some(s) => Some(s),
                None => match self.platform(&host).await {
                    Ok(Platform::Local(l)) => l.state(&host.host_id),
                    Ok(Platform::Docker(d)) => d.state(&host.host_id).await.ok(),
                    Err(_) => None,
                },
            };
            known.extend(state.map(|s| (host, s)));
        }
        if connected.iter().any(|h| Kind::of(h) == Some(Kind::Docker)) {
            if let Ok(d) = self.docker().await {
                match d.idle_hosts().await {
                    Ok(idle) => {
                        let acted: std::collections::BTreeSet<String> =
                            known.iter().map(|(h, _)| h.host_id.clone()).collect();
                        known.extend(idle.into_iter().filter(|(h, _)| !acted.contains(&h.host_id)));
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot list the topology's containers"),
                }
            }
        }
        known
    }

    /// The hosts as filters and `faultline agents` see them: `connected`, and those the
    /// platforms know to be stopped, stopping, pending, shutting down or terminated.
    pub async fn hosts(&self, connected: Vec<HostDescription>) -> Vec<HostDescription> {
        let known = self.known(&connected).await;
        state::merge(connected, known)
    }
}

enum Platform<'a> {
    Local(&'a local::Local),
    Docker(&'a docker::Docker),
}

/// The id of the host that replaces `old`: its name with a number above every number of the
/// same stem in use, as an Auto Scaling group names by launch (`web-a1` → `web-a3` while
/// `web-a2` runs), so that a terminated id never comes back.
pub fn replacement_id<'a>(old: &'a str, in_use: impl IntoIterator<Item = &'a str>) -> String {
    let stem = old.trim_end_matches(|c: char| c.is_ascii_digit());
    let number = |id: &str| id.strip_prefix(stem).and_then(|n| n.parse::<u64>().ok());
    let top = in_use
        .into_iter()
        .chain(std::iter::once(old))
        .filter_map(number)
        .max()
        .unwrap_or(0);
    format!("{stem}{}", top + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, platform: Option<&str>) -> HostDescription {
        let mut h: HostDescription = serde_json::from_value(serde_json::json!({
            "HostId": id, "Placement": { "AvailabilityZone": "az-a" }
        }))
        .unwrap();
        if let Some(p) = platform {
            h.tags.insert(TAG.into(), p.into());
        }
        h
    }

    /// Ends the world's process trees however the test ends.
    struct World(local::Local);

    impl Drop for World {
        fn drop(&mut self) {
            self.0.shutdown();
        }
    }

    /// A local world of one host whose process tree is a real process; the next `failures`
    /// launches fail, as a fork would under a full process table.
    fn flaky_world(failures: &Arc<std::sync::atomic::AtomicU32>) -> (Platforms, World, HostDescription) {
        use std::sync::atomic::Ordering;
        let failures = failures.clone();
        let spawn: Arc<local::Spawner> = Arc::new(move |_| {
            if failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(std::io::Error::other("cannot fork"));
            }
            std::process::Command::new("sleep").arg("600").spawn()
        });
        let h = host("web-a1", Some("local"));
        let world = local::Local::start(std::slice::from_ref(&h), spawn).unwrap();
        (Platforms::with_local(world.clone()), World(world), h)
    }

    #[tokio::test]
    async fn a_start_is_tried_again_with_backoff_until_the_host_runs() {
        let failures = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (platforms, world, h) = flaky_world(&failures);
        platforms.act(&h, Operation::Stop).await.unwrap();
        assert_eq!(world.0.state("web-a1"), Some(InstanceState::Stopped));
        // The backoff's waits pass at once on a paused clock.
        tokio::time::pause();
        failures.store(6, std::sync::atomic::Ordering::SeqCst);
        let mut reports = Vec::new();
        platforms
            .start_until_running(&h, |f| reports.push(f.clone()))
            .await
            .unwrap();
        assert_eq!(world.0.state("web-a1"), Some(InstanceState::Running));
        assert_eq!(
            reports.iter().map(|f| f.attempt).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        assert!(reports.iter().all(|f| matches!(
            &f.error,
            PlatformError::Failed { operation: Operation::Start, message, .. } if message == "cannot fork"
        )));
        assert!(reports[5].retry_in > reports[0].retry_in);
    }

    #[tokio::test]
    async fn a_start_ends_at_once_for_a_terminated_host_or_one_on_no_platform() {
        let failures = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (platforms, _world, h) = flaky_world(&failures);
        platforms.act(&h, Operation::Stop).await.unwrap();
        tokio::time::pause();
        platforms.act(&h, Operation::Terminate).await.unwrap();
        let mut reports = 0;
        let started = platforms.start_until_running(&h, |_| reports += 1).await;
        assert_eq!(started, Err(PlatformError::Terminated("web-a1".into())));
        let bare = platforms.start_until_running(&host("db", None), |_| reports += 1).await;
        assert_eq!(bare, Err(PlatformError::NoPlatform("db".into())));
        assert_eq!(reports, 0);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_with_jitter_below_each_ceiling() {
        let mut backoff = Backoff::new();
        let mut ceiling = RETRY_FIRST;
        for _ in 0..12 {
            let wait = backoff.next_wait();
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{wait:?} outside {ceiling:?}");
            ceiling = (ceiling * 2).min(RETRY_CAP);
        }
        assert_eq!(ceiling, RETRY_CAP);
    }

    #[test]
    fn a_replacement_never_reuses_a_number_of_its_stem() {
        assert_eq!(replacement_id("web-a1", ["web-a2", "web-b1"]), "web-a3");
        assert_eq!(replacement_id("web-a3", ["web-a2"]), "web-a4");
        assert_eq!(replacement_id("web-a2", ["web-a4"]), "web-a5");
        assert_eq!(replacement_id("db", []), "db1");
    }

    #[test]
    fn the_platform_is_the_hosts_tag() {
        let mut h = host("web-a1", None);
        assert_eq!(Kind::of(&h), None);
        h.tags.insert(TAG.into(), "docker".into());
        assert_eq!(Kind::of(&h), Some(Kind::Docker));
        h.tags.insert(TAG.into(), "vmware".into());
        assert_eq!(Kind::of(&h), None);
    }
}
