//! marrow's node proxy: eBPF capture of enrolled pods, in-pod listeners, and the data path.
//!
//! Modules own one concern each: [`capture`] the kernel programs and maps, [`netns`] switching
//! into pod namespaces, [`inpod`] enrollment, [`proxy`] the data path, [`metrics`] and [`http`]
//! what operators scrape, [`admin`] what they ask (the admin API and its client), [`config`] the settings.

pub mod admin;
pub mod app;
pub mod ca;
pub mod capture;
pub mod cni_install;
pub mod config;
pub mod handoff;
pub mod inpod;
pub mod metrics;
pub mod netns;
pub mod proxy;
pub mod socket;
pub mod upgrade;

// The shared core, re-exported under its old paths while the programs move over to it.
pub use marrow_mesh::{
    apiserver, drain, explain, hbone, http, identity, objects, policy, state, telemetry, tls,
};
