//! The pure half of the installer: which file in a CNI config directory is the node's primary
//! network, and how its text changes when redirect-cni is chained in or taken out.
//!
//! Invariants:
//! - a config is rewritten only when it validates as something a runtime would run (a
//!   `cniVersion` redirect-cni speaks, a `name`, every plugin an object with a `type`);
//!   anything else is a [`ConfProblem`] and the caller leaves the file alone;
//! - keys keep their order and unknown keys survive (serde_json with `preserve_order`), and
//!   the indentation of the original is reused, so a rewrite differs from the original only
//!   where redirect-cni's entry is;
//! - chaining twice is chaining once: an entry of type `redirect-cni` with the wanted
//!   `proxySocket` means there is nothing to do.

use std::path::Path;

use marrow_wire::cni_version::CniVersion;
use serde::Serialize;
use serde_json::{Map, Value};

/// The `type` of redirect-cni's entry: the plugin binary's name in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "redirect-cni";
/// The key of the enrollment socket in redirect-cni's config (`redirect-cni/src/cni/config.rs`).
pub const SOCKET_KEY: &str = "proxySocket";
/// Extensions a runtime reads from the config directory, as libcni's `ConfFiles` does.
pub const CONFIG_EXTENSIONS: [&str; 3] = [".conflist", ".conf", ".json"];

/// Why a CNI config file cannot be chained; the file is left as it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfProblem {
    /// The bytes are not JSON.
    #[error("not valid JSON ({0})")]
    Json(#[source] serde_json::Error),
    /// The document is JSON but not an object.
    #[error("the top level is not a JSON object")]
    NotAnObject,
    /// A `.conflist` without `plugins`.
    #[error("no `plugins` list (a .conflist holds its plugins there)")]
    NoPlugins,
    /// `plugins` is something other than a list.
    #[error("`plugins` is not a list")]
    PluginsNotAList,
    /// No plugin other than redirect-cni: nothing sets up the pod's interface before it.
    #[error("`plugins` has no plugin to chain after (redirect-cni needs the primary's result)")]
    NoPrimaryPlugin,
    /// An element of `plugins` is not an object.
    #[error("plugins[{index}] is not a JSON object")]
    PluginNotAnObject {
        /// Position in `plugins`.
        index: usize,
    },
    /// An element of `plugins` has no string `type`.
    #[error("plugins[{index}] has no string `type`")]
    PluginWithoutType {
        /// Position in `plugins`.
        index: usize,
    },
    /// A `.conf`/`.json` with neither `plugins` nor `type`.
    #[error("neither `plugins` nor `type`: not a CNI network config")]
    NotANetwork,
    /// `cniVersion` is absent or not a string.
    #[error("no string `cniVersion`")]
    NoCniVersion,
    /// A `cniVersion` redirect-cni refuses: every pod ADD would fail.
    #[error("cniVersion {0:?} is not one redirect-cni speaks ({supported})", supported = supported_versions())]
    UnsupportedVersion(String),
    /// `name` is absent or not a string (redirect-cni requires the network's name).
    #[error("no string `name`")]
    NoName,
    /// Serializing the rewritten document failed.
    #[error("serializing the rewritten config ({0})")]
    Serialize(#[source] serde_json::Error),
}

/// The entry chained into the primary network: `{"type": "redirect-cni", "proxySocket": …}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainEntry {
    socket: String,
}

impl ChainEntry {
    /// The entry for the node proxy's enrollment socket at `socket`; `None` unless the path is
    /// absolute, UTF-8 and fits a Unix socket address (the checks redirect-cni makes).
    pub fn new(socket: &Path) -> Option<Self> {
        let socket = socket.to_str()?;
        (socket.starts_with('/') && socket.len() <= 107).then(|| Self {
            socket: socket.to_owned(),
        })
    }

    /// The socket path the entry names.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// The entry as JSON, keys in the order written.
    pub fn to_json(&self) -> Value {
        let mut entry = Map::new();
        entry.insert("type".into(), PLUGIN_TYPE.into());
        entry.insert(SOCKET_KEY.into(), self.socket.clone().into());
        Value::Object(entry)
    }
}

/// What chaining a config file amounts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chain {
    /// redirect-cni is in the list already, with the wanted socket: leave the file alone.
    Unchanged,
    /// Write `contents` to `file_name` (in the same directory); then, for a single-plugin
    /// config turned into a list, remove the old file `replaces`.
    Write {
        /// The file to write: the same name, or `<stem>.conflist` for a converted config.
        file_name: String,
        /// The new file's bytes.
        contents: Vec<u8>,
        /// The single-plugin config the list replaces, if the name changed.
        replaces: Option<String>,
    },
}

/// Whether a runtime reads `file_name` as a network config (by extension, as libcni does).
pub fn is_config_name(file_name: &str) -> bool {
    CONFIG_EXTENSIONS
        .iter()
        .any(|ext| file_name.len() > ext.len() && file_name.ends_with(ext))
}

/// The node's primary network config among `file_names`: the lexically first with a config
/// extension, the one kubelet's runtime (containerd, CRI-O) uses for every pod.
pub fn primary<'a>(file_names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    file_names.into_iter().filter(|n| is_config_name(n)).min()
}

/// Chains `entry` into the config `text` read from `file_name`: appended as the last plugin of
/// the list, or the single plugin of a `.conf`/`.json` turned into `<stem>.conflist`.
pub fn chain(file_name: &str, text: &[u8], entry: &ChainEntry) -> Result<Chain, ConfProblem> {
    let layout = Layout::of(text);
    let doc = parse_object(text)?;
    let is_list = file_name.ends_with(".conflist") || doc.contains_key("plugins");
    if is_list {
        return chain_list(file_name, doc, entry, &layout);
    }
    if !doc.contains_key("type") {
        return Err(ConfProblem::NotANetwork);
    }
    let list = to_list(doc)?;
    let contents = layout.render(&Value::Object(list_with(list.header, list.plugins, entry)))?;
    let stem = CONFIG_EXTENSIONS
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))
        .unwrap_or(file_name);
    Ok(Chain::Write {
        file_name: format!("{stem}.conflist"),
        contents,
        replaces: Some(file_name.to_owned()),
    })
}

/// Takes every redirect-cni entry out of the config `text`; `None` when there is none (also
/// for a single-plugin config, which never holds one). Other plugins and keys stay as they are.
pub fn unchain(text: &[u8]) -> Result<Option<Vec<u8>>, ConfProblem> {
    let layout = Layout::of(text);
    let mut doc = parse_object(text)?;
    let Some(plugins) = doc.get_mut("plugins") else {
        return Ok(None);
    };
    let Value::Array(plugins) = plugins else {
        return Err(ConfProblem::PluginsNotAList);
    };
    let before = plugins.len();
    plugins.retain(|p| !is_ours(p));
    if plugins.len() == before {
        return Ok(None);
    }
    layout.render(&Value::Object(doc)).map(Some)
}

/// The plugin types of a config, in order (a single-plugin config has one), for reports.
pub fn plugin_types(text: &[u8]) -> Result<Vec<String>, ConfProblem> {
    let doc = parse_object(text)?;
    let types = match doc.get("plugins") {
        Some(Value::Array(plugins)) => plugins
            .iter()
            .map(|p| {
                p.get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect(),
        Some(_) => return Err(ConfProblem::PluginsNotAList),
        None => vec![
            doc.get("type")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
        ],
    };
    Ok(types)
}

fn chain_list(
    file_name: &str,
    mut doc: Map<String, Value>,
    entry: &ChainEntry,
    layout: &Layout,
) -> Result<Chain, ConfProblem> {
    match doc.get("plugins") {
        None => return Err(ConfProblem::NoPlugins),
        Some(Value::Array(_)) => {}
        Some(_) => return Err(ConfProblem::PluginsNotAList),
    }
    check_header(&doc)?;
    let Some(Value::Array(plugins)) = doc.get_mut("plugins") else {
        return Err(ConfProblem::NoPlugins);
    };
    check_plugins(plugins)?;
    let ours: Vec<usize> = (0..plugins.len())
        .filter(|&i| is_ours(&plugins[i]))
        .collect();
    match ours.as_slice() {
        [] => plugins.push(entry.to_json()),
        [only] if plugins[*only].get(SOCKET_KEY) == Some(&entry.socket().into()) => {
            return Ok(Chain::Unchanged);
        }
        // Keep the first entry where it is (with any settings added to it by hand), point it
        // at our socket, and drop duplicates: one chain, one enrollment.
        [first, rest @ ..] => {
            if let Some(Value::Object(kept)) = plugins.get_mut(*first) {
                kept.insert(SOCKET_KEY.into(), entry.socket().into());
            }
            for &i in rest.iter().rev() {
                plugins.remove(i);
            }
        }
    }
    Ok(Chain::Write {
        file_name: file_name.to_owned(),
        contents: layout.render(&Value::Object(doc))?,
        replaces: None,
    })
}

/// A single-plugin config split into the list's header (`cniVersion`, `name`) and its plugin.
struct ListParts {
    header: Map<String, Value>,
    plugins: Vec<Value>,
}

fn to_list(mut single: Map<String, Value>) -> Result<ListParts, ConfProblem> {
    check_header(&single)?;
    if !single.get("type").is_some_and(Value::is_string) {
        return Err(ConfProblem::PluginWithoutType { index: 0 });
    }
    if single.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE) {
        return Err(ConfProblem::NoPrimaryPlugin);
    }
    let mut header = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(value) = single.shift_remove(key) {
            header.insert(key.into(), value);
        }
    }
    Ok(ListParts {
        header,
        plugins: vec![Value::Object(single)],
    })
}

fn list_with(
    mut header: Map<String, Value>,
    mut plugins: Vec<Value>,
    entry: &ChainEntry,
) -> Map<String, Value> {
    plugins.push(entry.to_json());
    header.insert("plugins".into(), Value::Array(plugins));
    header
}

fn check_header(doc: &Map<String, Value>) -> Result<(), ConfProblem> {
    let version = match doc.get("cniVersion") {
        Some(Value::String(v)) => v,
        _ => return Err(ConfProblem::NoCniVersion),
    };
    if CniVersion::parse(version).is_none() {
        return Err(ConfProblem::UnsupportedVersion(version.clone()));
    }
    if !doc.get("name").is_some_and(Value::is_string) {
        return Err(ConfProblem::NoName);
    }
    Ok(())
}

fn check_plugins(plugins: &[Value]) -> Result<(), ConfProblem> {
    for (index, plugin) in plugins.iter().enumerate() {
        let Value::Object(plugin) = plugin else {
            return Err(ConfProblem::PluginNotAnObject { index });
        };
        if !plugin.get("type").is_some_and(Value::is_string) {
            return Err(ConfProblem::PluginWithoutType { index });
        }
    }
    if plugins.iter().all(is_ours) {
        return Err(ConfProblem::NoPrimaryPlugin);
    }
    Ok(())
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn parse_object(text: &[u8]) -> Result<Map<String, Value>, ConfProblem> {
    match serde_json::from_slice(text).map_err(ConfProblem::Json)? {
        Value::Object(doc) => Ok(doc),
        _ => Err(ConfProblem::NotAnObject),
    }
}

fn supported_versions() -> String {
    CniVersion::SUPPORTED
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How the original was laid out, so the rewrite looks like it: compact or indented (with the
/// original's indent unit), with or without a final newline.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    /// `None`: one line, as `serde_json::to_vec` writes it.
    indent: Option<String>,
    trailing_newline: bool,
}

impl Layout {
    fn of(text: &[u8]) -> Self {
        let body = text.trim_ascii_end();
        // The first indented line is the first key of the top-level object: its leading
        // whitespace is one level of indentation.
        let indent = body.split(|&b| b == b'\n').skip(1).find_map(|line| {
            let width = line
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            (width > 0 && width < line.len())
                .then(|| String::from_utf8_lossy(&line[..width]).into_owned())
        });
        let multiline = body.contains(&b'\n');
        Self {
            indent: if multiline {
                Some(indent.unwrap_or_else(|| "  ".to_owned()))
            } else {
                None
            },
            trailing_newline: text.ends_with(b"\n"),
        }
    }

    fn render(&self, doc: &Value) -> Result<Vec<u8>, ConfProblem> {
        let mut out = Vec::new();
        match &self.indent {
            Some(indent) => {
                let formatter = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
                let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
                doc.serialize(&mut ser).map_err(ConfProblem::Serialize)?;
            }
            None => serde_json::to_writer(&mut out, doc).map_err(ConfProblem::Serialize)?,
        }
        if self.trailing_newline {
            out.push(b'\n');
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> ChainEntry {
        ChainEntry::new(Path::new("/var/run/marrow/cni.sock")).unwrap()
    }

    #[test]
    fn primary_is_the_lexically_first_config_file() {
        let names = [
            "calico-kubeconfig",
            "99-loopback.conf",
            "10-flannel.conflist",
            "05-cilium.conflist.cilium_bak",
            ".10-a.conflist.1.2.marrow-tmp",
            "10-calico.conflist",
            "multus.d",
        ];
        assert_eq!(primary(names), Some("10-calico.conflist"));
        assert_eq!(primary(["a.json", "b.conf"]), Some("a.json"));
        assert_eq!(primary(["kubeconfig", "README"]), None);
        assert_eq!(primary([".conf"]), None, "an extension alone is not a name");
    }

    #[test]
    fn socket_paths_redirect_cni_refuses_are_refused() {
        assert!(ChainEntry::new(Path::new("relative.sock")).is_none());
        let long = format!("/{}", "s".repeat(107));
        assert!(ChainEntry::new(Path::new(&long)).is_none());
        assert!(ChainEntry::new(Path::new(&long[..107])).is_some());
    }

    #[test]
    fn layout_follows_the_original() {
        let tabs = Layout::of(b"{\n\t\"a\": 1\n}\n");
        assert_eq!(tabs.indent.as_deref(), Some("\t"));
        assert!(tabs.trailing_newline);
        let four = Layout::of(b"{\n    \"a\": {\n        \"b\": 1\n    }\n}");
        assert_eq!(four.indent.as_deref(), Some("    "));
        assert!(!four.trailing_newline);
        let compact = Layout::of(b"{\"a\":1}");
        assert_eq!(compact.indent, None);
        assert_eq!(
            compact.render(&serde_json::json!({"a": 1})).unwrap(),
            b"{\"a\":1}"
        );
    }

    #[test]
    fn a_different_socket_is_updated_in_place_and_duplicates_dropped() {
        let text = br#"{"cniVersion":"1.0.0","name":"n","plugins":[
            {"type":"bridge"},
            {"type":"redirect-cni","proxySocket":"/old.sock","proxyTimeoutMs":9000},
            {"type":"portmap"},
            {"type":"redirect-cni"}]}"#;
        let Chain::Write { contents, .. } = chain("a.conflist", text, &entry()).unwrap() else {
            panic!("expected a rewrite");
        };
        let doc: Value = serde_json::from_slice(&contents).unwrap();
        assert_eq!(
            doc["plugins"],
            serde_json::json!([
                {"type": "bridge"},
                {"type": "redirect-cni", "proxySocket": "/var/run/marrow/cni.sock", "proxyTimeoutMs": 9000},
                {"type": "portmap"}
            ])
        );
    }

    #[test]
    fn a_list_of_only_redirect_cni_is_refused() {
        let text = br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"redirect-cni"}]}"#;
        assert!(matches!(
            chain("a.conflist", text, &entry()),
            Err(ConfProblem::NoPrimaryPlugin)
        ));
        let empty = br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#;
        assert!(matches!(
            chain("a.conflist", empty, &entry()),
            Err(ConfProblem::NoPrimaryPlugin)
        ));
    }

    #[test]
    fn header_problems_are_named() {
        let cases: [(&[u8], &str); 6] = [
            (
                br#"{"name":"n","plugins":[{"type":"bridge"}]}"#,
                "cniVersion",
            ),
            (
                br#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"bridge"}]}"#,
                "0.2.0",
            ),
            (
                br#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
                "name",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":{}}"#,
                "not a list",
            ),
            (br#"[1, 2]"#, "not a JSON object"),
            (
                br#"{"cniVersion":"1.0.0","name":"n","bridge":"cni0"}"#,
                "neither",
            ),
        ];
        for (text, want) in cases {
            let err = chain("x.conf", text, &entry()).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }
}
