//! Ingest helpers shared by the tests that send events to real nodes: the cluster overlay with the
//! example feature definitions, an `Order Completed` event, and the order window features as read back.

use std::path::Path;

use featurestore::ingest::Event;
use featurestore::{FeatureView, Limits};
use serde_json::json;

use super::FAST_CLUSTER;

/// [`FAST_CLUSTER`] with `[ingest] features` = the crate's `features.example.toml`.
pub fn overlay() -> String {
    let features = Path::new(env!("CARGO_MANIFEST_DIR")).join("features.example.toml");
    format!("{FAST_CLUSTER}[ingest]\nfeatures = {features:?}\n")
}

/// A Segment `track` of `Order Completed` by `user` with `revenue`, stamped now.
pub fn order(user: &str, message_id: &str, revenue: f64) -> Event {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    Event::from_segment(
        &json!({"type": "track", "event": "Order Completed", "userId": user, "messageId": message_id,
                "properties": {"revenue": revenue}}),
        None,
        now,
        &Limits::default(),
    )
    .unwrap()
}

/// `orders_30m` and `revenue_7d` of `user` as the client reads them.
pub async fn orders(client: &store_client::Client, user: &str) -> Result<(f64, f64), String> {
    let view = client
        .get(user, None)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no profile yet")?;
    let value = |name: &str| match view.features.get(name) {
        Some(FeatureView::Window { value: Some(v), .. }) => Ok(*v),
        other => Err(format!("{name}: {other:?}")),
    };
    Ok((value("orders_30m")?, value("revenue_7d")?))
}
