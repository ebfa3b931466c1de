//! Process-wide metrics, in the Prometheus text format (OpenMetrics).
//!
//! One registry per process, reached through [`metrics()`]: the store wrapper
//! ([`crate::metered::MeteredStore`]), the chunk cache, read-ahead, uploads, the FUSE adapter and
//! the plugin each count what they do, and the metrics endpoint (`--metrics-addr`) encodes it.
//! Gauges that mirror a size (cache bytes) are set just before encoding.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub op: &'static str,
    /// `ok`, or the error kind (`not_found`, `timeout`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `download` (from the store) or `upload` (to it).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// `memory` or `disk`.
    pub tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FuseErrorLabels {
    pub op: &'static str,
    pub errno: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    pub volume: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric s3vol exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests to the object store, by operation and outcome.
    pub store_requests: Family<RequestLabels, Counter>,
    /// Bytes of object data to and from the store.
    pub store_bytes: Family<DirectionLabels, Counter>,
    /// Time until the store answered (headers, for streamed GETs), by operation.
    pub store_latency: HistogramFamily<OpLabels>,
    /// Chunks served from the cache, by tier.
    pub cache_hits: Family<TierLabels, Counter>,
    /// Chunks fetched from the store.
    pub cache_misses: Counter,
    /// Bytes of chunks held, by tier (set before each encoding).
    pub cache_bytes: Family<TierLabels, Gauge>,
    /// Chunks the disk tier deleted, or did not cache, for want of room on its filesystem.
    pub cache_disk_given_way: Counter,
    /// Sum of the read-ahead windows of open readers.
    pub readahead_window_bytes: Gauge,
    /// Multipart parts being uploaded now.
    pub upload_parts_in_flight: Gauge,
    /// Bytes of the memory budget held by upload part buffers.
    pub write_buffer_bytes: Gauge,
    /// Files that stopped streaming for lack of memory for their part buffers (uploaded from
    /// their staging file at close instead).
    pub uploads_short_of_memory: Counter,
    /// FUSE operations served, by operation.
    pub fuse_ops: Family<OpLabels, Counter>,
    /// FUSE operations answered with an error, by operation and errno.
    pub fuse_errors: Family<FuseErrorLabels, Counter>,
    /// Docker mounts (mount IDs) held per volume.
    pub volume_mounts: Family<VolumeLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Register `metric` under `name` and hand it back.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("s3vol");
        Self {
            store_requests: registered(
                &mut r,
                "store_requests",
                "Requests to the object store, by operation and outcome",
                Family::default(),
            ),
            store_bytes: registered(
                &mut r,
                "store_bytes",
                "Bytes of object data downloaded from and uploaded to the store",
                Family::default(),
            ),
            store_latency: registered(
                &mut r,
                "store_request_seconds",
                "Time until the object store answered, by operation",
                Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ),
            cache_hits: registered(
                &mut r,
                "cache_hits",
                "Chunks served from the chunk cache, by tier",
                Family::default(),
            ),
            cache_misses: registered(
                &mut r,
                "cache_misses",
                "Chunks fetched from the object store",
                Counter::default(),
            ),
            cache_bytes: registered(
                &mut r,
                "cache_bytes",
                "Bytes of chunks held by the chunk cache, by tier",
                Family::default(),
            ),
            cache_disk_given_way: registered(
                &mut r,
                "cache_disk_given_way",
                "Chunks the disk tier deleted, or did not cache, to keep 5% of its filesystem free or to make room for staged writes",
                Counter::default(),
            ),
            readahead_window_bytes: registered(
                &mut r,
                "readahead_window_bytes",
                "Sum of the read-ahead windows of open readers",
                Gauge::default(),
            ),
            upload_parts_in_flight: registered(
                &mut r,
                "upload_parts_in_flight",
                "Multipart upload parts being sent now",
                Gauge::default(),
            ),
            write_buffer_bytes: registered(
                &mut r,
                "write_buffer_bytes",
                "Bytes of the memory budget held by upload part buffers",
                Gauge::default(),
            ),
            uploads_short_of_memory: registered(
                &mut r,
                "uploads_short_of_memory",
                "Files not streamed further for lack of memory for part buffers (uploaded at close)",
                Counter::default(),
            ),
            fuse_ops: registered(
                &mut r,
                "fuse_operations",
                "FUSE operations served, by operation",
                Family::default(),
            ),
            fuse_errors: registered(
                &mut r,
                "fuse_errors",
                "FUSE operations answered with an error, by operation and errno",
                Family::default(),
            ),
            volume_mounts: registered(
                &mut r,
                "volume_mounts",
                "Docker mounts held per volume",
                Family::default(),
            ),
            registry: r,
        }
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn set_cache_bytes(&self, tier: &'static str, bytes: u64) {
        self.cache_bytes
            .get_or_create(&TierLabels { tier })
            .set(bytes.try_into().unwrap_or(i64::MAX));
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Adds `bytes` to a gauge now and takes them off again when dropped (a reader's window, a
/// part in flight), so the gauge cannot drift when a task is cancelled.
#[derive(Debug)]
pub struct GaugeShare {
    gauge: Gauge,
    amount: i64,
}

impl GaugeShare {
    pub fn new(gauge: &Gauge, amount: u64) -> Self {
        let amount = amount.try_into().unwrap_or(i64::MAX);
        gauge.inc_by(amount);
        Self {
            gauge: gauge.clone(),
            amount,
        }
    }

    /// Change the amount held.
    pub fn set(&mut self, amount: u64) {
        let amount: i64 = amount.try_into().unwrap_or(i64::MAX);
        self.gauge.inc_by(amount - self.amount);
        self.amount = amount;
    }
}

impl Drop for GaugeShare {
    fn drop(&mut self) {
        self.gauge.dec_by(self.amount);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_in_the_text_format_with_the_prefix() {
        let m = metrics();
        m.store_requests
            .get_or_create(&RequestLabels {
                op: "get",
                outcome: "ok",
            })
            .inc();
        m.set_cache_bytes("memory", 4096);
        let text = m.encode();
        assert!(
            text.contains("s3vol_store_requests_total{op=\"get\",outcome=\"ok\"}"),
            "{text}"
        );
        assert!(
            text.contains("s3vol_cache_bytes{tier=\"memory\"} 4096"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE s3vol_store_request_seconds histogram"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn a_gauge_share_is_taken_back_when_dropped() {
        let gauge = Gauge::default();
        let mut share = GaugeShare::new(&gauge, 10);
        let other = GaugeShare::new(&gauge, 5);
        assert_eq!(gauge.get(), 15);
        share.set(3);
        assert_eq!(gauge.get(), 8);
        drop(share);
        drop(other);
        assert_eq!(gauge.get(), 0);
    }
}
