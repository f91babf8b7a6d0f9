//! What the operator verbs print: plain serde structs mapped by hand from the
//! proto answers (prost types do not derive serde), each rendered either as
//! one JSON document (`--output json`, snake_case as in the protos) or as
//! aligned text for people.

use std::collections::BTreeMap;
use std::io::Write as _;

use serde::{Deserialize, Serialize};

use super::Output;
use super::error::CliError;
use super::parse::{
    cause_name, device_status_name, duration_text, reason_name, timestamp, weekday_name,
};
use super::table::{Table, fields};
use crate::edge::grpc::pb;

/// The human rendering of a view.
pub trait Human {
    fn human(&self) -> String;
}

/// Prints `v` on stdout in the chosen format.
pub fn emit<V: Serialize + Human>(output: Output, v: &V) -> Result<(), CliError> {
    let text = match output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(v).map_err(|e| CliError::Stdout {
                source: std::io::Error::other(e),
            })?;
            s.push('\n');
            s
        }
        Output::Table => v.human(),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| CliError::Stdout { source })
}

/// A line of text for people; `{"message": ...}` plus `extra` for scripts.
#[derive(Debug, Serialize)]
pub struct Done<T: Serialize> {
    #[serde(skip)]
    pub message: String,
    #[serde(flatten)]
    pub data: T,
}

impl<T: Serialize> Human for Done<T> {
    fn human(&self) -> String {
        format!("{}\n", self.message)
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn yes_no(b: bool) -> String {
    if b { "yes".into() } else { "no".into() }
}

fn env_line(env: &BTreeMap<String, String>) -> String {
    env.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------------- fleets

#[derive(Debug, Serialize)]
pub struct FleetView {
    pub id: String,
    pub name: String,
    pub created_unix_ms: i64,
}

impl From<pb::Fleet> for FleetView {
    fn from(f: pb::Fleet) -> Self {
        FleetView {
            id: f.id,
            name: f.name,
            created_unix_ms: f.created_unix_ms,
        }
    }
}

impl Human for FleetView {
    fn human(&self) -> String {
        fields(&[
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("created", timestamp(self.created_unix_ms)),
        ])
    }
}

#[derive(Debug, Serialize)]
pub struct FleetList {
    pub fleets: Vec<FleetView>,
}

impl Human for FleetList {
    fn human(&self) -> String {
        let mut t = Table::new(&["ID", "NAME", "CREATED"]);
        for f in &self.fleets {
            t.row(vec![
                f.id.clone(),
                f.name.clone(),
                timestamp(f.created_unix_ms),
            ]);
        }
        t.render()
    }
}

// ----------------------------------------------------------- block versions

/// A `BlockVersion` in the proto JSON shape (snake_case; lowerCamelCase is
/// accepted too, as protobuf's JSON mapping allows). Read by
/// `block add-version --from-json`, printed by `block versions` and
/// `release get`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockVersionJson {
    #[serde(default)]
    pub block: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, alias = "imageDigest")]
    pub image_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<BlockConfigJson>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, alias = "dependsOn")]
    pub depends_on: Vec<DependencyJson>,
    #[serde(
        default,
        alias = "updateStrategy",
        skip_serializing_if = "Option::is_none"
    )]
    pub update_strategy: Option<UpdateStrategyJson>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfigJson {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default, alias = "workingDir", skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependencyJson {
    pub block: String,
    #[serde(default)]
    pub restart: bool,
}

/// The `strategy` oneof: exactly one field set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateStrategyJson {
    #[serde(
        default,
        alias = "downloadThenKill",
        skip_serializing_if = "Option::is_none"
    )]
    pub download_then_kill: Option<EmptyJson>,
    #[serde(
        default,
        alias = "killThenDownload",
        skip_serializing_if = "Option::is_none"
    )]
    pub kill_then_download: Option<EmptyJson>,
    #[serde(default, alias = "handOver", skip_serializing_if = "Option::is_none")]
    pub hand_over: Option<HandOverJson>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyJson {}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandOverJson {
    #[serde(default, alias = "timeoutSeconds")]
    pub timeout_seconds: u32,
}

impl BlockVersionJson {
    /// Parses a file's text: a `BlockVersion`, or a `CreateBlockVersion`
    /// request (`{"block_version": {...}}`) as the README's grpcurl lines
    /// send it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let value = match value {
            serde_json::Value::Object(mut m)
                if m.len() == 1
                    && (m.contains_key("block_version") || m.contains_key("blockVersion")) =>
            {
                m.remove("block_version")
                    .or_else(|| m.remove("blockVersion"))
                    .unwrap_or_default()
            }
            v => v,
        };
        // serde would also read a struct from an array, by position.
        if !value.is_object() {
            return Err("expected a JSON object holding a BlockVersion".into());
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// The wire message; refuses an `update_strategy` with several choices.
    pub fn into_pb(self) -> Result<pb::BlockVersion, String> {
        use pb::update_strategy::{DownloadThenKill, HandOver, KillThenDownload, Strategy};
        let update_strategy = match self.update_strategy {
            None => None,
            Some(s) => {
                let mut set = Vec::new();
                if s.download_then_kill.is_some() {
                    set.push(Strategy::DownloadThenKill(DownloadThenKill {}));
                }
                if s.kill_then_download.is_some() {
                    set.push(Strategy::KillThenDownload(KillThenDownload {}));
                }
                if let Some(h) = s.hand_over {
                    set.push(Strategy::HandOver(HandOver {
                        timeout_seconds: h.timeout_seconds,
                    }));
                }
                if set.len() > 1 {
                    return Err(
                        "update_strategy: set one of download_then_kill, kill_then_download, hand_over"
                            .into(),
                    );
                }
                Some(pb::UpdateStrategy {
                    strategy: set.pop(),
                })
            }
        };
        Ok(pb::BlockVersion {
            block: self.block,
            version: self.version,
            image_digest: self.image_digest,
            config: self.config.map(|c| pb::BlockConfig {
                entrypoint: c.entrypoint,
                command: c.command,
                working_dir: c.working_dir,
                labels: c.labels,
            }),
            env: self.env,
            depends_on: self
                .depends_on
                .into_iter()
                .map(|d| pb::Dependency {
                    block: d.block,
                    restart: d.restart,
                })
                .collect(),
            update_strategy,
        })
    }

    fn strategy_text(&self) -> String {
        match &self.update_strategy {
            Some(UpdateStrategyJson {
                hand_over: Some(h), ..
            }) => format!("hand_over {}s", h.timeout_seconds),
            Some(UpdateStrategyJson {
                kill_then_download: Some(_),
                ..
            }) => "kill_then_download".into(),
            _ => "download_then_kill".into(),
        }
    }

    fn depends_text(&self) -> String {
        self.depends_on
            .iter()
            .map(|d| {
                if d.restart {
                    format!("{} (restart)", d.block)
                } else {
                    d.block.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn command_text(&self) -> String {
        self.config
            .as_ref()
            .map(|c| {
                c.entrypoint
                    .iter()
                    .chain(&c.command)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    }
}

/// `sha256:` and the first 12 hex digits, enough to tell images apart.
fn short_digest(d: &str) -> String {
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => format!("sha256:{}", &hex[..12]),
        _ => d.to_owned(),
    }
}

impl From<pb::BlockVersion> for BlockVersionJson {
    fn from(b: pb::BlockVersion) -> Self {
        use pb::update_strategy::Strategy;
        BlockVersionJson {
            block: b.block,
            version: b.version,
            image_digest: b.image_digest,
            config: b.config.map(|c| BlockConfigJson {
                entrypoint: c.entrypoint,
                command: c.command,
                working_dir: c.working_dir,
                labels: c.labels,
            }),
            env: b.env,
            depends_on: b
                .depends_on
                .into_iter()
                .map(|d| DependencyJson {
                    block: d.block,
                    restart: d.restart,
                })
                .collect(),
            update_strategy: b.update_strategy.and_then(|s| s.strategy).map(|s| match s {
                Strategy::DownloadThenKill(_) => UpdateStrategyJson {
                    download_then_kill: Some(EmptyJson {}),
                    ..Default::default()
                },
                Strategy::KillThenDownload(_) => UpdateStrategyJson {
                    kill_then_download: Some(EmptyJson {}),
                    ..Default::default()
                },
                Strategy::HandOver(h) => UpdateStrategyJson {
                    hand_over: Some(HandOverJson {
                        timeout_seconds: h.timeout_seconds,
                    }),
                    ..Default::default()
                },
            }),
        }
    }
}

impl Human for BlockVersionJson {
    fn human(&self) -> String {
        fields(&[
            ("block", self.block.clone()),
            ("version", self.version.clone()),
            ("image", self.image_digest.clone()),
            ("command", self.command_text()),
            ("env", env_line(&self.env)),
            ("depends on", self.depends_text()),
            ("strategy", self.strategy_text()),
        ])
    }
}

#[derive(Debug, Serialize)]
pub struct BlockVersionList {
    pub block_versions: Vec<BlockVersionJson>,
}

impl Human for BlockVersionList {
    fn human(&self) -> String {
        let mut t = Table::new(&[
            "VERSION",
            "IMAGE",
            "COMMAND",
            "DEPENDS ON",
            "STRATEGY",
            "ENV",
        ]);
        for b in &self.block_versions {
            t.row(vec![
                b.version.clone(),
                short_digest(&b.image_digest),
                b.command_text(),
                b.depends_text(),
                b.strategy_text(),
                env_line(&b.env),
            ]);
        }
        t.render()
    }
}

// ----------------------------------------------------------------- releases

#[derive(Debug, Serialize)]
pub struct ReleaseView {
    pub id: String,
    pub fleet: String,
    pub env: BTreeMap<String, String>,
    pub blocks: Vec<BlockVersionJson>,
}

impl From<pb::Release> for ReleaseView {
    fn from(r: pb::Release) -> Self {
        ReleaseView {
            id: r.id,
            fleet: r.fleet,
            env: r.env,
            blocks: r.blocks.into_iter().map(Into::into).collect(),
        }
    }
}

impl Human for ReleaseView {
    fn human(&self) -> String {
        let mut out = fields(&[
            ("release", self.id.clone()),
            ("fleet", self.fleet.clone()),
            ("env", env_line(&self.env)),
        ]);
        out.push('\n');
        let mut t = Table::new(&["BLOCK", "VERSION", "IMAGE", "DEPENDS ON", "STRATEGY"]);
        for b in &self.blocks {
            t.row(vec![
                b.block.clone(),
                b.version.clone(),
                short_digest(&b.image_digest),
                b.depends_text(),
                b.strategy_text(),
            ]);
        }
        out.push_str(&t.render());
        out
    }
}

#[derive(Debug, Serialize)]
pub struct ReleaseSummaryView {
    pub id: String,
    pub fleet: String,
    pub block_count: u32,
    pub created_unix_ms: i64,
}

impl From<pb::ReleaseSummary> for ReleaseSummaryView {
    fn from(r: pb::ReleaseSummary) -> Self {
        ReleaseSummaryView {
            id: r.id,
            fleet: r.fleet,
            block_count: r.block_count,
            created_unix_ms: r.created_unix_ms,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ReleaseList {
    pub releases: Vec<ReleaseSummaryView>,
}

impl Human for ReleaseList {
    fn human(&self) -> String {
        let mut t = Table::new(&["ID", "FLEET", "BLOCKS", "CREATED"]);
        for r in &self.releases {
            t.row(vec![
                r.id.clone(),
                r.fleet.clone(),
                r.block_count.to_string(),
                timestamp(r.created_unix_ms),
            ]);
        }
        t.render()
    }
}

/// How one block is disturbed (release diffs, operations waiting on locks).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DisturbanceView {
    pub block: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub because_of: Option<String>,
    pub handover: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

impl From<pb::Disturbance> for DisturbanceView {
    fn from(d: pb::Disturbance) -> Self {
        let (reason, cause) = (d.reason(), d.cause());
        DisturbanceView {
            block: d.block,
            reason: reason_name(reason),
            because_of: (!d.because_of.is_empty()).then_some(d.because_of),
            handover: d.handover,
            cause: (cause != pb::RestartCause::Unspecified).then(|| cause_name(cause)),
        }
    }
}

impl DisturbanceView {
    /// `a (reboot)`, `ui (dependency_restart because of telemetry)`.
    fn short(&self) -> String {
        let mut s = format!("{} ({}", self.block, self.reason);
        if let Some(b) = &self.because_of {
            s.push_str(&format!(" because of {b}"));
        }
        if self.handover {
            s.push_str(", handover");
        }
        s.push(')');
        s
    }
}

#[derive(Debug, Serialize)]
pub struct BlockDiffView {
    pub block: String,
    pub from_version: String,
    pub to_version: String,
    /// unchanged, restart, start or stop.
    pub change: String,
    /// For a restart: image, config or env.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Unset: untouched by moving between the releases.
    pub disturbance: Option<DisturbanceView>,
}

impl From<pb::BlockDiff> for BlockDiffView {
    fn from(d: pb::BlockDiff) -> Self {
        use pb::block_delta::Change;
        let (change, cause) = match d.delta.and_then(|x| x.change) {
            Some(Change::Unchanged(_)) => ("unchanged", None),
            Some(Change::Restart(r)) => ("restart", Some(cause_name(r.cause()))),
            Some(Change::Start(_)) => ("start", None),
            Some(Change::Stop(_)) => ("stop", None),
            None => ("unknown", None),
        };
        BlockDiffView {
            block: d.block,
            from_version: d.from_version,
            to_version: d.to_version,
            change: change.into(),
            cause,
            disturbance: d.disturbance.map(Into::into),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DiffView {
    pub from: String,
    pub to: String,
    pub blocks: Vec<BlockDiffView>,
}

impl Human for DiffView {
    fn human(&self) -> String {
        let mut t = Table::new(&[
            "BLOCK",
            "FROM",
            "TO",
            "CHANGE",
            "DISTURBANCE",
            "BECAUSE OF",
            "HANDOVER",
        ]);
        for b in &self.blocks {
            let change = match &b.cause {
                Some(c) => format!("{}: {c}", b.change),
                None => b.change.clone(),
            };
            let (reason, because, handover) = match &b.disturbance {
                Some(d) => (
                    d.reason.clone(),
                    d.because_of.clone().unwrap_or_default(),
                    yes_no(d.handover),
                ),
                None => ("none".into(), String::new(), String::new()),
            };
            t.row(vec![
                b.block.clone(),
                b.from_version.clone(),
                b.to_version.clone(),
                change,
                reason,
                because,
                handover,
            ]);
        }
        t.render()
    }
}

// ------------------------------------------------------------------ devices

#[derive(Debug, Serialize)]
pub struct DeviceView {
    pub id: String,
    pub fleet: String,
    pub tags: Vec<String>,
    pub status: String,
    pub credential_revoked: bool,
    pub created_unix_ms: i64,
}

impl From<pb::Device> for DeviceView {
    fn from(d: pb::Device) -> Self {
        DeviceView {
            status: device_status_name(d.status()),
            id: d.id,
            fleet: d.fleet,
            tags: d.tags,
            credential_revoked: d.credential_revoked,
            created_unix_ms: d.created_unix_ms,
        }
    }
}

impl DeviceView {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("device", self.id.clone()),
            ("fleet", self.fleet.clone()),
            ("tags", self.tags.join(", ")),
            ("status", self.status.clone()),
            ("credential revoked", yes_no(self.credential_revoked)),
            ("created", timestamp(self.created_unix_ms)),
        ]
    }
}

impl Human for DeviceView {
    fn human(&self) -> String {
        fields(&self.pairs())
    }
}

#[derive(Debug, Serialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

impl Human for DeviceList {
    fn human(&self) -> String {
        let mut t = Table::new(&["ID", "FLEET", "STATUS", "TAGS", "CREATED"]);
        for d in &self.devices {
            t.row(vec![
                d.id.clone(),
                d.fleet.clone(),
                d.status.clone(),
                d.tags.join(","),
                timestamp(d.created_unix_ms),
            ]);
        }
        t.render()
    }
}

/// A registered device and where its credential went.
#[derive(Debug, Serialize)]
pub struct RegisteredView {
    pub device: DeviceView,
    /// Shown once, unless written to `credential_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_file: Option<String>,
}

impl Human for RegisteredView {
    fn human(&self) -> String {
        let mut pairs = self.device.pairs();
        if let Some(c) = &self.credential {
            pairs.push(("credential", c.clone()));
        }
        if let Some(f) = &self.credential_file {
            pairs.push(("credential file", f.clone()));
        }
        let mut out = fields(&pairs);
        if self.credential.is_some() {
            out.push_str("The credential is shown only this once: store it on the device now.\n");
        }
        out
    }
}

#[derive(Debug, Serialize)]
pub struct ReportedBlockView {
    pub block: String,
    pub version: String,
    pub env_fingerprint: String,
}

#[derive(Debug, Serialize)]
pub struct LockView {
    pub block: String,
    pub held: bool,
    pub generation: u64,
    pub since_unix_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct DeviceStateView {
    pub device: Option<DeviceView>,
    pub reported: bool,
    pub agent_version: String,
    pub current_release: String,
    pub os_version: String,
    pub last_intent_seq: u64,
    pub reported_unix_ms: i64,
    pub blocks: Vec<ReportedBlockView>,
    pub locks: Vec<LockView>,
}

impl From<pb::GetDeviceStateResponse> for DeviceStateView {
    fn from(s: pb::GetDeviceStateResponse) -> Self {
        DeviceStateView {
            device: s.device.map(Into::into),
            reported: s.reported,
            agent_version: s.agent_version,
            current_release: s.current_release,
            os_version: s.os_version,
            last_intent_seq: s.last_intent_seq,
            reported_unix_ms: s.reported_unix_ms,
            blocks: s
                .blocks
                .into_iter()
                .map(|b| ReportedBlockView {
                    block: b.block,
                    version: b.version,
                    env_fingerprint: b.env_fingerprint,
                })
                .collect(),
            locks: s
                .locks
                .into_iter()
                .map(|l| LockView {
                    block: l.block,
                    held: l.held,
                    generation: l.generation,
                    since_unix_ms: l.since_unix_ms,
                })
                .collect(),
        }
    }
}

impl Human for DeviceStateView {
    fn human(&self) -> String {
        let mut pairs = Vec::new();
        if let Some(d) = &self.device {
            pairs.push(("device", d.id.clone()));
            pairs.push(("fleet", d.fleet.clone()));
            pairs.push(("status", d.status.clone()));
        }
        pairs.push(("reported", yes_no(self.reported)));
        if self.reported {
            pairs.push(("reported at", timestamp(self.reported_unix_ms)));
            pairs.push(("release", or_dash(&self.current_release)));
            pairs.push(("os", or_dash(&self.os_version)));
            pairs.push(("agent", or_dash(&self.agent_version)));
            pairs.push(("last intent", self.last_intent_seq.to_string()));
        }
        let mut out = fields(&pairs);
        out.push('\n');
        // One row per block that runs or has a lock.
        let mut names: Vec<&str> = self
            .blocks
            .iter()
            .map(|b| b.block.as_str())
            .chain(self.locks.iter().map(|l| l.block.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut t = Table::new(&["BLOCK", "VERSION", "LOCK", "GENERATION", "SINCE"]);
        for name in names {
            let block = self.blocks.iter().find(|b| b.block == name);
            let lock = self.locks.iter().find(|l| l.block == name);
            t.row(vec![
                name.to_owned(),
                block.map(|b| b.version.clone()).unwrap_or_default(),
                lock.map(|l| if l.held { "held" } else { "free" }.to_owned())
                    .unwrap_or_default(),
                lock.map(|l| l.generation.to_string()).unwrap_or_default(),
                lock.map(|l| timestamp(l.since_unix_ms)).unwrap_or_default(),
            ]);
        }
        out.push_str(&t.render());
        out
    }
}

// ---------------------------------------------------------------------- env

/// Whose env: `{"fleet": "inverters"}` or `{"device": "inv-0042"}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerView {
    Fleet(String),
    Device(String),
}

impl std::fmt::Display for OwnerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OwnerView::Fleet(x) => write!(f, "fleet {x}"),
            OwnerView::Device(x) => write!(f, "device {x}"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct EnvVarView {
    pub name: String,
    pub value: String,
    /// Empty: every block.
    pub blocks: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct EnvList {
    pub owner: OwnerView,
    pub vars: Vec<EnvVarView>,
}

impl Human for EnvList {
    fn human(&self) -> String {
        let mut t = Table::new(&["NAME", "VALUE", "BLOCKS"]);
        for v in &self.vars {
            let blocks = if v.blocks.is_empty() {
                "(all)".to_owned()
            } else {
                v.blocks.join(",")
            };
            t.row(vec![v.name.clone(), v.value.clone(), blocks]);
        }
        t.render()
    }
}

// --------------------------------------------------------------- operations

#[derive(Debug, Serialize)]
pub struct ForceView {
    pub blocks: Vec<String>,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct OperationView {
    pub id: u64,
    pub device: String,
    /// assign_release, restart_block, stop_block, start_block, reboot,
    /// shutdown, os_update, apply_env.
    pub kind: String,
    /// The release, block or OS version the operation names, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force: Option<ForceView>,
    pub status: String,
    /// The status as the wire enum (what `op wait` decides on).
    #[serde(skip)]
    pub state: pb::OperationStatus,
    pub waiting_on: Vec<DisturbanceView>,
    /// While queued: the earlier operation it waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behind: Option<u64>,
    pub error: String,
    /// Applies the agent reported interrupted (each decided again), and
    /// what it said last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<InterruptedView>,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct InterruptedView {
    pub times: u32,
    pub last: String,
}

/// The kind of an operation and what it names.
pub fn spec_parts(spec: Option<pb::OperationSpec>) -> (String, Option<String>) {
    use pb::operation_spec::Kind;
    let (kind, target) = match spec.and_then(|s| s.kind) {
        Some(Kind::AssignRelease(r)) => ("assign_release", Some(r)),
        Some(Kind::RestartBlock(b)) => ("restart_block", Some(b)),
        Some(Kind::StopBlock(b)) => ("stop_block", Some(b)),
        Some(Kind::StartBlock(b)) => ("start_block", Some(b)),
        Some(Kind::Reboot(_)) => ("reboot", None),
        Some(Kind::Shutdown(_)) => ("shutdown", None),
        Some(Kind::OsUpdate(v)) => ("os_update", Some(v)),
        Some(Kind::ApplyEnv(e)) if e.blocks.is_empty() => ("apply_env", None),
        Some(Kind::ApplyEnv(e)) => ("apply_env", Some(e.blocks.join(","))),
        None => ("unknown", None),
    };
    (kind.to_owned(), target)
}

impl From<pb::OperationInfo> for OperationView {
    fn from(o: pb::OperationInfo) -> Self {
        let (kind, target) = spec_parts(o.spec);
        OperationView {
            id: o.id,
            device: o.device,
            kind,
            target,
            force: o
                .force
                .filter(|f| !f.blocks.is_empty() || !f.reason.is_empty())
                .map(|f| ForceView {
                    blocks: f.blocks,
                    reason: f.reason,
                }),
            status: o.status,
            state: pb::OperationStatus::try_from(o.state)
                .unwrap_or(pb::OperationStatus::Unspecified),
            waiting_on: o.waiting_on.into_iter().map(Into::into).collect(),
            behind: (o.behind != 0).then_some(o.behind),
            error: o.error,
            interrupted: (o.interruptions > 0).then_some(InterruptedView {
                times: o.interruptions,
                last: o.interrupted,
            }),
            created_unix_ms: o.created_unix_ms,
            updated_unix_ms: o.updated_unix_ms,
        }
    }
}

impl OperationView {
    fn what(&self) -> String {
        match &self.target {
            Some(t) => format!("{} {t}", self.kind),
            None => self.kind.clone(),
        }
    }

    /// What it waits for: the lock holders, or the operation it is
    /// queued behind.
    fn waiting_text(&self) -> String {
        if let Some(op) = self.behind {
            return format!("operation {op}");
        }
        self.waiting_on
            .iter()
            .map(DisturbanceView::short)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Human for OperationView {
    fn human(&self) -> String {
        let force = self
            .force
            .as_ref()
            .map(|f| format!("{} ({})", f.blocks.join(", "), f.reason))
            .unwrap_or_default();
        fields(&[
            ("operation", self.id.to_string()),
            ("device", self.device.clone()),
            ("kind", self.what()),
            ("status", self.status.clone()),
            ("waiting on", self.waiting_text()),
            ("force", force),
            ("error", self.error.clone()),
            (
                "interrupted",
                self.interrupted
                    .as_ref()
                    .map(|i| format!("{} time(s), last: {}", i.times, i.last))
                    .unwrap_or_default(),
            ),
            ("created", timestamp(self.created_unix_ms)),
            ("updated", timestamp(self.updated_unix_ms)),
        ])
    }
}

#[derive(Debug, Serialize)]
pub struct OperationList {
    pub operations: Vec<OperationView>,
}

impl Human for OperationList {
    fn human(&self) -> String {
        let mut t = Table::new(&[
            "ID",
            "OPERATION",
            "STATUS",
            "WAITING ON",
            "ERROR",
            "UPDATED",
        ]);
        for o in &self.operations {
            t.row(vec![
                o.id.to_string(),
                o.what(),
                o.status.clone(),
                o.waiting_text(),
                o.error.clone(),
                timestamp(o.updated_unix_ms),
            ]);
        }
        t.render()
    }
}

// ------------------------------------------------------------------ windows

/// Where a window applies: `{"fleet": "inverters"}`, `{"tag": "site-north"}`
/// or `{"device": "inv-0042"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeView {
    Fleet(String),
    Tag(String),
    Device(String),
}

impl ScopeView {
    fn from_pb(s: Option<pb::WindowScope>) -> Option<Self> {
        use pb::window_scope::Scope;
        Some(match s?.scope? {
            Scope::Fleet(f) => ScopeView::Fleet(f),
            Scope::Tag(t) => ScopeView::Tag(t),
            Scope::Device(d) => ScopeView::Device(d),
        })
    }

    fn text(s: Option<&Self>) -> String {
        match s {
            Some(ScopeView::Fleet(x)) => format!("fleet {x}"),
            Some(ScopeView::Tag(x)) => format!("tag {x}"),
            Some(ScopeView::Device(x)) => format!("device {x}"),
            None => String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeeklyView {
    /// ISO weekdays: 1 = Monday ... 7 = Sunday.
    pub days: Vec<u32>,
    pub start_local: String,
    pub duration_minutes: u32,
    pub time_zone: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecurrenceView {
    pub rrule: String,
    pub duration_minutes: u32,
}

/// A span of time: a one-off window, an occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpanView {
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
}

impl SpanView {
    fn duration(&self) -> String {
        let ms = self.end_unix_ms.saturating_sub(self.start_unix_ms);
        u64::try_from(ms / 1000)
            .map(duration_text)
            .unwrap_or_default()
    }

    /// `2026-11-24T22:00:00Z to 2026-11-25T00:00:00Z`.
    fn text(&self) -> String {
        format!(
            "{} to {}",
            timestamp(self.start_unix_ms),
            timestamp(self.end_unix_ms)
        )
    }
}

impl From<pb::Window> for SpanView {
    fn from(w: pb::Window) -> Self {
        SpanView {
            start_unix_ms: w.start_unix_ms,
            end_unix_ms: w.end_unix_ms,
        }
    }
}

/// A maintenance window, its rule in the field the proto's `rule` oneof
/// names (`weekly`, `one_off` or `recurrence`), and `kind` saying which.
#[derive(Debug, Serialize)]
pub struct WindowView {
    pub id: u64,
    pub scope: Option<ScopeView>,
    /// weekly, one_off or recurrence.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weekly: Option<WeeklyView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_off: Option<SpanView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recurrence: Option<RecurrenceView>,
}

impl From<pb::WindowInfo> for WindowView {
    fn from(w: pb::WindowInfo) -> Self {
        use pb::window_info::Rule;
        let mut v = WindowView {
            id: w.id,
            scope: ScopeView::from_pb(w.scope),
            kind: "unknown".into(),
            weekly: None,
            one_off: None,
            recurrence: None,
        };
        match w.rule {
            Some(Rule::Weekly(r)) => {
                v.kind = "weekly".into();
                v.weekly = Some(WeeklyView {
                    days: r.days,
                    start_local: r.start_local,
                    duration_minutes: r.duration_minutes,
                    time_zone: r.time_zone,
                });
            }
            Some(Rule::OneOff(r)) => {
                v.kind = "one_off".into();
                v.one_off = Some(SpanView {
                    start_unix_ms: r.start_unix_ms,
                    end_unix_ms: r.end_unix_ms,
                });
            }
            Some(Rule::Recurrence(r)) => {
                v.kind = "recurrence".into();
                v.recurrence = Some(RecurrenceView {
                    rrule: r.rrule,
                    duration_minutes: r.duration_minutes,
                });
            }
            None => {}
        }
        v
    }
}

impl WindowView {
    /// `Mon,Wed 02:00 Europe/Amsterdam`, the recurrence on one line, or the
    /// one-off span.
    fn when(&self) -> String {
        if let Some(w) = &self.weekly {
            format!("{} {} {}", days_text(&w.days), w.start_local, w.time_zone)
        } else if let Some(o) = &self.one_off {
            o.text()
        } else if let Some(r) = &self.recurrence {
            r.rrule.split_whitespace().collect::<Vec<_>>().join(" ")
        } else {
            String::new()
        }
    }

    fn duration(&self) -> String {
        let minutes = |m: u32| duration_text(u64::from(m) * 60);
        if let Some(w) = &self.weekly {
            minutes(w.duration_minutes)
        } else if let Some(o) = &self.one_off {
            o.duration()
        } else if let Some(r) = &self.recurrence {
            minutes(r.duration_minutes)
        } else {
            String::new()
        }
    }
}

impl Human for WindowView {
    fn human(&self) -> String {
        fields(&[
            ("window", self.id.to_string()),
            ("scope", ScopeView::text(self.scope.as_ref())),
            ("kind", self.kind.clone()),
            ("when", self.when()),
            ("duration", self.duration()),
        ])
    }
}

#[derive(Debug, Serialize)]
pub struct WindowList {
    pub windows: Vec<WindowView>,
}

impl Human for WindowList {
    fn human(&self) -> String {
        let mut t = Table::new(&["ID", "SCOPE", "KIND", "DURATION", "WHEN"]);
        for w in &self.windows {
            t.row(vec![
                w.id.to_string(),
                ScopeView::text(w.scope.as_ref()),
                w.kind.clone(),
                w.duration(),
                w.when(),
            ]);
        }
        t.render()
    }
}

/// `Mon,Wed`, `Mon-Fri` (runs of three or more), `daily`.
fn days_text(days: &[u32]) -> String {
    let mut days = days.to_vec();
    days.sort_unstable();
    days.dedup();
    if days == [1, 2, 3, 4, 5, 6, 7] {
        return "daily".into();
    }
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for d in days {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == d => *last = d,
            _ => runs.push((d, d)),
        }
    }
    let mut parts = Vec::new();
    for (first, last) in runs {
        if last >= first + 2 {
            parts.push(format!("{}-{}", weekday_name(first), weekday_name(last)));
        } else {
            parts.extend((first..=last).map(weekday_name));
        }
    }
    parts.join(",")
}

/// One upcoming occurrence, numbered from 1 in the order shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OccurrenceView {
    pub index: usize,
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
}

impl OccurrenceView {
    /// Numbers occurrences from 1.
    pub fn numbered(windows: Vec<pb::Window>) -> Vec<Self> {
        windows
            .into_iter()
            .enumerate()
            .map(|(i, w)| OccurrenceView {
                index: i + 1,
                start_unix_ms: w.start_unix_ms,
                end_unix_ms: w.end_unix_ms,
            })
            .collect()
    }

    fn span(&self) -> SpanView {
        SpanView {
            start_unix_ms: self.start_unix_ms,
            end_unix_ms: self.end_unix_ms,
        }
    }

    fn table(list: &[Self]) -> String {
        let mut t = Table::new(&["#", "START", "END", "DURATION"]);
        for o in list {
            t.row(vec![
                o.index.to_string(),
                timestamp(o.start_unix_ms),
                timestamp(o.end_unix_ms),
                o.span().duration(),
            ]);
        }
        t.render()
    }
}

/// `window next`: a device's next occurrences, the open one first.
#[derive(Debug, Serialize)]
pub struct NextView {
    pub device: String,
    pub occurrences: Vec<OccurrenceView>,
}

impl Human for NextView {
    fn human(&self) -> String {
        OccurrenceView::table(&self.occurrences)
    }
}

// ------------------------------------------------------------------- policy

/// A fleet's policy, in the proto's shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyView {
    pub fleet: String,
    pub needs_window: Vec<String>,
    pub needs_approval: Vec<String>,
    pub max_deferral_seconds: u64,
    pub on_deferral_expiry: String,
    pub release_mode: String,
    pub on_missed_occurrence: String,
}

impl From<pb::FleetPolicy> for PolicyView {
    fn from(p: pb::FleetPolicy) -> Self {
        PolicyView {
            fleet: p.fleet,
            needs_window: p.needs_window,
            needs_approval: p.needs_approval,
            max_deferral_seconds: p.max_deferral_seconds,
            on_deferral_expiry: p.on_deferral_expiry,
            release_mode: p.release_mode,
            on_missed_occurrence: p.on_missed_occurrence,
        }
    }
}

impl From<PolicyView> for pb::FleetPolicy {
    fn from(p: PolicyView) -> Self {
        pb::FleetPolicy {
            fleet: p.fleet,
            needs_window: p.needs_window,
            needs_approval: p.needs_approval,
            max_deferral_seconds: p.max_deferral_seconds,
            on_deferral_expiry: p.on_deferral_expiry,
            release_mode: p.release_mode,
            on_missed_occurrence: p.on_missed_occurrence,
        }
    }
}

impl Human for PolicyView {
    fn human(&self) -> String {
        let kinds = |k: &[String]| {
            if k.is_empty() {
                "(none)".to_owned()
            } else {
                k.join(", ")
            }
        };
        fields(&[
            ("fleet", self.fleet.clone()),
            ("needs window", kinds(&self.needs_window)),
            ("needs approval", kinds(&self.needs_approval)),
            ("max deferral", duration_text(self.max_deferral_seconds)),
            ("on deferral expiry", self.on_deferral_expiry.clone()),
            ("release mode", self.release_mode.clone()),
            ("on missed occurrence", self.on_missed_occurrence.clone()),
        ])
    }
}

// ---------------------------------------------------------------- approvals

#[derive(Debug, Serialize)]
pub struct ApprovalView {
    pub id: u64,
    pub operation_id: u64,
    pub device: String,
    /// requested, approved, declined or missed.
    pub status: String,
    /// While requested: the occurrences to choose from, numbered from 1.
    pub candidates: Vec<OccurrenceView>,
    pub approved: Option<SpanView>,
    pub decided_by: String,
    pub message: String,
}

impl From<pb::ApprovalInfo> for ApprovalView {
    fn from(a: pb::ApprovalInfo) -> Self {
        ApprovalView {
            id: a.id,
            operation_id: a.operation_id,
            device: a.device,
            status: a.status,
            candidates: OccurrenceView::numbered(a.candidates),
            approved: a.approved.map(Into::into),
            decided_by: a.decided_by,
            message: a.message,
        }
    }
}

impl ApprovalView {
    fn approved_text(&self) -> String {
        self.approved.map(|a| a.text()).unwrap_or_default()
    }

    /// How to pick one of the candidates, and the candidates.
    fn candidates_text(&self) -> String {
        format!(
            "Candidates of approval {id} (approve one with `lockstep approval approve {id} --index N`):\n{}",
            OccurrenceView::table(&self.candidates),
            id = self.id,
        )
    }
}

impl Human for ApprovalView {
    fn human(&self) -> String {
        let mut out = fields(&[
            ("approval", self.id.to_string()),
            ("operation", self.operation_id.to_string()),
            ("device", self.device.clone()),
            ("status", self.status.clone()),
            ("approved", self.approved_text()),
            ("decided by", self.decided_by.clone()),
            ("message", self.message.clone()),
        ]);
        if !self.candidates.is_empty() {
            out.push('\n');
            out.push_str(&self.candidates_text());
        }
        out
    }
}

#[derive(Debug, Serialize)]
pub struct ApprovalList {
    pub approvals: Vec<ApprovalView>,
}

impl Human for ApprovalList {
    fn human(&self) -> String {
        let mut t = Table::new(&[
            "ID",
            "OPERATION",
            "DEVICE",
            "STATUS",
            "DECIDED BY",
            "APPROVED",
            "MESSAGE",
        ]);
        for a in &self.approvals {
            t.row(vec![
                a.id.to_string(),
                a.operation_id.to_string(),
                a.device.clone(),
                a.status.clone(),
                a.decided_by.clone(),
                a.approved_text(),
                a.message.clone(),
            ]);
        }
        let mut out = t.render();
        for a in self.approvals.iter().filter(|a| !a.candidates.is_empty()) {
            out.push('\n');
            out.push_str(&a.candidates_text());
        }
        out
    }
}

// ----------------------------------------------------------------- rollouts

/// A number of devices or failures: `{"count": 50}` or `{"percent": 10}`,
/// as the proto's `Amount` oneof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AmountView {
    Count(u32),
    Percent(u32),
}

impl AmountView {
    fn from_pb(a: &pb::Amount) -> Option<Self> {
        use pb::amount::Amount;
        Some(match a.amount? {
            Amount::Count(n) => AmountView::Count(n),
            Amount::Percent(p) => AmountView::Percent(p),
        })
    }

    fn domain(self) -> crate::domain::Amount {
        use crate::domain::Amount;
        match self {
            AmountView::Count(n) => Amount::Count(n),
            AmountView::Percent(p) => Amount::Percent(u8::try_from(p).unwrap_or(100)),
        }
    }
}

impl std::fmt::Display for AmountView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AmountView::Count(n) => write!(f, "{n}"),
            AmountView::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// How a rollout proceeds, field for field as `RolloutStrategy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StrategyView {
    pub canary: u32,
    /// The batches after the canary; the last repeats until every device is
    /// covered.
    pub batches: Vec<AmountView>,
    /// 0: no limit.
    pub max_in_flight: u32,
    pub soak_seconds: u64,
    pub success_threshold_percent: u32,
    pub error_threshold: Option<AmountView>,
    /// pause or abort.
    pub on_error: String,
}

impl From<pb::RolloutStrategy> for StrategyView {
    fn from(s: pb::RolloutStrategy) -> Self {
        StrategyView {
            canary: s.canary,
            batches: s.batches.iter().filter_map(AmountView::from_pb).collect(),
            max_in_flight: s.max_in_flight,
            soak_seconds: s.soak_seconds,
            success_threshold_percent: match s.success_threshold_percent {
                0 => 100,
                p => p,
            },
            error_threshold: s.error_threshold.as_ref().and_then(AmountView::from_pb),
            on_error: if s.on_error.is_empty() {
                "pause".into()
            } else {
                s.on_error
            },
        }
    }
}

impl StrategyView {
    /// In the words of `rollout create`'s flags: `canary 1, batches
    /// 10%,50, max in flight 3, soak 10m, success threshold 95%, error
    /// threshold 2, on error pause`.
    pub fn text(&self) -> String {
        let batches = if self.batches.is_empty() {
            "batches (the rest at once)".to_owned()
        } else {
            let list: Vec<String> = self.batches.iter().map(ToString::to_string).collect();
            format!("batches {}", list.join(","))
        };
        let in_flight = match self.max_in_flight {
            0 => "no in-flight limit".to_owned(),
            n => format!("max in flight {n}"),
        };
        let error = self.error_threshold.unwrap_or(AmountView::Count(1));
        format!(
            "canary {}, {batches}, {in_flight}, soak {}, success threshold {}%, error threshold {error}, on error {}",
            self.canary,
            duration_text(self.soak_seconds),
            self.success_threshold_percent,
            self.on_error
        )
    }

    /// How many batches the server plans for `devices` devices (its own
    /// planner's arithmetic).
    fn batch_count(&self, devices: u64) -> u64 {
        let strategy = crate::domain::Strategy {
            canary: self.canary,
            batches: self.batches.iter().map(|a| a.domain()).collect(),
            ..Default::default()
        };
        strategy.batch_sizes(devices).len() as u64
    }
}

/// A rollout. Batches are numbered from 0 in JSON, as in the API
/// (`current_batch`, `index`), and from 1 in tables (`batch 2/5`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutView {
    pub id: u64,
    pub fleet: String,
    /// Only the fleet's devices with this tag; empty: all of them.
    pub tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    pub strategy: StrategyView,
    /// running, paused, aborted, completed or superseded.
    pub state: String,
    /// The batch being worked on, from 0.
    pub current_batch: u32,
    /// How many batches the plan has.
    pub batch_count: u64,
    /// Devices in batches; those already at the target are `skipped`.
    pub devices: u64,
    pub skipped: u64,
    /// Why it paused, aborted or was superseded.
    pub message: String,
    pub created_by: String,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
    pub seed: u64,
}

impl From<pb::RolloutInfo> for RolloutView {
    fn from(r: pb::RolloutInfo) -> Self {
        use pb::rollout_info::Target;
        let (release, os_version) = match r.target {
            Some(Target::Release(x)) => (Some(x), None),
            Some(Target::OsVersion(v)) => (None, Some(v)),
            None => (None, None),
        };
        let strategy: StrategyView = r.strategy.unwrap_or_default().into();
        RolloutView {
            batch_count: strategy.batch_count(r.devices),
            id: r.id,
            fleet: r.fleet,
            tag: r.tag,
            release,
            os_version,
            strategy,
            state: r.state,
            current_batch: r.current_batch,
            devices: r.devices,
            skipped: r.skipped,
            message: r.message,
            created_by: r.created_by,
            created_unix_ms: r.created_unix_ms,
            updated_unix_ms: r.updated_unix_ms,
            seed: r.seed,
        }
    }
}

impl RolloutView {
    /// `release r2` or `os 13.1`.
    pub fn target(&self) -> String {
        match (&self.release, &self.os_version) {
            (Some(r), _) => format!("release {r}"),
            (None, Some(v)) => format!("os {v}"),
            (None, None) => String::new(),
        }
    }

    /// `2/5`, the batch being worked on counted from 1; `-` with no batches.
    pub fn batch(&self) -> String {
        if self.batch_count == 0 {
            return "-".into();
        }
        format!("{}/{}", u64::from(self.current_batch) + 1, self.batch_count)
    }

    fn pairs(&self) -> Vec<(&'static str, String)> {
        let tag = if self.tag.is_empty() {
            "(all devices)".to_owned()
        } else {
            self.tag.clone()
        };
        vec![
            ("rollout", self.id.to_string()),
            ("fleet", self.fleet.clone()),
            ("tag", tag),
            ("target", self.target()),
            ("state", self.state.clone()),
            ("batch", self.batch()),
            (
                "devices",
                format!("{} ({} already at the target)", self.devices, self.skipped),
            ),
            ("strategy", self.strategy.text()),
            ("message", self.message.clone()),
            (
                "created",
                format!(
                    "{} by {}",
                    timestamp(self.created_unix_ms),
                    or_dash(&self.created_by)
                ),
            ),
            ("updated", timestamp(self.updated_unix_ms)),
            ("seed", self.seed.to_string()),
        ]
    }
}

impl Human for RolloutView {
    fn human(&self) -> String {
        fields(&self.pairs())
    }
}

#[derive(Debug, Serialize)]
pub struct RolloutList {
    pub rollouts: Vec<RolloutView>,
}

impl Human for RolloutList {
    fn human(&self) -> String {
        let mut t = Table::new(&[
            "ID", "FLEET", "TAG", "TARGET", "STATE", "BATCH", "DEVICES", "CREATED", "MESSAGE",
        ]);
        for r in &self.rollouts {
            t.row(vec![
                r.id.to_string(),
                r.fleet.clone(),
                r.tag.clone(),
                r.target(),
                r.state.clone(),
                r.batch(),
                r.devices.to_string(),
                timestamp(r.created_unix_ms),
                r.message.clone(),
            ]);
        }
        t.render()
    }
}

/// How one batch is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchView {
    /// From 0, as in the API.
    pub index: u32,
    pub size: u64,
    /// Not started yet.
    pub queued: u64,
    /// Started and not finished (waiting on a lock, window or approval, or
    /// applying).
    pub in_flight: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Cancelled or superseded.
    pub cancelled: u64,
}

impl BatchView {
    /// Succeeded, failed or cancelled.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }
}

/// Member devices with one device status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusCountView {
    pub status: String,
    pub devices: u64,
}

/// Member devices whose operation waits for a block's lock, for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockWaitView {
    pub block: String,
    pub reason: String,
    pub devices: u64,
}

/// A rollout and how it is doing: `rollout create|get`, and each update of
/// `rollout watch`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutStatusView {
    pub rollout: RolloutView,
    pub batches: Vec<BatchView>,
    /// Member devices by device status.
    pub device_statuses: Vec<StatusCountView>,
    /// Devices held up by a block's lock, by block and reason.
    pub waiting_lock: Vec<LockWaitView>,
    /// While the current batch soaks: when the soak ends.
    pub soak_until_unix_ms: Option<i64>,
}

impl RolloutStatusView {
    /// The view of an answer; `None` when it lacks the rollout.
    pub fn from_pb(s: pb::RolloutStatus) -> Option<Self> {
        let mut rollout: RolloutView = s.rollout?.into();
        rollout.batch_count = s.batches.len() as u64;
        Some(RolloutStatusView {
            rollout,
            batches: s
                .batches
                .into_iter()
                .map(|b| BatchView {
                    index: b.index,
                    size: b.size,
                    queued: b.queued,
                    in_flight: b.in_flight,
                    succeeded: b.succeeded,
                    failed: b.failed,
                    cancelled: b.cancelled,
                })
                .collect(),
            device_statuses: s
                .device_statuses
                .into_iter()
                .map(|c| StatusCountView {
                    status: c.status,
                    devices: c.devices,
                })
                .collect(),
            waiting_lock: s
                .waiting_lock
                .into_iter()
                .map(|w| LockWaitView {
                    reason: reason_name(w.reason()),
                    block: w.block,
                    devices: w.devices,
                })
                .collect(),
            soak_until_unix_ms: (s.soak_until_unix_ms != 0).then_some(s.soak_until_unix_ms),
        })
    }

    /// Devices in batches.
    pub fn total(&self) -> u64 {
        self.batches.iter().map(|b| b.size).sum()
    }

    /// Devices whose operation succeeded, failed or was cancelled.
    pub fn finished(&self) -> u64 {
        self.batches.iter().map(BatchView::finished).sum()
    }

    /// (succeeded, failed, cancelled) over every batch.
    pub fn outcomes(&self) -> (u64, u64, u64) {
        self.batches.iter().fold((0, 0, 0), |(s, f, c), b| {
            (s + b.succeeded, f + b.failed, c + b.cancelled)
        })
    }

    /// `1 (canary)` or `2`: batch `index` as tables number it.
    pub fn batch_name(&self, index: u32) -> String {
        if index == 0 && self.rollout.strategy.canary > 0 {
            "1 (canary)".into()
        } else {
            (u64::from(index) + 1).to_string()
        }
    }

    /// `controller: update_restart`, or with several blocks or reasons
    /// `controller: update_restart 3, ui: dependency_restart 2`.
    pub fn waiting_text(&self) -> String {
        match &self.waiting_lock[..] {
            [one] => format!("{}: {}", one.block, one.reason),
            all => all
                .iter()
                .map(|w| format!("{}: {} {}", w.block, w.reason, w.devices))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// One line for people watching: the state, the batch, a soak, and
    /// every device status but in_sync with its count, waiting_lock with
    /// the blocks that hold devices up — `running · batch 2/5 ·
    /// waiting_lock 3 (controller: update_restart) · failed 1`.
    pub fn summary(&self) -> String {
        let mut parts = vec![self.rollout.state.clone()];
        if !self.batches.is_empty() {
            parts.push(format!("batch {}", self.rollout.batch()));
        }
        if let Some(until) = self.soak_until_unix_ms {
            parts.push(format!("soaking until {}", timestamp(until)));
        }
        for c in &self.device_statuses {
            if c.status == "in_sync" || c.devices == 0 {
                continue;
            }
            if c.status == "waiting_lock" && !self.waiting_lock.is_empty() {
                parts.push(format!(
                    "waiting_lock {} ({})",
                    c.devices,
                    self.waiting_text()
                ));
            } else {
                parts.push(format!("{} {}", c.status, c.devices));
            }
        }
        parts.join(" · ")
    }
}

impl Human for RolloutStatusView {
    fn human(&self) -> String {
        let mut pairs = self.rollout.pairs();
        if let Some(until) = self.soak_until_unix_ms {
            // After `batch`: the soak is the current batch's.
            let at = pairs
                .iter()
                .position(|(k, _)| *k == "batch")
                .map_or(0, |i| i + 1);
            pairs.insert(at, ("soaking until", timestamp(until)));
        }
        let mut out = fields(&pairs);
        out.push_str("\nBatches:\n");
        let mut t = Table::new(&[
            "BATCH",
            "SIZE",
            "QUEUED",
            "IN FLIGHT",
            "SUCCEEDED",
            "FAILED",
            "CANCELLED",
        ]);
        for b in &self.batches {
            t.row(vec![
                self.batch_name(b.index),
                b.size.to_string(),
                b.queued.to_string(),
                b.in_flight.to_string(),
                b.succeeded.to_string(),
                b.failed.to_string(),
                b.cancelled.to_string(),
            ]);
        }
        out.push_str(&t.render());
        out.push_str("\nDevices by status:\n");
        let mut t = Table::new(&["STATUS", "DEVICES"]);
        for c in &self.device_statuses {
            t.row(vec![c.status.clone(), c.devices.to_string()]);
        }
        out.push_str(&t.render());
        if self.waiting_lock.is_empty() {
            out.push_str("\nWaiting on a block's lock: none\n");
        } else {
            out.push_str("\nWaiting on a block's lock:\n");
            let mut t = Table::new(&["BLOCK", "REASON", "DEVICES"]);
            for w in &self.waiting_lock {
                t.row(vec![
                    w.block.clone(),
                    w.reason.clone(),
                    w.devices.to_string(),
                ]);
            }
            out.push_str(&t.render());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    #[test]
    fn block_version_json_reads_the_readme_shapes() {
        let hand_over = BlockVersionJson {
            block: "controller".into(),
            version: "4.0.0".into(),
            image_digest: DIGEST.into(),
            update_strategy: Some(UpdateStrategyJson {
                hand_over: Some(HandOverJson {
                    timeout_seconds: 30,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases = [
            // The README's CreateBlockVersion body, and the BlockVersion alone.
            (
                format!(
                    r#"{{"block_version":{{"block":"controller","version":"4.0.0","image_digest":"{DIGEST}","update_strategy":{{"hand_over":{{"timeout_seconds":30}}}}}}}}"#
                ),
                Ok(hand_over.clone()),
            ),
            (
                format!(
                    r#"{{"block":"controller","version":"4.0.0","image_digest":"{DIGEST}","update_strategy":{{"hand_over":{{"timeout_seconds":30}}}}}}"#
                ),
                Ok(hand_over.clone()),
            ),
            // protobuf's lowerCamelCase names.
            (
                format!(
                    r#"{{"block":"controller","version":"4.0.0","imageDigest":"{DIGEST}","updateStrategy":{{"handOver":{{"timeoutSeconds":30}}}}}}"#
                ),
                Ok(hand_over),
            ),
            (
                r#"{"block":"ui","version":"2.0.0","config":{"command":["/bin/ui","-v"],"working_dir":"/srv"},"env":{"MODE":"full"},"depends_on":[{"block":"telemetry","restart":true}]}"#.to_owned(),
                Ok(BlockVersionJson {
                    block: "ui".into(),
                    version: "2.0.0".into(),
                    config: Some(BlockConfigJson {
                        command: vec!["/bin/ui".into(), "-v".into()],
                        working_dir: Some("/srv".into()),
                        ..Default::default()
                    }),
                    env: [("MODE".to_owned(), "full".to_owned())].into(),
                    depends_on: vec![DependencyJson {
                        block: "telemetry".into(),
                        restart: true,
                    }],
                    ..Default::default()
                }),
            ),
            (r#"{"block":"ui","imge_digest":"x"}"#.to_owned(), Err("imge_digest")),
            (r#"{"block":"ui""#.to_owned(), Err("EOF")),
            (r#"["ui"]"#.to_owned(), Err("JSON object")),
            (r#"{"block_version":["ui"]}"#.to_owned(), Err("JSON object")),
        ];
        for (text, want) in cases {
            match (BlockVersionJson::parse(&text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(e), Err(needle)) => assert!(e.contains(needle), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn block_version_json_round_trips_through_the_wire_type() {
        let json = format!(
            r#"{{"block":"ui","version":"2.0.0","image_digest":"{DIGEST}","config":{{"entrypoint":["/init"],"command":["ui"],"labels":{{"a":"b"}}}},"env":{{"K":"V"}},"depends_on":[{{"block":"telemetry","restart":true}}],"update_strategy":{{"kill_then_download":{{}}}}}}"#
        );
        let parsed = BlockVersionJson::parse(&json).unwrap();
        let back = BlockVersionJson::from(parsed.clone().into_pb().unwrap());
        assert_eq!(back, parsed);
        let printed = serde_json::to_value(&back).unwrap();
        assert_eq!(
            printed,
            serde_json::from_str::<serde_json::Value>(&json).unwrap()
        );
    }

    #[test]
    fn two_update_strategies_are_refused() {
        let bv = BlockVersionJson::parse(
            r#"{"block":"ui","update_strategy":{"kill_then_download":{},"hand_over":{"timeout_seconds":5}}}"#,
        )
        .unwrap();
        assert!(bv.into_pb().unwrap_err().contains("update_strategy"));
    }

    #[test]
    fn diffs_read_as_change_and_disturbance() {
        use pb::block_delta::{Change, Restart, Unchanged};
        let diff = DiffView {
            from: "r1".into(),
            to: "r2".into(),
            blocks: vec![
                pb::BlockDiff {
                    block: "telemetry".into(),
                    from_version: "1.25.3".into(),
                    to_version: "1.26.0".into(),
                    delta: Some(pb::BlockDelta {
                        block: "telemetry".into(),
                        change: Some(Change::Restart(Restart {
                            cause: pb::RestartCause::Image.into(),
                        })),
                    }),
                    disturbance: Some(pb::Disturbance {
                        block: "telemetry".into(),
                        reason: pb::Reason::UpdateRestart.into(),
                        handover: true,
                        because_of: String::new(),
                        cause: pb::RestartCause::Image.into(),
                    }),
                }
                .into(),
                pb::BlockDiff {
                    block: "ui".into(),
                    from_version: "2.0.0".into(),
                    to_version: "2.0.0".into(),
                    delta: Some(pb::BlockDelta {
                        block: "ui".into(),
                        change: Some(Change::Unchanged(Unchanged {})),
                    }),
                    disturbance: Some(pb::Disturbance {
                        block: "ui".into(),
                        reason: pb::Reason::DependencyRestart.into(),
                        handover: false,
                        because_of: "telemetry".into(),
                        cause: 0,
                    }),
                }
                .into(),
                pb::BlockDiff {
                    block: "zz".into(),
                    from_version: "1.0.0".into(),
                    to_version: String::new(),
                    delta: Some(pb::BlockDelta {
                        block: "zz".into(),
                        change: Some(Change::Stop(pb::block_delta::Stop {})),
                    }),
                    disturbance: None,
                }
                .into(),
            ],
        };
        assert_eq!(
            diff.human(),
            "BLOCK      FROM    TO      CHANGE          DISTURBANCE         BECAUSE OF  HANDOVER\n\
             telemetry  1.25.3  1.26.0  restart: image  update_restart      -           yes\n\
             ui         2.0.0   2.0.0   unchanged       dependency_restart  telemetry   no\n\
             zz         1.0.0   -       stop            none                -           -\n"
        );
        let json = serde_json::to_value(&diff).unwrap();
        assert_eq!(json["blocks"][1]["disturbance"]["because_of"], "telemetry");
        assert_eq!(json["blocks"][0]["cause"], "image");
        assert!(json["blocks"][2]["disturbance"].is_null());
    }

    #[test]
    fn windows_read_as_scope_kind_duration_and_when() {
        use pb::window_info::Rule;
        use pb::window_scope::Scope;
        let scope = |s| Some(pb::WindowScope { scope: Some(s) });
        let list = WindowList {
            windows: vec![
                pb::WindowInfo {
                    id: 1,
                    scope: scope(Scope::Fleet("inverters".into())),
                    rule: Some(Rule::Weekly(pb::WeeklyRule {
                        days: vec![2, 4],
                        start_local: "02:00".into(),
                        duration_minutes: 120,
                        time_zone: "Europe/Amsterdam".into(),
                    })),
                }
                .into(),
                pb::WindowInfo {
                    id: 2,
                    scope: scope(Scope::Tag("site-north".into())),
                    rule: Some(Rule::Recurrence(pb::RecurrenceRule {
                        rrule: "DTSTART;TZID=Europe/Amsterdam:20260104T020000\nRRULE:FREQ=MONTHLY;BYDAY=1SU".into(),
                        duration_minutes: 90,
                    })),
                }
                .into(),
                pb::WindowInfo {
                    id: 3,
                    scope: scope(Scope::Device("inv-0042".into())),
                    rule: Some(Rule::OneOff(pb::OneOffRule {
                        start_unix_ms: 1_795_558_263_000,
                        end_unix_ms: 1_795_558_263_000 + 4 * 3_600_000,
                    })),
                }
                .into(),
            ],
        };
        assert_eq!(
            list.human(),
            "ID  SCOPE            KIND        DURATION  WHEN\n\
             1   fleet inverters  weekly      2h        Tue,Thu 02:00 Europe/Amsterdam\n\
             2   tag site-north   recurrence  90m       DTSTART;TZID=Europe/Amsterdam:20260104T020000 RRULE:FREQ=MONTHLY;BYDAY=1SU\n\
             3   device inv-0042  one_off     4h        2026-11-24T22:11:03Z to 2026-11-25T02:11:03Z\n"
        );
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["windows"][0]["scope"]["fleet"], "inverters");
        assert_eq!(
            json["windows"][0]["weekly"]["days"],
            serde_json::json!([2, 4])
        );
        assert!(json["windows"][0].get("one_off").is_none(), "{json}");
        assert_eq!(json["windows"][1]["kind"], "recurrence");
        assert_eq!(
            json["windows"][2]["one_off"]["start_unix_ms"],
            1_795_558_263_000_i64
        );
    }

    #[test]
    fn weekdays_read_as_runs() {
        let cases: [(&[u32], &str); 6] = [
            (&[2, 4], "Tue,Thu"),
            (&[1, 2, 3, 4, 5], "Mon-Fri"),
            (&[1, 2, 6, 7], "Mon,Tue,Sat,Sun"),
            (&[1, 2, 3, 5, 6, 7], "Mon-Wed,Fri-Sun"),
            (&[7, 1, 1], "Mon,Sun"),
            (&[1, 2, 3, 4, 5, 6, 7], "daily"),
        ];
        for (days, want) in cases {
            assert_eq!(days_text(days), want, "{days:?}");
        }
    }

    #[test]
    fn requested_approvals_show_their_numbered_candidates() {
        let hour = 3_600_000;
        let start = 1_795_558_263_000;
        let list = ApprovalList {
            approvals: vec![
                pb::ApprovalInfo {
                    id: 1,
                    operation_id: 5,
                    device: "inv-0042".into(),
                    status: "declined".into(),
                    candidates: vec![],
                    approved: None,
                    decided_by: "customer@site".into(),
                    message: "harvest week".into(),
                }
                .into(),
                pb::ApprovalInfo {
                    id: 2,
                    operation_id: 6,
                    device: "inv-0042".into(),
                    status: "requested".into(),
                    candidates: vec![
                        pb::Window {
                            start_unix_ms: start,
                            end_unix_ms: start + 2 * hour,
                        },
                        pb::Window {
                            start_unix_ms: start + 24 * hour,
                            end_unix_ms: start + 26 * hour,
                        },
                    ],
                    approved: None,
                    decided_by: String::new(),
                    message: String::new(),
                }
                .into(),
            ],
        };
        assert_eq!(
            list.human(),
            "ID  OPERATION  DEVICE    STATUS     DECIDED BY     APPROVED  MESSAGE\n\
             1   5          inv-0042  declined   customer@site  -         harvest week\n\
             2   6          inv-0042  requested  -              -         -\n\
             \n\
             Candidates of approval 2 (approve one with `lockstep approval approve 2 --index N`):\n\
             #  START                 END                   DURATION\n\
             1  2026-11-24T22:11:03Z  2026-11-25T00:11:03Z  2h\n\
             2  2026-11-25T22:11:03Z  2026-11-26T00:11:03Z  2h\n"
        );
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["approvals"][1]["candidates"][1]["index"], 2);
        assert!(json["approvals"][0]["approved"].is_null(), "{json}");
    }

    #[test]
    fn policies_print_durations_and_empty_kinds_readably() {
        let p = PolicyView {
            fleet: "inverters".into(),
            needs_window: vec!["os_update".into(), "reboot".into()],
            needs_approval: vec![],
            max_deferral_seconds: 43_200,
            on_deferral_expiry: "notify".into(),
            release_mode: "atomic".into(),
            on_missed_occurrence: "ask".into(),
        };
        assert_eq!(
            p.human(),
            "fleet:                 inverters\n\
             needs window:          os_update, reboot\n\
             needs approval:        (none)\n\
             max deferral:          12h\n\
             on deferral expiry:    notify\n\
             release mode:          atomic\n\
             on missed occurrence:  ask\n"
        );
        let back = PolicyView::from(pb::FleetPolicy::from(p.clone()));
        assert_eq!(back, p);
    }

    #[test]
    fn operation_kinds_and_targets() {
        use pb::operation_spec::{Empty, Kind};
        let cases = [
            (
                Some(Kind::AssignRelease("r2".into())),
                ("assign_release", Some("r2")),
            ),
            (
                Some(Kind::RestartBlock("ui".into())),
                ("restart_block", Some("ui")),
            ),
            (
                Some(Kind::StopBlock("ui".into())),
                ("stop_block", Some("ui")),
            ),
            (
                Some(Kind::StartBlock("ui".into())),
                ("start_block", Some("ui")),
            ),
            (Some(Kind::Reboot(Empty {})), ("reboot", None)),
            (Some(Kind::Shutdown(Empty {})), ("shutdown", None)),
            (
                Some(Kind::OsUpdate("13.1".into())),
                ("os_update", Some("13.1")),
            ),
            (
                Some(Kind::ApplyEnv(pb::operation_spec::ApplyEnv {
                    blocks: vec![],
                })),
                ("apply_env", None),
            ),
            (
                Some(Kind::ApplyEnv(pb::operation_spec::ApplyEnv {
                    blocks: vec!["a".into(), "b".into()],
                })),
                ("apply_env", Some("a,b")),
            ),
            (None, ("unknown", None)),
        ];
        for (kind, (want_kind, want_target)) in cases {
            let (k, t) = spec_parts(Some(pb::OperationSpec { kind }));
            assert_eq!((k.as_str(), t.as_deref()), (want_kind, want_target));
        }
    }

    fn rollout_info(state: &str) -> pb::RolloutInfo {
        pb::RolloutInfo {
            id: 7,
            fleet: "inverters".into(),
            tag: "north".into(),
            target: Some(pb::rollout_info::Target::Release("r2".into())),
            strategy: Some(pb::RolloutStrategy {
                canary: 1,
                batches: vec![
                    pb::Amount {
                        amount: Some(pb::amount::Amount::Percent(50)),
                    },
                    pb::Amount {
                        amount: Some(pb::amount::Amount::Count(3)),
                    },
                ],
                max_in_flight: 2,
                soak_seconds: 600,
                success_threshold_percent: 95,
                error_threshold: Some(pb::Amount {
                    amount: Some(pb::amount::Amount::Percent(5)),
                }),
                on_error: "abort".into(),
            }),
            state: state.into(),
            current_batch: 1,
            devices: 10,
            skipped: 2,
            message: String::new(),
            created_by: "ops".into(),
            created_unix_ms: 1_795_558_263_000,
            updated_unix_ms: 1_795_558_323_000,
            seed: 42,
        }
    }

    #[test]
    fn a_rollout_status_shows_batches_statuses_and_the_locks_that_hold_devices_up() {
        let batch = |index, size, queued, in_flight, succeeded| pb::BatchProgress {
            index,
            size,
            queued,
            in_flight,
            succeeded,
            failed: 0,
            cancelled: 0,
        };
        let status = RolloutStatusView::from_pb(pb::RolloutStatus {
            rollout: Some(rollout_info("running")),
            batches: vec![
                batch(0, 1, 0, 0, 1),
                batch(1, 5, 0, 3, 2),
                batch(2, 3, 3, 0, 0),
            ],
            device_statuses: vec![
                pb::StatusCount {
                    status: "in_sync".into(),
                    devices: 6,
                },
                pb::StatusCount {
                    status: "waiting_lock".into(),
                    devices: 3,
                },
            ],
            waiting_lock: vec![pb::LockWaitCount {
                block: "controller".into(),
                reason: pb::Reason::UpdateRestart.into(),
                devices: 3,
            }],
            soak_until_unix_ms: 0,
        })
        .unwrap();
        assert_eq!(
            status.human(),
            "rollout:   7\n\
             fleet:     inverters\n\
             tag:       north\n\
             target:    release r2\n\
             state:     running\n\
             batch:     2/3\n\
             devices:   10 (2 already at the target)\n\
             strategy:  canary 1, batches 50%,3, max in flight 2, soak 10m, success threshold 95%, error threshold 5%, on error abort\n\
             message:   -\n\
             created:   2026-11-24T22:11:03Z by ops\n\
             updated:   2026-11-24T22:12:03Z\n\
             seed:      42\n\
             \n\
             Batches:\n\
             BATCH       SIZE  QUEUED  IN FLIGHT  SUCCEEDED  FAILED  CANCELLED\n\
             1 (canary)  1     0       0          1          0       0\n\
             2           5     0       3          2          0       0\n\
             3           3     3       0          0          0       0\n\
             \n\
             Devices by status:\n\
             STATUS        DEVICES\n\
             in_sync       6\n\
             waiting_lock  3\n\
             \n\
             Waiting on a block's lock:\n\
             BLOCK       REASON          DEVICES\n\
             controller  update_restart  3\n"
        );
        assert_eq!(
            status.summary(),
            "running · batch 2/3 · waiting_lock 3 (controller: update_restart)"
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["rollout"]["release"], "r2");
        assert!(json["rollout"].get("os_version").is_none(), "{json}");
        assert_eq!(
            json["rollout"]["strategy"]["batches"],
            serde_json::json!([{ "percent": 50 }, { "count": 3 }])
        );
        assert_eq!(json["rollout"]["batch_count"], 3);
        assert_eq!(json["batches"][1]["in_flight"], 3);
        assert_eq!(
            json["waiting_lock"],
            serde_json::json!([{ "block": "controller", "reason": "update_restart", "devices": 3 }])
        );
        assert!(json["soak_until_unix_ms"].is_null());

        // A soak shows under the batch it belongs to.
        let soaking = RolloutStatusView {
            soak_until_unix_ms: Some(1_795_558_863_000),
            ..status
        };
        assert!(
            soaking
                .human()
                .contains("batch:          2/3\nsoaking until:  2026-11-24T22:21:03Z\n"),
            "{}",
            soaking.human()
        );
        assert_eq!(
            soaking.summary(),
            "running · batch 2/3 · soaking until 2026-11-24T22:21:03Z · waiting_lock 3 (controller: update_restart)"
        );
    }

    /// 10 devices: a canary of 1, 50% (5), 3, and the last entry again for
    /// the 1 left: four batches.
    #[test]
    fn rollouts_list_with_their_batch_as_planned() {
        let os = pb::RolloutInfo {
            id: 6,
            tag: String::new(),
            target: Some(pb::rollout_info::Target::OsVersion("13.1".into())),
            strategy: Some(pb::RolloutStrategy::default()),
            current_batch: 0,
            message: "superseded by a newer rollout".into(),
            ..rollout_info("superseded")
        };
        let list = RolloutList {
            rollouts: vec![rollout_info("paused").into(), os.into()],
        };
        assert_eq!(
            list.human(),
            "ID  FLEET      TAG    TARGET      STATE       BATCH  DEVICES  CREATED               MESSAGE\n\
             7   inverters  north  release r2  paused      2/4    10       2026-11-24T22:11:03Z  -\n\
             6   inverters  -      os 13.1     superseded  1/1    10       2026-11-24T22:11:03Z  superseded by a newer rollout\n"
        );
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["rollouts"][1]["os_version"], "13.1");
        assert_eq!(
            json["rollouts"][1]["strategy"],
            serde_json::json!({
                "canary": 0,
                "batches": [],
                "max_in_flight": 0,
                "soak_seconds": 0,
                "success_threshold_percent": 100,
                "error_threshold": null,
                "on_error": "pause",
            })
        );
    }
}
