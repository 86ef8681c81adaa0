//! `[node]`, and `store.backend`, which chooses where the queue lives (its
//! keys are checked in `super::postgres`).
//!
//! A node is one daemon. Its name is written on every attempt it makes and
//! shown in `stats`, so that an operator can tell which daemon did what.

use super::*;

/// The longest node name: a host name's label limit, with room to spare.
const MAX_NODE_NAME_BYTES: usize = 64;

/// `[node]`: this daemon, as logs, `stats` and history name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// `node.name`, by default the host name.
    pub name: String,
    /// Why the host name cannot be the name, when `node.name` is not set and
    /// it cannot. Only the daemon needs a name, so only [`NodeConfig::check`]
    /// refuses it: a client command or an export runs on such a host.
    unusable: Option<String>,
}

impl NodeConfig {
    /// The name, or why there is none, in the words of a config error.
    pub fn check(&self) -> Result<&str, String> {
        match &self.unusable {
            None => Ok(&self.name),
            Some(why) => Err(why.clone()),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawNode {
    name: Option<String>,
}

/// `store.backend`.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawBackend {
    #[default]
    Sqlite,
    Postgres,
}

/// `node.name` as written (refused at once if it will not do), or the
/// host name (whose fault [`NodeConfig::check`] reports).
pub(super) fn node_config(raw: RawNode, host: io::Result<String>) -> Result<NodeConfig, String> {
    if let Some(name) = raw.name {
        check_node_name(&name)?;
        return Ok(NodeConfig {
            name,
            unusable: None,
        });
    }
    let (name, unusable) = match host {
        Err(e) => (
            String::new(),
            Some(format!(
                "is not set, and the host name cannot be read ({e}); set name under [node]"
            )),
        ),
        Ok(host) => {
            let unusable = check_node_name(&host).err().map(|why| {
                format!("is not set, and the host name {host:?} will not do ({why}); set name under [node]")
            });
            (host, unusable)
        }
    };
    Ok(NodeConfig { name, unusable })
}

/// A node name is 1 to 64 letters, digits, `.`, `-` and `_`, as host names
/// are: it goes into log lines and JSON, and must read the same in both.
pub(super) fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_NODE_NAME_BYTES {
        return Err(format!(
            "is {} bytes long; the limit is {MAX_NODE_NAME_BYTES}",
            name.len()
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(format!(
            "may hold only letters, digits, '.', '-' and '_', not {c:?}"
        )),
        None => Ok(()),
    }
}

/// The kernel's host name (`uname -n`).
pub fn host_name() -> io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the host name is not UTF-8"))
}
