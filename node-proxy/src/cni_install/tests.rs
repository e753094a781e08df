//! The installer against real CNIs' configs (`testdata/`): chained once, idempotent,
//! uninstall restores the original, bad configs refused untouched, `.conf` converted.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::*;

const SOCKET: &str = "/var/run/marrow/cni.sock";
const PLUGIN_BYTES: &[u8] = b"\x7fELF pretend redirect-cni";

/// A node's CNI directories in a temporary directory, filled from `testdata/<sample>`.
struct Node {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    conf: PathBuf,
    plugin: PathBuf,
}

impl Node {
    fn new(sample: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf, plugin) = (
            dir.path().join("opt/cni/bin"),
            dir.path().join("etc/cni/net.d"),
            dir.path().join("redirect-cni"),
        );
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&conf).unwrap();
        fs::write(&plugin, PLUGIN_BYTES).unwrap();
        if !sample.is_empty() {
            let from = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/cni_install/testdata")
                .join(sample);
            for entry in fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                fs::copy(entry.path(), conf.join(entry.file_name())).unwrap();
            }
        }
        Node {
            _dir: dir,
            bin,
            conf,
            plugin,
        }
    }

    fn installer(&self) -> Installer {
        Installer::new(
            self.bin.clone(),
            self.conf.clone(),
            self.plugin.clone(),
            Path::new(SOCKET),
        )
        .unwrap()
    }

    /// Every file of the conf dir and its bytes.
    fn conf_files(&self) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(&self.conf)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    fn read_json(&self, name: &str) -> Value {
        serde_json::from_slice(&fs::read(self.conf.join(name)).unwrap()).unwrap()
    }
}

fn ours() -> Value {
    json!({"type": "redirect-cni", "proxySocket": SOCKET})
}

fn keys(doc: &Value) -> Vec<String> {
    doc.as_object().unwrap().keys().cloned().collect()
}

/// (sample directory, its primary config, bytes come back identical after uninstall)
const SAMPLES: [(&str, &str, bool); 4] = [
    ("bridge", "10-containerd-net.conflist", false),
    ("flannel", "10-flannel.conflist", true),
    ("calico", "10-calico.conflist", true),
    ("cilium", "05-cilium.conflist", false),
];

#[test]
fn each_sample_is_chained_once_as_the_last_plugin() {
    for (sample, primary, _) in SAMPLES {
        let node = Node::new(sample);
        let before = node.conf_files();
        let original = node.read_json(primary);

        let (copied, chained) = node.installer().install().unwrap();
        assert_eq!(copied, Copied::Written, "{sample}");
        assert_eq!(
            chained,
            Chained::Inserted {
                config: node.conf.join(primary),
                replaced: None
            },
            "{sample}"
        );
        let after = node.read_json(primary);
        let mut want = original["plugins"].as_array().unwrap().clone();
        want.push(ours());
        assert_eq!(after["plugins"], Value::Array(want), "{sample}");
        assert_eq!(keys(&after), keys(&original), "{sample}: key order kept");
        for (i, plugin) in original["plugins"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                keys(&after["plugins"][i]),
                keys(plugin),
                "{sample}: plugin {i}"
            );
        }
        // Every other file is untouched and nothing was left behind.
        let now = node.conf_files();
        assert_eq!(now.len(), before.len(), "{sample}: {:?}", now.keys());
        for (name, bytes) in &before {
            if name != primary {
                assert_eq!(&now[name], bytes, "{sample}: {name} changed");
            }
        }
        let binary = node.bin.join("redirect-cni");
        assert_eq!(fs::read(&binary).unwrap(), PLUGIN_BYTES);
        assert_eq!(
            fs::metadata(&binary).unwrap().permissions().mode() & 0o7777,
            0o755
        );
    }
}

#[test]
fn a_second_install_changes_nothing() {
    for (sample, primary, _) in SAMPLES {
        let node = Node::new(sample);
        node.installer().install().unwrap();
        let files = node.conf_files();
        let inode = fs::metadata(node.conf.join(primary)).unwrap().ino();
        let bin_inode = fs::metadata(node.bin.join("redirect-cni")).unwrap().ino();

        let (copied, chained) = node.installer().install().unwrap();
        assert_eq!(copied, Copied::Unchanged, "{sample}");
        assert_eq!(
            chained,
            Chained::Already {
                config: node.conf.join(primary)
            }
        );
        assert_eq!(node.conf_files(), files, "{sample}: bytes identical");
        assert_eq!(
            fs::metadata(node.conf.join(primary)).unwrap().ino(),
            inode,
            "{sample}: not even rewritten"
        );
        assert_eq!(
            fs::metadata(node.bin.join("redirect-cni")).unwrap().ino(),
            bin_inode
        );
    }
}

#[test]
fn uninstall_restores_the_original() {
    for (sample, primary, same_bytes) in SAMPLES {
        let node = Node::new(sample);
        let before = node.conf_files();
        let original = node.read_json(primary);
        node.installer().install().unwrap();

        let done = uninstall(&node.bin, &node.conf).unwrap();
        assert_eq!(done.unchained, vec![node.conf.join(primary)], "{sample}");
        assert!(
            done.left_alone.is_empty(),
            "{sample}: {:?}",
            done.left_alone
        );
        assert!(done.binary_removed);
        assert!(!node.bin.join("redirect-cni").exists());
        let restored = node.read_json(primary);
        assert_eq!(restored["plugins"], original["plugins"], "{sample}");
        assert_eq!(restored, original, "{sample}");
        assert_eq!(keys(&restored), keys(&original), "{sample}");
        if same_bytes {
            assert_eq!(node.conf_files(), before, "{sample}: byte for byte");
        }
        // Uninstalling again finds nothing to do.
        let again = uninstall(&node.bin, &node.conf).unwrap();
        assert!(again.unchained.is_empty() && !again.binary_removed);
    }
}

#[test]
fn the_entry_is_what_redirect_cni_reads() {
    let node = Node::new("flannel");
    node.installer().install().unwrap();
    let list = node.read_json("10-flannel.conflist");
    // libcni hands each plugin its entry plus the list's cniVersion and name.
    let mut conf = list["plugins"].as_array().unwrap().last().unwrap().clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    let parsed = redirect_cni::cni::NetConf::parse(&serde_json::to_vec(&conf).unwrap()).unwrap();
    assert_eq!(parsed.proxy_socket, Path::new(SOCKET));
    assert_eq!(conf["type"], PLUGIN_TYPE);
}

#[test]
fn a_single_plugin_conf_becomes_a_conflist() {
    let node = Node::new("cilium-conf");
    let original = node.read_json("05-cilium.conf");

    let (_, chained) = node.installer().install().unwrap();
    assert_eq!(
        chained,
        Chained::Inserted {
            config: node.conf.join("05-cilium.conflist"),
            replaced: Some(node.conf.join("05-cilium.conf")),
        }
    );
    assert!(!node.conf.join("05-cilium.conf").exists());
    let list = node.read_json("05-cilium.conflist");
    assert_eq!(
        list,
        json!({
            "cniVersion": "0.3.1",
            "name": "cilium",
            "plugins": [
                {"type": "cilium-cni", "enable-debug": false, "log-file": "/var/run/cilium/cilium-cni.log"},
                ours()
            ]
        })
    );
    assert_eq!(keys(&list), ["cniVersion", "name", "plugins"]);
    assert_eq!(
        keys(&list["plugins"][0]),
        ["type", "enable-debug", "log-file"]
    );

    // Idempotent on the converted file.
    let files = node.conf_files();
    let (_, again) = node.installer().install().unwrap();
    assert!(matches!(again, Chained::Already { .. }));
    assert_eq!(node.conf_files(), files);

    // Cilium writes its .conf again: it is the primary once more (".conf" < ".conflist") and
    // is converted over the stale list.
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/cni_install/testdata/cilium-conf/05-cilium.conf"),
        node.conf.join("05-cilium.conf"),
    )
    .unwrap();
    let (_, rewritten) = node.installer().install().unwrap();
    assert!(matches!(
        rewritten,
        Chained::Inserted {
            replaced: Some(_),
            ..
        }
    ));
    assert_eq!(
        node.conf_files().keys().collect::<Vec<_>>(),
        ["05-cilium.conflist"]
    );

    // Uninstall leaves the one-plugin list: the same network as the original .conf.
    uninstall(&node.bin, &node.conf).unwrap();
    let list = node.read_json("05-cilium.conflist");
    let mut plugin = original.clone();
    let plugin = plugin.as_object_mut().unwrap();
    plugin.shift_remove("cniVersion");
    plugin.shift_remove("name");
    assert_eq!(list["plugins"], json!([plugin]));
    assert_eq!(list["cniVersion"], original["cniVersion"]);
    assert_eq!(list["name"], original["name"]);
}

#[test]
fn a_json_config_is_converted_like_a_conf() {
    let node = Node::new("");
    fs::write(
        node.conf.join("10-net.json"),
        br#"{"cniVersion":"1.0.0","name":"net","type":"ptp","ipam":{"type":"host-local"}}"#,
    )
    .unwrap();
    node.installer().install().unwrap();
    assert_eq!(
        node.conf_files().keys().collect::<Vec<_>>(),
        ["10-net.conflist"]
    );
    let text = fs::read(node.conf.join("10-net.conflist")).unwrap();
    assert!(!text.contains(&b'\n'), "a compact original stays compact");
}

#[test]
fn bad_configs_are_refused_and_left_untouched() {
    let cases: [(&str, &str, &str); 9] = [
        (
            "10-a.conflist",
            r#"{"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}"#,
            "not valid JSON",
        ),
        ("10-a.conflist", "", "not valid JSON"),
        (
            "10-a.conflist",
            r#"{"cniVersion": "1.0.0", "name": "a", "type": "bridge"}"#,
            "no `plugins` list",
        ),
        (
            "10-a.conflist",
            r#"{"cniVersion": "1.0.0", "name": "a", "plugins": {"type": "bridge"}}"#,
            "`plugins` is not a list",
        ),
        (
            "10-a.conflist",
            r#"{"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}, "portmap"]}"#,
            "plugins[1] is not a JSON object",
        ),
        (
            "10-a.conflist",
            r#"{"cniVersion": "1.0.0", "name": "a", "plugins": [{"bridge": "cni0"}]}"#,
            "plugins[0] has no string `type`",
        ),
        (
            "10-a.conflist",
            r#"{"cniVersion": "0.2.0", "name": "a", "plugins": [{"type": "bridge"}]}"#,
            "cniVersion \"0.2.0\" is not one redirect-cni speaks",
        ),
        ("10-a.conf", r#"["bridge"]"#, "not a JSON object"),
        (
            "10-a.conf",
            r#"{"cniVersion": "1.0.0", "name": "a", "bridge": "cni0"}"#,
            "neither `plugins` nor `type`",
        ),
    ];
    for (name, text, reason) in cases {
        let node = Node::new("");
        fs::write(node.conf.join(name), text).unwrap();
        let before = node.conf_files();
        let err = node.installer().chain().unwrap_err();
        assert!(
            matches!(&err, CniInstallError::Config { path, .. } if path == &node.conf.join(name)),
            "{name} {text}: {err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(name), "{message:?} names the file");
        assert!(message.contains(reason), "{message:?} says {reason:?}");
        assert!(message.contains("left untouched"), "{message:?}");
        assert_eq!(node.conf_files(), before, "{name} {text}: untouched");
        // `check` reports the same problem; uninstall leaves the file alone too.
        assert!(node.installer().check().is_err());
        uninstall(&node.bin, &node.conf).unwrap();
        assert_eq!(
            node.conf_files(),
            before,
            "{name} {text}: uninstall left it"
        );
    }
}

#[test]
fn a_missing_or_empty_conf_dir_is_a_clear_error() {
    let node = Node::new("");
    let err = node.installer().chain().unwrap_err();
    assert!(matches!(err, CniInstallError::NoPrimary { .. }), "{err:?}");
    assert!(err.to_string().contains(&node.conf.display().to_string()));

    fs::write(node.conf.join("calico-kubeconfig"), "not a config").unwrap();
    assert!(matches!(
        node.installer().chain(),
        Err(CniInstallError::NoPrimary { .. })
    ));

    fs::remove_dir_all(&node.conf).unwrap();
    let err = node.installer().install().unwrap_err();
    assert!(matches!(err, CniInstallError::ConfDir { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "listing the CNI config directory {}",
            node.conf.display()
        )),
        "{err}"
    );
    assert!(matches!(
        uninstall(&node.bin, &node.conf),
        Err(CniInstallError::ConfDir { .. })
    ));
}

#[test]
fn the_lexically_first_config_is_chained_and_only_it() {
    let node = Node::new("calico");
    let cilium = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/cni_install/testdata/cilium/05-cilium.conflist");
    fs::copy(&cilium, node.conf.join("05-cilium.conflist")).unwrap();
    let calico = fs::read(node.conf.join("10-calico.conflist")).unwrap();

    let (_, chained) = node.installer().install().unwrap();
    assert_eq!(
        chained,
        Chained::Inserted {
            config: node.conf.join("05-cilium.conflist"),
            replaced: None
        }
    );
    assert_eq!(
        fs::read(node.conf.join("10-calico.conflist")).unwrap(),
        calico
    );
}

#[test]
fn uninstall_takes_the_entry_out_of_every_config_and_reports_unreadable_ones() {
    let node = Node::new("flannel");
    node.installer().install().unwrap();
    let chained = fs::read(node.conf.join("10-flannel.conflist")).unwrap();
    // The primary changed since install: a new first file, and a broken one.
    fs::write(node.conf.join("00-broken.conf"), "{").unwrap();
    fs::write(
        node.conf.join("01-other.conflist"),
        br#"{"cniVersion":"1.0.0","name":"o","plugins":[{"type":"ptp"},{"type":"redirect-cni"}]}"#,
    )
    .unwrap();
    assert!(!chained.is_empty());

    let done = uninstall(&node.bin, &node.conf).unwrap();
    assert_eq!(
        done.unchained,
        [
            node.conf.join("01-other.conflist"),
            node.conf.join("10-flannel.conflist")
        ]
    );
    assert_eq!(done.left_alone.len(), 1);
    assert_eq!(done.left_alone[0].0, node.conf.join("00-broken.conf"));
    assert_eq!(fs::read(node.conf.join("00-broken.conf")).unwrap(), b"{");
    assert_eq!(
        node.read_json("01-other.conflist")["plugins"],
        json!([{"type": "ptp"}])
    );
}

#[test]
fn the_config_keeps_its_mode() {
    let node = Node::new("flannel");
    let path = node.conf.join("10-flannel.conflist");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    node.installer().install().unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o600
    );
}

#[test]
fn check_says_what_is_missing() {
    let node = Node::new("calico");
    let installer = node.installer();
    assert!(matches!(
        installer.check(),
        Err(CniInstallError::NoBinary(_))
    ));
    installer.install_binary().unwrap();
    let err = installer.check().unwrap_err();
    assert!(matches!(err, CniInstallError::NotChained { .. }), "{err:?}");
    installer.chain().unwrap();
    assert_eq!(
        installer.check().unwrap(),
        node.conf.join("10-calico.conflist")
    );
    // Another socket is not "chained".
    let other = Installer::new(
        node.bin.clone(),
        node.conf.clone(),
        node.plugin.clone(),
        Path::new("/run/other.sock"),
    )
    .unwrap();
    assert!(other.check().is_err());
}

#[test]
fn a_bad_socket_is_refused() {
    let node = Node::new("");
    let err = Installer::new(
        node.bin.clone(),
        node.conf.clone(),
        node.plugin.clone(),
        Path::new("cni.sock"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--socket"), "{err}");
}

#[tokio::test]
async fn watch_puts_the_entry_back_and_removes_nothing_on_shutdown() {
    let node = Node::new("calico");
    let primary = node.conf.join("10-calico.conflist");
    let pristine = fs::read(&primary).unwrap();
    let installer = node.installer();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watching = {
        let installer = installer.clone();
        tokio::spawn(async move {
            installer
                .watch(std::time::Duration::from_millis(20), async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let chained = || installer.check().is_ok();
    wait_for(chained).await;
    // Calico's install-cni rewrites its config (e.g. after an upgrade), dropping our entry.
    fs::write(&primary, &pristine).unwrap();
    assert!(!chained());
    wait_for(chained).await;
    // The binary vanishes (a node clean-up): it comes back.
    fs::remove_file(node.bin.join("redirect-cni")).unwrap();
    wait_for(|| node.bin.join("redirect-cni").exists()).await;

    stop.send(()).unwrap();
    watching.await.unwrap().unwrap();
    assert!(chained(), "shutdown removes nothing");
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 2 s");
}
