//! Actions on an order, each allowed in the states REGARDS allows it (409 naming the reason
//! otherwise), each a status change guarded by the status read, with the work it leaves staged in the
//! same transaction:
//!
//! - pause (PENDING or RUNNING): no suborder starts and no storage job is followed up; what storage
//!   work was asked completes;
//! - resume (PAUSED): back to the status it was paused in; an expansion goes on, RUNNING suborders'
//!   storage jobs run again (they skip what they did), dispatch is nudged;
//! - delete (DONE, DONE_WITH_WARNING, PAUSED, EXPIRED, FAILED): DELETED; a worker releases its slots,
//!   gives back the quota of files not downloaded, and drops its hold on stored objects;
//! - remove (admins, DELETED): every item of the order goes;
//! - restart (DONE, DONE_WITH_WARNING, FAILED): a new order from the old one's basket;
//! - retry (DONE_WITH_WARNING, FAILED, no processing): RUNNING again; a worker puts the files in error
//!   back to PENDING, their suborders waiting for dispatch again.

use crate::{OrderApi, OrderRequest, RouteResult, answer, unavailable_on};
use granary_domain::basket::Basket;
use granary_domain::order::{OrderAction, OrderStatus, check_action};
use granary_lambda::Identity;
use granary_lambda::http::{conflict, json};
use granary_ports::Update;
use granary_stores::outbox::OutboxEvent;
use lambda_http::{Body, Request, Response};
use serde_json::json;

impl OrderApi {
    fn worker_message(&self, id: String, body: serde_json::Value) -> OutboxEvent {
        OutboxEvent { event_id: id, queue: self.config.suborder_dispatch_queue.clone(), body: body.to_string() }
    }

    /// Applies `action` to order `order_id` for `identity`.
    pub(crate) async fn act(&self, identity: &Identity, order_id: &str, action: OrderAction, req: &Request) -> RouteResult {
        let order = self.visible_order(identity, order_id).await?;
        let status = order.get_str("status").and_then(OrderStatus::parse).unwrap_or(OrderStatus::Error);
        let basket: Option<Basket> = order.get("basket").and_then(|b| serde_json::from_value(b.clone()).ok());
        let has_processing = basket.as_ref().is_some_and(|b| b.dataset_selections.iter().any(|d| d.process_dataset_description.is_some()));
        check_action(action, status, identity.is_admin(), has_processing).map_err(|reason| conflict(&reason))?;
        let now = self.backend.clock.now_ms();
        let (to, updates, events) = match action {
            OrderAction::Pause => (OrderStatus::Paused, vec![Update::set("pausedFrom", status.as_str())], vec![]),
            OrderAction::Resume => {
                let to = order.get_str("pausedFrom").and_then(OrderStatus::parse).unwrap_or(OrderStatus::Running);
                let mut events = vec![self.fulfilment.nudge(&format!("{order_id}:resumed:{now}"))];
                if to == OrderStatus::Pending {
                    // The expansion stopped when the order was paused: it goes on from its checkpoint.
                    events.push(OutboxEvent {
                        event_id: format!("{order_id}:EXPAND:{now}"),
                        queue: self.config.order_create_queue.clone(),
                        body: json!({ "orderId": order_id }).to_string(),
                    });
                } else {
                    // Storage jobs skipped while paused run again.
                    for s in self.orders.suborders(&self.backend, order_id).await.map_err(unavailable_on)? {
                        if s.get_str("state") == Some("RUNNING") {
                            let n = s.get_i64("number").unwrap_or(0);
                            events.push(self.worker_message(
                                format!("start:{order_id}:{n}:{now}"),
                                json!({ "start": { "orderId": order_id, "suborder": n } }),
                            ));
                        }
                    }
                }
                (to, vec![Update::remove("pausedFrom")], events)
            }
            OrderAction::Delete => (
                OrderStatus::Deleted,
                vec![Update::set("availableFilesCount", 0)],
                // Not `release:{id}`, the id order-maintenance gives the release of an expiring order:
                // an expired order deleted while that row still waits to be sent would cancel this.
                vec![self.worker_message(format!("release:{order_id}:deleted"), json!({ "release": { "orderId": order_id } }))],
            ),
            OrderAction::Remove => (
                OrderStatus::Deleted,
                vec![Update::set("removing", now)],
                vec![self.worker_message(format!("remove:{order_id}:{now}"), json!({ "remove": { "orderId": order_id } }))],
            ),
            OrderAction::Restart => {
                let basket = basket.ok_or_else(|| conflict("the order kept no readable basket to restart from"))?;
                let request = Self::order_request(req).map_err(|p| *p)?;
                // A new order of the same basket, for the same owner; the user's own basket is untouched.
                let owner = Identity { user: basket.owner.clone(), ..identity.clone() };
                return match self.place(&owner, &basket, None, &request as &OrderRequest).await? {
                    Some(created) => Ok(created),
                    None => Err(conflict("the order could not be restarted; retry")),
                };
            }
            OrderAction::Retry => (
                OrderStatus::Running,
                vec![Update::set("retrying", now), Update::remove("message")],
                vec![self.worker_message(format!("retry:{order_id}:{now}"), json!({ "retry": { "orderId": order_id } }))],
            ),
        };
        // Events with a fixed id (a deletion's release) are staged once: the status has changed, so
        // a repeat of the action is refused before it stages anything.
        let changed = self.fulfilment.change_status(&self.backend, &order, to, updates, &events).await.map_err(unavailable_on)?;
        if !changed {
            return Err(conflict(&format!("order {order_id} changed meanwhile; read it again")));
        }
        let mut sent = events;
        if action == OrderAction::Resume && to == OrderStatus::Running {
            // Its suborders may all have finished while it was paused.
            sent.extend(self.fulfilment.settle_order(&self.backend, order_id).await.map_err(unavailable_on)?);
        }
        if let Err(e) = self.fulfilment.outbox().flush(&self.backend, &sent).await {
            tracing::warn!(order_id, error = %e, "order work left to the outbox relay");
        }
        tracing::info!(order_id, ?action, to = to.as_str(), by = %identity.user, "order action");
        if action == OrderAction::Remove {
            return Ok(Response::builder().status(204).body(Body::Empty).unwrap_or_default());
        }
        let updated = self.orders.get(&self.backend, order_id).await.map_err(unavailable_on)?.unwrap_or(order);
        Ok(json(200, &answer(&updated, None, identity.is_admin())))
    }
}
