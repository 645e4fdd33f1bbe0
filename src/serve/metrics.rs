//! The server's Prometheus metrics, through the prometheus-client crate (OpenMetrics text, which
//! Prometheus scrapes): requests by route and status, latencies, batch sizes, queue depth.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Every metric the server keeps.
pub(crate) struct Metrics {
    registry: Registry,
    /// Requests answered, by route and status code.
    pub requests: Family<Labels, Counter>,
    /// Seconds from a request's arrival to its answer, by route.
    pub latency: Family<Labels, Histogram>,
    /// Images per forward pass.
    pub batch_size: Histogram,
    /// Images waiting for a forward pass (set when scraped).
    pub queue_depth: Gauge,
    /// Requests refused because the queue was full.
    pub rejected: Counter,
}

impl Metrics {
    pub fn new(max_batch: usize) -> Self {
        let mut registry = Registry::with_prefix("sknet");
        let requests = Family::<Labels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            // 0.5 ms to about 16 s.
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer",
            latency.clone(),
        );
        let batch_size = Histogram::new((0..=max_batch.ilog2()).map(|i| (1u64 << i) as f64));
        registry.register("batch_size", "Images per forward pass", batch_size.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Images waiting for a forward pass",
            queue_depth.clone(),
        );
        let rejected = Counter::default();
        registry.register(
            "rejected_requests",
            "Requests refused with 503 because the queue was full",
            rejected.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            batch_size,
            queue_depth,
            rejected,
        }
    }

    /// Counts one answered request.
    pub fn record(&self, route: &str, status: u16, seconds: f64) {
        let route = ("route".to_string(), route.to_string());
        self.requests
            .get_or_create(&vec![route.clone(), ("status".into(), status.to_string())])
            .inc();
        self.latency.get_or_create(&vec![route]).observe(seconds);
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
