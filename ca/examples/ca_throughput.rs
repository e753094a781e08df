//! How many certificates `node-proxy ca serve` signs per second, and at what latency: the CA
//! in process with the replay API server answering its TokenReviews and pod lookups (so the
//! figures include that server's work, on the same cores), C clients on one TLS channel each
//! asking for a node proxy's pod identity (a fresh P-256 CSR per request, made before the clock
//! starts) for D seconds. The token cache is off unless `--cached`: every request then costs a
//! TokenReview, a pod GET and a pod list, as a cold start would.
//!
//! `cargo run --release -p node-proxy --example ca_throughput -- [CLIENTS] [SECONDS] [--cached]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use marrow_ca::{self as ca, CaSettings, CaTelemetry};
use marrow_mesh::identity::istio_ca::IMPERSONATED_IDENTITY;
use marrow_mesh::identity::istio_ca::proto::IstioCertificateRequest;
use marrow_mesh::identity::istio_ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use marrow_mesh::identity::{TrustDomain, create_ca};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use replay_apiserver::{ApiServer, objects};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const TOKEN: &str = "token-node-proxy-a";
const IDENTITY: &str = "spiffe://cluster.local/ns/shop/sa/cart";

fn csr() -> anyhow::Result<String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(IDENTITY.try_into()?)];
    Ok(params.serialize_request(&key)?.pem()?)
}

fn request(csr: String) -> anyhow::Result<tonic::Request<IstioCertificateRequest>> {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        IMPERSONATED_IDENTITY.to_owned(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(IDENTITY.to_owned())),
        },
    );
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: Some(prost_types::Struct { fields }),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse()?);
    Ok(request)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cached = args.iter().any(|a| a == "--cached");
    let numbers: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let clients = usize::try_from(numbers.first().copied().unwrap_or(8))?;
    let seconds = numbers.get(1).copied().unwrap_or(5);

    let api = ApiServer::start().await;
    api.apply(objects::pod(
        "marrow-system",
        "node-proxy-a",
        "node-a",
        "192.168.0.10",
        "node-proxy",
    ));
    api.apply(objects::pod("shop", "cart-1", "node-a", "10.0.1.5", "cart"));
    api.add_token(
        TOKEN,
        &["istio-ca"],
        objects::service_account_user(
            "marrow-system",
            "node-proxy",
            Some(("node-proxy-a", "uid-marrow-system-node-proxy-a", "node-a")),
        ),
    );
    let dir = tempfile::tempdir()?;
    let files = create_ca(
        &dir.path().join("ca"),
        &TrustDomain::default(),
        Duration::from_secs(86_400),
    )?;
    let root = std::fs::read_to_string(&files.cert)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let telemetry = Arc::new(CaTelemetry::default());
    let settings = CaSettings {
        max_concurrent_requests: clients.max(1),
        token_review_ttl: if cached {
            Duration::from_secs(60)
        } else {
            Duration::ZERO
        },
        ..CaSettings::default()
    };
    tokio::spawn(ca::serve(
        api.client(),
        files,
        settings,
        listener,
        telemetry.clone(),
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let cpu_before = cpu_time();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&root))
            .domain_name("marrow-ca.marrow-system.svc");
        let channel = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect()
            .await?;
        // Enough CSRs for the run, made before the clock matters (key generation is the
        // proxy's cost, not the CA's).
        let csrs: Vec<String> = (0..8000).map(|_| csr()).collect::<Result<_, _>>()?;
        tasks.push(tokio::spawn(async move {
            let mut client = IstioCertificateServiceClient::new(channel);
            let mut latencies = Vec::new();
            for csr in csrs {
                if Instant::now() >= deadline {
                    break;
                }
                let at = Instant::now();
                let answer = client.create_certificate(request(csr)?).await?;
                anyhow::ensure!(answer.into_inner().cert_chain.len() == 2, "a chain of two");
                latencies.push(at.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    latencies.sort();
    let at = |q: f64| {
        let index = ((latencies.len().saturating_sub(1)) as f64 * q).round() as usize;
        latencies.get(index).copied().unwrap_or_default()
    };
    let issued = latencies.len();
    println!(
        "{clients} clients, {:.1} s, token cache {}: {issued} certificates, {:.0}/s; \
         latency p50 {:.2} ms, p99 {:.2} ms; CPU (CA + replay API server + clients) {:.0} µs \
         per certificate; CA counted {} issued",
        elapsed.as_secs_f64(),
        if cached { "on" } else { "off" },
        issued as f64 / elapsed.as_secs_f64(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e6 / issued.max(1) as f64,
        telemetry.issued.get(),
    );
    Ok(())
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes only into the struct passed.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
