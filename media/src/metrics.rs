//! What the media service counts, under `parley_media_`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Default)]
pub struct MediaMetrics {
    /// Uploads created (tus creations and one-request uploads).
    pub uploads_created: Counter,
    /// Uploads that became media.
    pub uploads_completed: Counter,
    /// Upload bytes received (kept or not).
    pub received_bytes: Counter,
    /// Media bytes sent to downloaders.
    pub sent_bytes: Counter,
    /// Media deleted by their uploader or the sweeper.
    pub deleted: Counter,
    /// Expired media the sweeper removed.
    pub swept_media: Counter,
    /// Expired uploads the sweeper removed.
    pub swept_uploads: Counter,
    /// Uploads receiving bytes now.
    pub in_progress: Gauge,
}

impl MediaMetrics {
    /// Registers the families under `registry` (prefix it with `media`).
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "uploads_created",
                "Uploads created (tus creations and one-request uploads)",
                &self.uploads_created,
            ),
            (
                "uploads_completed",
                "Uploads that became media",
                &self.uploads_completed,
            ),
            (
                "received_bytes",
                "Upload bytes received",
                &self.received_bytes,
            ),
            (
                "sent_bytes",
                "Media bytes sent to downloaders",
                &self.sent_bytes,
            ),
            (
                "deleted",
                "Media deleted by their uploader or the sweeper",
                &self.deleted,
            ),
            (
                "swept_media",
                "Expired media the sweeper removed",
                &self.swept_media,
            ),
            (
                "swept_uploads",
                "Expired unfinished uploads the sweeper removed",
                &self.swept_uploads,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "uploads_in_progress",
            "Uploads receiving bytes now",
            self.in_progress.clone(),
        );
    }
}
