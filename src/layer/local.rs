//! The in-process channel layer: a single node delivers straight to its own sockets.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::BoxFuture;

use super::{ChannelLayer, Event, PublishError, Registry};

#[derive(Default)]
pub struct LocalLayer {
    registry: Registry,
}

impl ChannelLayer for LocalLayer {
    fn publish<'a>(
        &'a self,
        group: &'a str,
        event: Event,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        if matches!(event, Event::Message { .. }) {
            let metrics = self.registry.metrics();
            metrics.messages_in.fetch_add(1, Ordering::Relaxed);
        }
        self.registry.deliver(group, Arc::new(event));
        Box::pin(async { Ok(()) })
    }

    fn registry(&self) -> &Registry {
        &self.registry
    }
}
