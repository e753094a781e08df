//! The replay server's server-side apply, `/status` subresource, garbage collection and leader
//! election Leases, cluster-scoped ClusterRoleBindings (by name, deleted with a uid
//! precondition), through the kube client a controller uses.

use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use replay_apiserver::ApiServer;
use serde_json::{Value, json};

fn api(server: &ApiServer, group: &str, kind: &str) -> Api<DynamicObject> {
    let version = "v1";
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(server.client(), "shop", &resource)
}

fn apply() -> PatchParams {
    PatchParams::apply("test-manager").force()
}

fn service(selector: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"a": "1"}},
        "spec": {"selector": {"app": selector},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn patches(server: &ApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with("PATCH"))
        .count()
}

#[tokio::test]
async fn an_apply_creates_then_merges_and_a_no_op_changes_nothing() {
    let server = ApiServer::start().await;
    let services = api(&server, "", "Service");
    let created = services
        .patch("web", &apply(), &Patch::Apply(service("web")))
        .await
        .unwrap();
    let stored = server.get("v1", "Service", "shop", "web").unwrap();
    // What the API server adds: identity, a ClusterIP, a version.
    assert!(stored["metadata"]["uid"].is_string());
    assert!(
        stored["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.96.")
    );
    assert_eq!(stored["spec"]["type"], "ClusterIP");
    assert_eq!(
        created.metadata.resource_version,
        stored["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_owned)
    );
    // The same apply again: no new version (no watch event).
    let again = services
        .patch("web", &apply(), &Patch::Apply(service("web")))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        created.metadata.resource_version
    );
    // A change: merged in, new version, the uid and ClusterIP kept.
    let mut changed = service("shop");
    changed["metadata"]["labels"] = json!({"b": "2"});
    services
        .patch("web", &apply(), &Patch::Apply(changed))
        .await
        .unwrap();
    let after = server.get("v1", "Service", "shop", "web").unwrap();
    assert_ne!(
        after["metadata"]["resourceVersion"],
        stored["metadata"]["resourceVersion"]
    );
    assert_eq!(after["metadata"]["uid"], stored["metadata"]["uid"]);
    assert_eq!(after["spec"]["clusterIP"], stored["spec"]["clusterIP"]);
    assert_eq!(after["spec"]["selector"], json!({"app": "shop"}));
    assert_eq!(after["metadata"]["labels"], json!({"a": "1", "b": "2"}));
    assert_eq!(patches(&server), 3);
}

#[tokio::test]
async fn an_apply_is_refused_as_the_api_server_refuses_it() {
    let server = ApiServer::start().await;
    let services = api(&server, "", "Service");
    // A merge patch is not an apply; an apply needs a field manager; the body must be the
    // object the path names.
    let merge = services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(service("web")),
        )
        .await;
    assert!(
        matches!(merge, Err(kube::Error::Api(ref s)) if s.code == 415),
        "{merge:?}"
    );
    let no_manager = services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Apply(service("web")),
        )
        .await;
    assert!(
        matches!(no_manager, Err(kube::Error::Api(ref s)) if s.code == 400),
        "{no_manager:?}"
    );
    let other = services
        .patch("other", &apply(), &Patch::Apply(service("web")))
        .await;
    assert!(
        matches!(other, Err(kube::Error::Api(ref s)) if s.code == 400),
        "{other:?}"
    );
    assert!(server.get("v1", "Service", "shop", "web").is_none());
    assert!(server.get("v1", "Service", "shop", "other").is_none());
}

#[tokio::test]
async fn status_takes_only_the_status_and_the_object_ignores_it() {
    let server = ApiServer::start().await;
    server.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "shop"},
        "spec": {"gatewayClassName": "istio-waypoint"}}),
    );
    let gateways = api(&server, "gateway.networking.k8s.io", "Gateway");
    let body = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "shop"},
        "spec": {"gatewayClassName": "changed"},
        "status": {"addresses": [{"type": "IPAddress", "value": "10.96.0.9"}]}});
    gateways
        .patch_status("waypoint", &apply(), &Patch::Apply(&body))
        .await
        .unwrap();
    let stored = server
        .get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "shop",
            "waypoint",
        )
        .unwrap();
    assert_eq!(stored["status"]["addresses"][0]["value"], "10.96.0.9");
    assert_eq!(stored["spec"]["gatewayClassName"], "istio-waypoint");
    // No status for an absent object.
    let absent = gateways
        .patch_status("nope", &apply(), &Patch::Apply(&body))
        .await;
    assert!(
        matches!(absent, Err(kube::Error::Api(ref s)) if s.code == 404 || s.code == 400),
        "{absent:?}"
    );
}

#[tokio::test]
async fn deleting_an_owner_deletes_what_it_owns_and_nothing_else() {
    let server = ApiServer::start().await;
    server.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "shop"}, "spec": {}}),
    );
    let gateway = server
        .get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "shop",
            "waypoint",
        )
        .unwrap();
    let uid = gateway["metadata"]["uid"].as_str().unwrap().to_owned();
    let owned = |name: &str, uid: &str| {
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": "shop",
            "ownerReferences": [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "name": "waypoint", "uid": uid}]}})
    };
    server.apply(owned("mine", &uid));
    server.apply(owned("someone-elses", "another-uid"));
    // And what the owned object owns in turn.
    let mine = server.get("v1", "ServiceAccount", "shop", "mine").unwrap();
    let grandchild = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "grandchild", "namespace": "shop",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ServiceAccount", "name": "mine",
                "uid": mine["metadata"]["uid"]}]}});
    server.apply(grandchild);
    server.delete(&gateway);
    assert!(server.get("v1", "ServiceAccount", "shop", "mine").is_none());
    assert!(
        server
            .get("apps/v1", "Deployment", "shop", "grandchild")
            .is_none()
    );
    assert!(
        server
            .get("v1", "ServiceAccount", "shop", "someone-elses")
            .is_some()
    );
}

#[tokio::test]
async fn a_lease_is_created_once_and_replaced_only_from_its_current_version() {
    let server = ApiServer::start().await;
    let gvk = GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease");
    let leases: Api<DynamicObject> = Api::namespaced_with(
        server.client(),
        "marrow-system",
        &ApiResource::from_gvk(&gvk),
    );
    let lease: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "election", "namespace": "marrow-system"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}))
    .unwrap();
    let params = kube::api::PostParams::default();
    let created = leases.create(&params, &lease).await.unwrap();
    let code = |e: kube::Error| match e {
        kube::Error::Api(status) => status.code,
        other => panic!("not an API error: {other}"),
    };
    assert_eq!(code(leases.create(&params, &lease).await.unwrap_err()), 409);

    let mut renewed = created.clone();
    renewed.data["spec"]["holderIdentity"] = json!("b");
    let stored = leases.replace("election", &params, &renewed).await.unwrap();
    assert_eq!(stored.data["spec"]["holderIdentity"], "b");
    // The version read before that write is stale now: refused, the stored lease unchanged.
    let mut stale = created;
    stale.data["spec"]["holderIdentity"] = json!("c");
    assert_eq!(
        code(
            leases
                .replace("election", &params, &stale)
                .await
                .unwrap_err()
        ),
        409
    );
    let now = leases.get("election").await.unwrap();
    assert_eq!(now.data["spec"]["holderIdentity"], "b");
    // A forced conflict (another writer first) is answered once, then the write goes through.
    server.conflict_lease_updates(1);
    assert_eq!(
        code(leases.replace("election", &params, &now).await.unwrap_err()),
        409
    );
    leases.replace("election", &params, &now).await.unwrap();
}

#[tokio::test]
async fn a_cluster_role_binding_is_applied_read_listed_and_deleted_by_name() {
    let server = ApiServer::start().await;
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
    ));
    let bindings: Api<DynamicObject> = Api::all_with(server.client(), &resource);
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding", "metadata": {"name": "readers"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
            "name": "marrow-waypoint"},
        "subjects": [{"kind": "ServiceAccount", "name": "waypoint", "namespace": "shop"}]});
    let created = bindings
        .patch("readers", &apply(), &Patch::Apply(&binding))
        .await
        .unwrap();
    assert!(created.metadata.namespace.is_none());
    let uid = created.metadata.uid.clone().unwrap();
    // Read by name, listed, and absent names are 404.
    let read = bindings.get("readers").await.unwrap();
    assert_eq!(read.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(read.data["subjects"][0]["name"], "waypoint");
    let listed = bindings.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(bindings.get_opt("others").await.unwrap().is_none());
    // A delete whose uid precondition names another object is refused; the right one deletes.
    let other = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("someone-else".to_owned()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let refused = bindings.delete("readers", &other).await.unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 409),
        "{refused}"
    );
    assert!(
        server
            .get(
                "rbac.authorization.k8s.io/v1",
                "ClusterRoleBinding",
                "",
                "readers"
            )
            .is_some()
    );
    let mine = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    bindings.delete("readers", &mine).await.unwrap();
    assert!(
        server
            .get(
                "rbac.authorization.k8s.io/v1",
                "ClusterRoleBinding",
                "",
                "readers"
            )
            .is_none()
    );
    let gone = bindings.delete("readers", &mine).await.unwrap_err();
    assert!(
        matches!(&gone, kube::Error::Api(s) if s.code == 404),
        "{gone}"
    );
}
