//! What the operator verbs print: plain serde structs mapped by hand from the
//! proto answers (prost types do not derive serde), each rendered either as
//! one JSON document (`--output json`, snake_case as in the protos) or as
//! aligned text for people.

use std::collections::BTreeMap;
use std::io::Write as _;

use serde::{Deserialize, Serialize};

use super::Output;
use super::error::CliError;
use super::parse::{cause_name, device_status_name, reason_name, timestamp};
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
