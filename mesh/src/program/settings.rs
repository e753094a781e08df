//! The settings rows every program over this core has (the state source, the trust domain, the
//! certificate source), declared once: [`program_settings!`](crate::program_settings) is
//! `marrow_settings::settings!` with these rows appended, and gives the program
//! `ca_settings()` and `state_settings()` for [`certificates`](super::certificates) and
//! [`start_state`](super::start_state). Flags, variables and defaults are documented (README)
//! and used by manifests and tests: they must not change.

/// `marrow_settings::settings!` with the rows every program over this core shares appended
/// (`--state-file`, `--state-poll-ms`, `--kube`, `--root-namespace`, `--trust-domain`,
/// `--ca-dir`, `--ca-address`, `--ca-roots`, `--ca-token-file`, `--ca-server-name`,
/// `--ca-roots-poll-ms`, `--cert-ttl-secs`), and `ca_settings()` / `state_settings(node)`
/// reading them.
#[macro_export]
macro_rules! program_settings {
    (
        $(#[$($meta:tt)*])*
        pub struct $name:ident { $($rows:tt)* }
    ) => {
        $crate::program::__private::settings! {
            $(#[$($meta)*])*
            pub struct $name {
                $($rows)*
                /// Kubernetes YAML of the cluster's objects (Namespaces, Pods, Services,
                /// policies…), reloaded when it changes; instead of --kube.
                state_file: ::std::option::Option<::std::path::PathBuf> = None,
                    ("state-file", "MARROW_STATE_FILE", $crate::program::__private::parse::SOME_PATH),
                /// How often --state-file is checked for a change, in milliseconds.
                state_poll: ::std::time::Duration = ::std::time::Duration::from_secs(1),
                    ("state-poll-ms", "MARROW_STATE_POLL_MS", $crate::program::__private::parse::MILLIS),
                /// Watch the Kubernetes API server (in-cluster, or KUBECONFIG) instead of --state-file.
                kube: bool = false,
                    ("kube", "MARROW_KUBE", $crate::program::__private::parse::SWITCH),
                /// Namespace whose policies apply mesh-wide (Istio's root namespace).
                root_namespace: ::std::string::String =
                    $crate::policy::DEFAULT_ROOT_NAMESPACE.to_owned(),
                    ("root-namespace", "MARROW_ROOT_NAMESPACE", $crate::program::__private::parse::TEXT),
                /// The mesh's SPIFFE trust domain.
                trust_domain: ::std::string::String =
                    $crate::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
                    ("trust-domain", "MARROW_TRUST_DOMAIN", $crate::program::__private::parse::TEXT),
                /// Local mesh CA directory (ca-cert.pem, ca-key.pem) that signs this program's
                /// certificates in process: the CA key on this machine (demos, tests).
                ca_dir: ::std::option::Option<::std::path::PathBuf> = None,
                    ("ca-dir", "MARROW_CA_DIR", $crate::program::__private::parse::SOME_PATH),
                /// A CA speaking Istio's protocol (istiod, istio-csr, `node-proxy ca serve`), e.g.
                /// https://marrow-ca.marrow-system.svc:15012; instead of --ca-dir: no CA key here.
                ca_address: ::std::option::Option<::std::string::String> = None,
                    ("ca-address", "MARROW_CA_ADDRESS", $crate::program::__private::parse::SOME_URL),
                /// With --ca-address: PEM root bundle the CA and all peers chain to (during a root
                /// rotation old and new); re-read when it changes.
                ca_roots: ::std::option::Option<::std::path::PathBuf> = None,
                    ("ca-roots", "MARROW_CA_ROOTS", $crate::program::__private::parse::SOME_PATH),
                /// With --ca-address: this program's projected ServiceAccount token (audience
                /// istio-ca).
                ca_token_file: ::std::path::PathBuf =
                    ::std::path::PathBuf::from("/var/run/secrets/tokens/istio-token"),
                    ("ca-token-file", "MARROW_CA_TOKEN_FILE", $crate::program::__private::parse::PATH),
                /// With --ca-address: the name the CA's serving certificate must carry (default:
                /// the address's host).
                ca_server_name: ::std::option::Option<::std::string::String> = None,
                    ("ca-server-name", "MARROW_CA_SERVER_NAME", $crate::program::__private::parse::SOME_TEXT),
                /// How often --ca-roots is checked for changes (a root rotation), in milliseconds.
                ca_roots_poll: ::std::time::Duration = ::std::time::Duration::from_secs(5),
                    ("ca-roots-poll-ms", "MARROW_CA_ROOTS_POLL_MS", $crate::program::__private::parse::MILLIS),
                /// Lifetime of the certificates, in seconds: what the local CA signs, what a
                /// remote CA is asked for (it may sign shorter); renewed at half-life.
                cert_ttl: ::std::time::Duration = ::std::time::Duration::from_secs(24 * 60 * 60),
                    ("cert-ttl-secs", "MARROW_CERT_TTL_SECS", $crate::program::__private::parse::SECS),
            }
        }

        impl $name {
            /// The certificate source's settings (no extra headers to the CA).
            pub fn ca_settings(&self) -> $crate::program::CaSettings {
                $crate::program::CaSettings {
                    ca_dir: self.ca_dir.clone(),
                    ca_address: self.ca_address.clone(),
                    ca_roots: self.ca_roots.clone(),
                    ca_token_file: self.ca_token_file.clone(),
                    ca_server_name: self.ca_server_name.clone(),
                    ca_roots_poll: self.ca_roots_poll,
                    ca_headers: ::std::vec::Vec::new(),
                    cert_ttl: self.cert_ttl,
                }
            }

            /// The state source's settings; from the API server, only `node_name`'s pods in
            /// full when given.
            pub fn state_settings(
                &self,
                node_name: ::std::option::Option<::std::string::String>,
            ) -> $crate::program::StateSettings {
                $crate::program::StateSettings {
                    state_file: self.state_file.clone(),
                    state_poll: self.state_poll,
                    root_namespace: self.root_namespace.clone(),
                    node_name,
                }
            }
        }
    };
}
