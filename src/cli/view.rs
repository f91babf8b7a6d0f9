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
use crate::grpc::pb;

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
    pub waiting_on: Vec<DisturbanceView>,
    pub error: String,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
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
        Some(Kind::ApplyEnv(_)) => ("apply_env", None),
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
            waiting_on: o.waiting_on.into_iter().map(Into::into).collect(),
            error: o.error,
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

    fn waiting_text(&self) -> String {
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
            (Some(Kind::ApplyEnv(Empty {})), ("apply_env", None)),
            (None, ("unknown", None)),
        ];
        for (kind, (want_kind, want_target)) in cases {
            let (k, t) = spec_parts(Some(pb::OperationSpec { kind }));
            assert_eq!((k.as_str(), t.as_deref()), (want_kind, want_target));
        }
    }
}
