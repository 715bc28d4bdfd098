//! The in-process channel layer: a single node delivers straight to its own sockets.

use std::sync::Arc;

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
        self.registry.deliver(group, Arc::new(event));
        Box::pin(async { Ok(()) })
    }

    fn registry(&self) -> &Registry {
        &self.registry
    }
}
