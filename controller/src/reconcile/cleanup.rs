//! A waypoint's ClusterRoleBinding after its Gateway: a cluster-scoped object cannot be owned
//! by a namespaced Gateway (the garbage collector refuses it), so the controller deletes it
//! itself, only while it leads, only the binding it saw (its uid as a precondition), never one
//! that is not ours ([`crate::binding::ours`]).

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{DeleteParams, Preconditions};
use serde_json::Value;
use tracing::{info, warn};

use super::{Context, Kind};
use crate::binding;
use crate::error::ControllerError;
use crate::gateway;
use crate::telemetry::KindLabels;

/// Deletes the binding of the Gateway `key` (gone, or no waypoint any more) if there is one
/// and it is ours; one of that name that is not ours is left alone.
pub(super) async fn delete_binding(context: &Context, key: &str) -> Result<(), ControllerError> {
    let (namespace, name) = key.split_once('/').unwrap_or_default();
    let binding_key = format!("/{}", binding::name(namespace, name));
    match context.cached(Kind::ClusterRoleBinding, &binding_key) {
        Some(existing) if binding::ours(&existing) => delete(context, &existing).await,
        _ => Ok(()),
    }
}

/// Deletes every binding of ours whose Gateway is no waypoint Gateway now (deleted while no
/// replica was writing): a binding has no owner for the garbage collector to follow. A refused
/// (malformed) waypoint Gateway keeps its binding, as it keeps its other objects.
pub(super) async fn sweep_bindings(context: &Context) {
    let wanted: BTreeSet<String> = context
        .caches()
        .objects
        .get(&Kind::Gateway)
        .into_iter()
        .flat_map(BTreeMap::values)
        .filter(|g| g["spec"]["gatewayClassName"] == gateway::WAYPOINT_CLASS)
        .filter_map(|g| {
            let meta = &g["metadata"];
            Some(binding::name(
                meta["namespace"].as_str()?,
                meta["name"].as_str()?,
            ))
        })
        .collect();
    let stale: Vec<Value> = context
        .caches()
        .objects
        .get(&Kind::ClusterRoleBinding)
        .into_iter()
        .flat_map(BTreeMap::values)
        .filter(|b| binding::ours(b))
        .filter(|b| {
            b["metadata"]["name"]
                .as_str()
                .is_some_and(|n| !wanted.contains(n))
        })
        .cloned()
        .collect();
    for binding in stale {
        if let Err(error) = delete(context, &binding).await {
            warn!(%error, "deleting a stale waypoint binding failed; retried at the next start");
        }
    }
}

/// Deletes one binding of ours, if this replica leads; only the one seen (its uid as a
/// precondition), so one made again meanwhile is not taken with it. Already gone is done.
async fn delete(context: &Context, binding: &Value) -> Result<(), ControllerError> {
    if !context.leading() {
        return Ok(());
    }
    let kind = Kind::ClusterRoleBinding;
    let name = binding["metadata"]["name"].as_str().unwrap_or_default();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: binding["metadata"]["uid"].as_str().map(str::to_owned),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let kind_label = KindLabels { kind: kind.name() };
    match kind.api(&context.client, "").delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(source) => {
            context
                .telemetry
                .api_errors
                .get_or_create(&kind_label)
                .inc();
            return Err(ControllerError::Delete {
                kind: kind.name(),
                name: name.to_owned(),
                source,
            });
        }
    }
    context.telemetry.deleted.get_or_create(&kind_label).inc();
    info!(kind = kind.name(), name, "deleted: its gateway is gone");
    Ok(())
}
