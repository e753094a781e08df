//! The per-round figures: what each measures, its label and unit, and how it is compared with
//! the baseline (and marrow's with the sidecars').

/// A per-round figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Figure {
    /// New connections per second, one client thread.
    ConnRate1,
    /// Connect-to-greeting p50, one client thread.
    ConnP50Thread1,
    /// Connect-to-greeting p99, one client thread.
    ConnP99Thread1,
    /// New connections per second, eight client threads.
    ConnRate8,
    /// Connect-to-greeting p50, eight client threads.
    ConnP50Thread8,
    /// Connect-to-greeting p99, eight client threads.
    ConnP99Thread8,
    /// Host CPU (every process and the kernel) per connection, eight client threads.
    ConnHostCpu8,
    /// Data-plane CPU (node proxies or sidecar Envoys) per connection, eight client threads.
    ConnProxyCpu8,
    /// One-stream bulk throughput.
    BulkGbps,
    /// Host CPU (every process and the kernel) per GB of bulk.
    BulkHostCpu,
    /// Data-plane CPU per GB of bulk.
    BulkPlaneCpu,
    /// Bulk throughput over four parallel streams (iperf's -P4).
    Bulk4Gbps,
    /// Host CPU per GB of the four-stream bulk.
    Bulk4HostCpu,
    /// Data-plane CPU per GB of the four-stream bulk.
    Bulk4PlaneCpu,
    /// The data plane's peak RSS (VmHWM) over the connection-rate and bulk runs.
    ProxyPeakRss,
    /// Ping-pong round trip, p50.
    PingP50,
    /// Ping-pong round trip, p90.
    PingP90,
    /// Ping-pong round trip, p99.
    PingP99,
    /// Ping-pong round trip, p99.9.
    PingP999,
    /// 1 KiB TCP request/response at a fixed 1,000 requests/s, p50 from when it was due.
    RateP50,
    /// The same, p90.
    RateP90,
    /// The same, p99.
    RateP99,
    /// mTLS connections the client node's data plane dialled over the whole bed (through
    /// HBONE every stream of every figure above rode one of them; through the sidecars each
    /// connection is one).
    Tunnels,
    /// L7: requests/s at saturation over one keep-alive connection.
    L7Rps1,
    /// L7: requests/s at saturation over 16 keep-alive connections.
    L7Rps16,
    /// L7: latency p50 at a fixed 1,000 requests/s.
    L7P50,
    /// L7: latency p90 at a fixed 1,000 requests/s.
    L7P90,
    /// L7: latency p99 at a fixed 1,000 requests/s.
    L7P99,
    /// L7: the data plane's CPU at 1,000 requests/s, in millicores.
    L7PlaneCpu,
    /// L7: the data plane's RSS before any request.
    L7RssIdle,
    /// L7: the data plane's peak RSS (VmHWM) after every L7 run.
    L7RssLoad,
    /// L7: the L7 hop's own peak RSS (the waypoint, or the L7 Envoy).
    L7HopRss,
    /// L7: retries the waypoint made per client request over the 1-connection saturation run.
    L7RetriesPerRequest,
}

/// How a figure is compared with the baseline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// A ratio.
    Ratio,
    /// A ratio and the difference (latency: the added microseconds are the steadier figure).
    RatioAndAdded,
    /// Not comparable (the baseline has no data plane).
    Nothing,
}

impl Figure {
    /// Every figure, in table order.
    pub const ALL: [Figure; 33] = [
        Figure::ConnRate1,
        Figure::ConnP50Thread1,
        Figure::ConnP99Thread1,
        Figure::ConnRate8,
        Figure::ConnP50Thread8,
        Figure::ConnP99Thread8,
        Figure::ConnHostCpu8,
        Figure::ConnProxyCpu8,
        Figure::BulkGbps,
        Figure::BulkHostCpu,
        Figure::BulkPlaneCpu,
        Figure::Bulk4Gbps,
        Figure::Bulk4HostCpu,
        Figure::Bulk4PlaneCpu,
        Figure::ProxyPeakRss,
        Figure::PingP50,
        Figure::PingP90,
        Figure::PingP99,
        Figure::PingP999,
        Figure::RateP50,
        Figure::RateP90,
        Figure::RateP99,
        Figure::Tunnels,
        Figure::L7Rps1,
        Figure::L7Rps16,
        Figure::L7P50,
        Figure::L7P90,
        Figure::L7P99,
        Figure::L7PlaneCpu,
        Figure::L7RssIdle,
        Figure::L7RssLoad,
        Figure::L7HopRss,
        Figure::L7RetriesPerRequest,
    ];

    /// JSON key, label, decimals, comparison.
    pub fn spec(self) -> (&'static str, &'static str, usize, Compare) {
        use Compare::{Nothing, Ratio, RatioAndAdded};
        match self {
            Figure::ConnRate1 => (
                "conn_rate_t1",
                "new connections/s, 1 client thread",
                0,
                Ratio,
            ),
            Figure::ConnP50Thread1 => (
                "conn_p50_us_t1",
                "  connect→greeting p50 µs",
                0,
                RatioAndAdded,
            ),
            Figure::ConnP99Thread1 => (
                "conn_p99_us_t1",
                "  connect→greeting p99 µs",
                0,
                RatioAndAdded,
            ),
            Figure::ConnRate8 => (
                "conn_rate_t8",
                "new connections/s, 8 client threads",
                0,
                Ratio,
            ),
            Figure::ConnP50Thread8 => (
                "conn_p50_us_t8",
                "  connect→greeting p50 µs",
                0,
                RatioAndAdded,
            ),
            Figure::ConnP99Thread8 => (
                "conn_p99_us_t8",
                "  connect→greeting p99 µs",
                0,
                RatioAndAdded,
            ),
            Figure::ConnHostCpu8 => (
                "conn_host_cpu_us_t8",
                "  host CPU µs per connection (all processes + kernel)",
                1,
                Ratio,
            ),
            Figure::ConnProxyCpu8 => (
                "conn_proxy_cpu_us_t8",
                "  data-plane CPU µs per connection",
                1,
                Nothing,
            ),
            Figure::BulkGbps => ("bulk_gbit_s", "bulk, 1 stream, Gbit/s", 2, Ratio),
            Figure::BulkHostCpu => (
                "bulk_host_cpu_s_per_gb",
                "  host CPU-s per GB (all processes + kernel)",
                2,
                Ratio,
            ),
            Figure::BulkPlaneCpu => (
                "bulk_proxy_cpu_s_per_gb",
                "  data-plane CPU-s per GB",
                2,
                Nothing,
            ),
            Figure::Bulk4Gbps => ("bulk4_gbit_s", "bulk, 4 parallel streams, Gbit/s", 2, Ratio),
            Figure::Bulk4HostCpu => (
                "bulk4_host_cpu_s_per_gb",
                "  host CPU-s per GB (all processes + kernel)",
                2,
                Ratio,
            ),
            Figure::Bulk4PlaneCpu => (
                "bulk4_proxy_cpu_s_per_gb",
                "  data-plane CPU-s per GB",
                2,
                Nothing,
            ),
            Figure::ProxyPeakRss => (
                "proxy_peak_rss_mib",
                "  data-plane peak RSS MiB (VmHWM, connects + bulk)",
                1,
                Nothing,
            ),
            Figure::PingP50 => ("ping_p50_us", "1-byte ping-pong p50 µs", 1, RatioAndAdded),
            Figure::PingP90 => ("ping_p90_us", "1-byte ping-pong p90 µs", 1, RatioAndAdded),
            Figure::PingP99 => ("ping_p99_us", "1-byte ping-pong p99 µs", 1, RatioAndAdded),
            Figure::PingP999 => (
                "ping_p999_us",
                "1-byte ping-pong p99.9 µs",
                1,
                RatioAndAdded,
            ),
            Figure::RateP50 => (
                "rate_p50_us",
                "1 KiB request/response at 1,000 req/s p50 µs",
                0,
                RatioAndAdded,
            ),
            Figure::RateP90 => (
                "rate_p90_us",
                "1 KiB request/response at 1,000 req/s p90 µs",
                0,
                RatioAndAdded,
            ),
            Figure::RateP99 => (
                "rate_p99_us",
                "1 KiB request/response at 1,000 req/s p99 µs",
                0,
                RatioAndAdded,
            ),
            Figure::Tunnels => (
                "hbone_mtls_connections",
                "mTLS connections node 1's data plane opened (all runs of a bed)",
                0,
                Nothing,
            ),
            Figure::L7Rps1 => (
                "l7_rps_c1",
                "requests/s at saturation, 1 connection",
                0,
                Ratio,
            ),
            Figure::L7Rps16 => (
                "l7_rps_c16",
                "requests/s at saturation, 16 connections",
                0,
                Ratio,
            ),
            Figure::L7P50 => (
                "l7_p50_us",
                "latency p50 µs at 1,000 req/s",
                0,
                RatioAndAdded,
            ),
            Figure::L7P90 => (
                "l7_p90_us",
                "latency p90 µs at 1,000 req/s",
                0,
                RatioAndAdded,
            ),
            Figure::L7P99 => (
                "l7_p99_us",
                "latency p99 µs at 1,000 req/s",
                0,
                RatioAndAdded,
            ),
            Figure::L7PlaneCpu => (
                "l7_proxy_millicores",
                "data-plane CPU millicores at 1,000 req/s (the three proxies)",
                0,
                Nothing,
            ),
            Figure::L7RssIdle => (
                "l7_proxy_rss_idle_mib",
                "data-plane RSS MiB, idle (the three proxies)",
                1,
                Nothing,
            ),
            Figure::L7RssLoad => (
                "l7_proxy_peak_rss_mib",
                "data-plane peak RSS MiB under load (VmHWM, the three proxies)",
                1,
                Nothing,
            ),
            Figure::L7HopRss => (
                "l7_hop_peak_rss_mib",
                "  the L7 hop alone, peak RSS MiB",
                1,
                Nothing,
            ),
            Figure::L7RetriesPerRequest => (
                "l7_retries_per_request",
                "waypoint retries per request, 1 connection at saturation (marrow_retries_total)",
                2,
                Nothing,
            ),
        }
    }

    /// Whether marrow's figure is divided by the sidecars' (not for counts that measure
    /// different things).
    pub fn across_meshes(self) -> bool {
        self != Figure::Tunnels
    }
}
