//! Command-line definitions (clap).

use clap::{Parser, Subcommand, ValueEnum};
use faultline::logging::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the controller listens and how agents prove themselves.
#[derive(Debug, clap::Args)]
pub(crate) struct ControllerArgs {
    /// Address the controller listens on for agents (port 0 picks a free one).
    #[arg(long, default_value = "0.0.0.0:7700", env = "FAULTLINE_LISTEN")]
    pub listen: SocketAddr,
    /// File holding the token agents must present; created with a random token if missing.
    #[arg(long, value_name = "PATH", default_value = faultline::token::DEFAULT_PATH, env = "FAULTLINE_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Wait until this many agents are connected [default: the hosts the targets name; when a
    /// target selects by tags or zone, then until no new agent has connected for 2 s].
    #[arg(long, value_name = "N")]
    pub wait_agents: Option<usize>,
    /// Give up waiting for agents after this long (ISO 8601).
    #[arg(long, value_name = "DURATION", default_value = "PT10S", value_parser = faultline::duration::parse)]
    pub agents_timeout: Duration,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// An address agents dial that forwards to this controller (a NAT, a published container
    /// port), e.g. 203.0.113.7:7700 (repeat). Without it, an agent must reach the controller at
    /// the address it dialed: the handshake refuses relays.
    #[arg(long, value_name = "ADDR", env = "FAULTLINE_ADVERTISE", value_delimiter = ',')]
    pub advertise: Vec<SocketAddr>,
}

/// The controller's certificate for `wss://` agents.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TlsArgs {
    /// Certificate chain (PEM) agents see on wss:// [default: tls/controller.pem beside the
    /// token file, when `faultline topology up` made it].
    #[arg(long, value_name = "FILE", env = "FAULTLINE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", env = "FAULTLINE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS configuration: the files given, else those beside `token_file`, else none
    /// (agents then dial ws://, and the challenge-response still keeps the token off the wire).
    pub(crate) fn load(
        &self,
        token_file: &std::path::Path,
    ) -> anyhow::Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
        use faultline::tls;
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => {
                let beside = tls::Generated::in_dir(&tls::dir_beside(token_file));
                if !beside.exist() {
                    return Ok(None);
                }
                tracing::debug!(cert = %beside.cert.display(), "using the certificate beside the token file");
                (beside.cert, beside.key)
            }
        };
        Ok(Some(tls::server_config(&cert, &key)?))
    }
}

/// Chaos experiments from FIS-style templates, run by agents that always clean up.
#[derive(Debug, Parser)]
#[command(name = "faultline", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "FAULTLINE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of `validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ValidateFormat {
    /// One line per error.
    Human,
    /// A JSON array, one object per file.
    Json,
}

/// Output format of reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportFormat {
    /// Tables.
    Table,
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check templates against the schema and the semantic rules; exit 2 if any is invalid.
    Validate {
        /// Alarms file that stop conditions may name (same shape as a template's `alarms`).
        #[arg(long, value_name = "FILE")]
        alarms: Option<PathBuf>,
        /// Inventory the templates will run against: instance actions (stop, terminate,
        /// reboot) must not be able to select a host on no platform.
        #[arg(long, value_name = "FILE")]
        inventory: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ValidateFormat::Human)]
        format: ValidateFormat,
        /// Template files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Dry run: resolve targets against an inventory and show the action timeline.
    Plan {
        /// JSON array of host descriptions (see experiments/inventory.json).
        #[arg(long, value_name = "FILE")]
        inventory: PathBuf,
        /// Seed for random selection (COUNT, PERCENT); printed when not given.
        #[arg(long)]
        seed: Option<u64>,
        /// Alarms file that stop conditions may name.
        #[arg(long, value_name = "FILE")]
        alarms: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        /// Template file.
        #[arg(value_name = "TEMPLATE")]
        template: PathBuf,
    },
    /// Run an experiment: serve agents, resolve targets, run the actions, remove every fault.
    ///
    /// Exit status: 0 completed, 1 stopped by a stop condition, 2 invalid template or usage,
    /// 3 failed (no agents, empty target, an action failed), 130 interrupted.
    Run(RunArgs),
    /// Run a game day against the default topology as local processes: no Docker, no root.
    ///
    /// Starts six hosts in three AZs (each: demo-web behind its agent's proxy, on its own
    /// 127.0.x.y address), a load balancer, and an embedded controller; runs the showcase
    /// game day (experiments/gameday-az-outage.json) and prints its report.
    Demo {
        /// Template to run instead of the showcase; its HTTP alarms are pointed at the demo's
        /// load balancer.
        #[arg(long, value_name = "FILE")]
        template: Option<PathBuf>,
        /// Alarms the template's stop conditions name (by name or CloudWatch ARN); their HTTP
        /// alarms are pointed at the demo's load balancer too.
        #[arg(long, value_name = "FILE")]
        alarms: Option<PathBuf>,
        /// Port of the demo's load balancer on 127.0.0.1 [default: a free one].
        #[arg(long, value_name = "PORT")]
        lb_port: Option<u16>,
        /// Seed for random selection.
        #[arg(long)]
        seed: Option<u64>,
        /// Report format on stdout.
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        /// Also write the result as JUnit XML.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Fail an action whose fault did not do what was asked, as `run --strict`.
        #[arg(long)]
        strict: bool,
        /// Instead of one game day, keep the demo world up behind `faultline serve` (the same
        /// as `faultline serve --demo`): dashboard, API and schedules; the serve flags below
        /// apply.
        #[arg(long, conflicts_with_all = ["template", "alarms", "lb_port", "seed", "format", "junit", "strict"])]
        serve: bool,
        #[command(flatten, next_help_heading = "With --serve")]
        server: ServeArgs,
    },
    /// Print the experiment template JSON Schema, generated from the action catalog.
    Schema,
    /// The game-day report of a run, from its journal: self-contained HTML or Markdown.
    ///
    /// SOURCE is a journal file (`faultline run --journal`, or
    /// .faultline/journals/EXPERIMENT-ID.jsonl), or with --server an experiment id whose journal
    /// the server keeps. Exit status 2 when the journal cannot be read.
    Report(ReportArgs),
    /// The watchdog of a container stopped for a duration (started by the controller, see
    /// `faultline::platform::watch`): starts it at the deadline if the controller dies first.
    #[command(name = "hold-start", hide = true)]
    HoldStart {
        /// The container.
        #[arg(long)]
        container: String,
        /// When to start it, in milliseconds since the Unix epoch.
        #[arg(long)]
        until_unix_ms: u64,
    },
    /// Bring the multi-AZ container topology (agents/compose.yaml) up or down, or show it.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// List the agents that connect: host id, AZ, state, tags, address, capabilities,
    /// version; with the hosts their platform stopped or terminated (State.Name).
    Agents {
        #[command(flatten)]
        controller: ControllerArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        /// List the hosts of this server's fleet instead of serving agents here.
        #[arg(long, value_name = "URL", env = "FAULTLINE_SERVER")]
        server: Option<String>,
        /// With --server: file holding an API token.
        #[arg(
            long,
            value_name = "PATH",
            default_value = ".faultline/api-token",
            env = "FAULTLINE_API_TOKEN_FILE"
        )]
        api_token_file: PathBuf,
    },
    /// Serve a long-running controller: agents, an HTTP API, schedules, history, the safety lever.
    ///
    /// Stops on SIGTERM or Ctrl-C after stopping every running experiment (each removes its
    /// faults). See docs/api.md.
    Serve {
        #[command(flatten)]
        args: ServeArgs,
        /// Also keep the demo world up (six hosts in three AZs as local processes and a load
        /// balancer, as `faultline demo` starts them) with its agents connected, and store
        /// the showcase game day as the template `gameday-az-outage`.
        #[arg(long)]
        demo: bool,
    },
    /// Experiments on a server: list, show, stop.
    Experiments {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: ExperimentsAction,
    },
    /// Schedules on a server: list, add, pause, resume, remove.
    Schedules {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: SchedulesAction,
    },
    /// What happened on a server, newest first: experiments, missed and skipped fire times,
    /// lever changes.
    History {
        #[command(flatten)]
        client: ClientArgs,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The safety lever of a server: engage stops every running experiment and cancels new ones.
    Lever {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: LeverAction,
    },
}

/// Format of `faultline report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DocumentFormat {
    /// One self-contained HTML file (inline CSS and SVG charts).
    Html,
    /// Markdown, for a wiki.
    Md,
}

/// The flags of `faultline report`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// A journal file, or with --server an experiment id.
    #[arg(value_name = "JOURNAL_FILE|EXPERIMENT_ID")]
    pub source: String,
    /// Fetch the journal of experiment SOURCE from this server's API.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// With --server: file holding an API token (FAULTLINE_API_TOKEN wins over it).
    #[arg(
        long,
        value_name = "PATH",
        default_value = ".faultline/api-token",
        env = "FAULTLINE_API_TOKEN_FILE"
    )]
    pub api_token_file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DocumentFormat::Html)]
    pub format: DocumentFormat,
    /// Write the report to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// The flags of `faultline serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// TOML file of these settings (keys as the flags: listen, agents-listen, database,
    /// token-file, api-token-file, journals, drain, tls-cert, tls-key, allow-command-alarms,
    /// probe-allow and allow-plaintext-agents as arrays, max-connections,
    /// max-connections-per-address, header-timeout); flags and environment win over it.
    #[arg(long, value_name = "FILE", env = "FAULTLINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The one address of the server: agents' websocket (/v1/agents), HTTP API (/api/v1),
    /// /metrics, /healthz and the dashboard (/); port 0 picks a free one
    /// [default: 0.0.0.0:7800].
    #[arg(long, env = "FAULTLINE_SERVE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// An extra address for agents only (/v1/agents), besides --listen; none by default.
    #[arg(long, env = "FAULTLINE_AGENTS_LISTEN")]
    pub agents_listen: Option<SocketAddr>,
    /// Database: sqlite:FILE (created when missing) or postgres://USER@HOST/DB
    /// [default: sqlite:.faultline/faultline.db].
    #[arg(long, value_name = "URL", env = "FAULTLINE_DATABASE")]
    pub database: Option<String>,
    /// File holding the token agents must present; created with a random token if missing
    /// [default: .faultline/token].
    #[arg(long, value_name = "PATH", env = "FAULTLINE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// File of API tokens, one a line: `NAME ROLE TOKEN` with ROLE read, run or admin (`TOKEN`
    /// or `NAME TOKEN`: admin); created with one random token if missing
    /// [default: .faultline/api-token].
    #[arg(long, value_name = "PATH", env = "FAULTLINE_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Directory of running experiments' journals (the database keeps them once ended)
    /// [default: .faultline/journals].
    #[arg(long, value_name = "DIR")]
    pub journals: Option<PathBuf>,
    /// On shutdown, how long to wait for running experiments to remove their faults
    /// (ISO 8601) [default: PT60S].
    #[arg(long, value_name = "DURATION", value_parser = faultline::duration::parse)]
    pub drain: Option<Duration>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Let templates that arrive over the API use `command` alarm sources, which run a
    /// program on this server as its user; off by default: such templates are refused.
    #[arg(long)]
    pub allow_command_alarms: bool,
    /// What the server may fetch for a template's http and prometheus alarms and its
    /// userExperience: CIDRs, addresses, host names (as written, never resolved), `loopback`,
    /// `fleet` (the connected hosts' addresses), comma-separated; the list replaces the default
    /// [default: loopback,fleet].
    #[arg(long, value_name = "CIDR|HOST,...", value_delimiter = ',')]
    pub probe_allow: Vec<String>,
    /// With --tls-cert: agents of these networks may still dial plain ws:// (CIDRs,
    /// comma-separated; the flag alone: any address). Without it the port speaks TLS only.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',', num_args = 0..)]
    pub allow_plaintext_agents: Option<Vec<ipnet::IpNet>>,
    /// Connections the port holds at once; past it, the address holding the most gives up
    /// its oldest [default: 4096].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Connections the port holds at once from one address [default: 256].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_address: Option<u32>,
    /// Time a client has to send a request's headers before its connection is closed
    /// (ISO 8601) [default: PT10S].
    #[arg(long, value_name = "DURATION", value_parser = faultline::duration::parse)]
    pub header_timeout: Option<Duration>,
}

/// How a client reaches a server.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientArgs {
    /// The server's API.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        default_value = "http://127.0.0.1:7800",
        env = "FAULTLINE_SERVER"
    )]
    pub server: String,
    /// File holding an API token (its first token).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = ".faultline/api-token",
        env = "FAULTLINE_API_TOKEN_FILE"
    )]
    pub api_token_file: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

/// What to do with experiments on a server.
#[derive(Debug, Subcommand)]
pub(crate) enum ExperimentsAction {
    /// The latest experiments.
    List {
        /// Only those in this state (pending, running, completed, stopped, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One experiment with its report.
    Show { id: String },
    /// Stop a running experiment (every fault removed).
    Stop {
        id: String,
        /// Why, for the history.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// What to do with schedules on a server.
#[derive(Debug, Subcommand)]
pub(crate) enum SchedulesAction {
    /// Every schedule with its next runs.
    List,
    /// Add a schedule.
    Add {
        name: String,
        /// The stored template it runs.
        #[arg(long)]
        template: String,
        /// Cron expression (5 fields, or 6 with seconds first).
        #[arg(long)]
        cron: String,
        /// IANA time zone.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Allowed window, DAYS/HH:MM-HH:MM, e.g. Mon,Tue,Wed,Thu,Fri/09:00-17:00 (repeatable).
        #[arg(long = "window", value_name = "DAYS/START-END")]
        windows: Vec<String>,
        /// Minimum time between two runs (ISO 8601).
        #[arg(long, value_name = "DURATION")]
        min_interval: Option<String>,
        /// A local date on which nothing runs, YYYY-MM-DD (repeatable).
        #[arg(long = "blackout", value_name = "DATE")]
        blackouts: Vec<String>,
    },
    /// Pause a schedule: its fire times pass without runs.
    Pause { name: String },
    /// Resume a paused schedule.
    Resume { name: String },
    /// Remove a schedule (its runs stay in the history).
    Remove { name: String },
}

/// What to do with the lever.
#[derive(Debug, Subcommand)]
pub(crate) enum LeverAction {
    /// Stop every running experiment and cancel new ones until disengaged.
    Engage {
        /// Why, for the history.
        #[arg(long)]
        reason: String,
    },
    /// Let experiments start again.
    Disengage {
        /// Why, for the history.
        #[arg(long)]
        reason: String,
    },
    /// Whether it is engaged, and its history.
    Status,
}

/// Where the topology's files are.
#[derive(Debug, clap::Args)]
pub(crate) struct TopologyArgs {
    /// The faultline checkout holding agents/compose.yaml and the sources of the image.
    #[arg(long, value_name = "DIR", default_value = env!("CARGO_MANIFEST_DIR"))]
    pub source: PathBuf,
    /// Token file the agents mount (the one `faultline run` uses); created if missing.
    #[arg(long, value_name = "PATH", default_value = faultline::token::DEFAULT_PATH, env = "FAULTLINE_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Port of the load balancer on 127.0.0.1.
    #[arg(long, value_name = "PORT", default_value_t = 8080, env = "FAULTLINE_LB_PORT")]
    pub lb_port: u16,
}

/// What to do with the topology.
#[derive(Debug, Subcommand)]
pub(crate) enum TopologyAction {
    /// Build the image from this checkout and start everything; returns when every agent has
    /// connected and the load balancer finds every host healthy.
    Up {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Use the image built last time.
        #[arg(long)]
        no_build: bool,
        /// Give up waiting for readiness after this long (ISO 8601).
        #[arg(long, value_name = "DURATION", default_value = "PT2M", value_parser = faultline::duration::parse)]
        timeout: Duration,
    },
    /// Stop and remove the containers and networks (agents remove their faults first).
    Down {
        #[command(flatten)]
        topology: TopologyArgs,
    },
    /// Show the containers, the load balancer's health and the agents that connect.
    Status {
        #[command(flatten)]
        topology: TopologyArgs,
    },
}

/// The flags of `faultline run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// Alarms file that stop conditions may name.
    #[arg(long, value_name = "FILE")]
    pub alarms: Option<PathBuf>,
    /// Seed for random selection (COUNT, PERCENT); the report prints the one used.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Journal file (JSON Lines) [default: logConfiguration.journal.path, else
    /// .faultline/journals/EXPERIMENT-ID.jsonl].
    #[arg(long, value_name = "PATH")]
    pub journal: Option<PathBuf>,
    /// Report format on stdout.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Also write the result as JUnit XML (one test case per action and per alarm).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Resolve targets against the connected agents and print the plan; inject nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long an agent has to acknowledge a command (ISO 8601).
    #[arg(long, value_name = "DURATION", default_value = "PT10S", value_parser = faultline::duration::parse)]
    pub ack_timeout: Duration,
    /// Fail an action whose fault did not do what was asked (CPU share, bytes held, loss,
    /// processes stopped... beyond the tolerances of docs/wire.md), so the run ends
    /// `failed` (exit 3); without it such a fault is a warning in the report.
    #[arg(long, conflicts_with = "server")]
    pub strict: bool,
    /// Submit to this server instead of serving agents here; follows the run and exits
    /// with the same codes. TEMPLATE is then a file or a stored template's name.
    #[arg(long, value_name = "URL", env = "FAULTLINE_SERVER")]
    pub server: Option<String>,
    /// With --server: file holding an API token.
    #[arg(
        long,
        value_name = "PATH",
        default_value = ".faultline/api-token",
        env = "FAULTLINE_API_TOKEN_FILE"
    )]
    pub api_token_file: PathBuf,
    /// Template file.
    #[arg(value_name = "TEMPLATE")]
    pub template: PathBuf,
}
