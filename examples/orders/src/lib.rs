//! Orders: one plugin that places an order with three deferred effects, run
//! under each policy to show what the policy does with them.
//!
//! - `--policy commit`: all three are dispatched, in order.
//! - `--policy drop`: all three are recorded and dropped (a dry run).
//! - `--policy assert-none`: the first request is refused `forbidden` and the
//!   run fails, although the plugin carries on.
//! - `--block 'email.*'`: the confirmation is blocked, the rest dispatched.

use escrow_guest::defer;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// An order to place.
#[derive(Debug, Deserialize)]
pub struct Order {
    /// The item's SKU.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// The customer's email address.
    pub email: String,
}

/// What the plugin answers.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Placed {
    /// The SKU ordered.
    pub sku: String,
    /// How many of the three requests the host refused.
    pub refused: usize,
}

/// Places one order. A refused request does not stop the plugin: it counts
/// it and goes on, so the policy alone decides the run's fate.
#[escrow_guest::plugin]
pub fn place(order: Order) -> Result<Placed, String> {
    let requests = [
        (
            "inventory.reserve",
            json!({ "sku": order.sku, "quantity": order.quantity }),
        ),
        (
            "orders.save",
            json!({ "sku": order.sku, "quantity": order.quantity, "status": "placed" }),
        ),
        (
            "email.confirmation",
            json!({ "to": order.email, "sku": order.sku }),
        ),
    ];
    let refused = requests
        .iter()
        .filter(|(effect, payload)| defer(effect, payload).is_err())
        .count();
    Ok(Placed {
        sku: order.sku,
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use escrow_guest::ScopePolicy;
    use escrow_guest::testing::{Fate, Sandbox};

    fn order() -> Order {
        Order {
            sku: "tea-42".into(),
            quantity: 2,
            email: "ada@example.com".into(),
        }
    }

    #[test]
    fn under_block_the_confirmation_is_blocked_and_the_rest_committed() {
        let recording = Sandbox::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/escrow.toml"))
            .policy(ScopePolicy::Block(vec!["email.*".into()]))
            .run(|| place(order()));
        assert_eq!(
            recording.committed_effects(),
            ["inventory.reserve", "orders.save"]
        );
        assert_eq!(recording.intents[2].fate, Fate::Blocked);
    }

    #[test]
    fn under_assert_none_every_request_is_refused_and_the_plugin_goes_on() {
        let recording = Sandbox::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/escrow.toml"))
            .policy(ScopePolicy::AssertNone)
            .run(|| place(order()));
        assert_eq!(recording.output.unwrap().refused, 3);
        assert!(recording.violation.is_some());
    }
}
