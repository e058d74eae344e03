//! Checkout: charge the card, save the order, send the receipt.
//!
//! All three effects are deferred: the host dispatches them only if the
//! whole checkout succeeds. With `{"fail": true}` saving the order fails
//! after the charge was requested, and nothing is dispatched.

use escrow_guest::defer;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// What the plugin is asked to check out.
#[derive(Debug, Deserialize)]
pub struct Order {
    /// The order's id.
    #[serde(default = "default_id")]
    pub id: u64,
    /// Amount in cents.
    #[serde(default = "default_amount")]
    pub amount: u64,
    /// Where the receipt goes.
    #[serde(default = "default_email")]
    pub email: String,
    /// Make saving the order fail, to show that nothing is dispatched.
    #[serde(default)]
    pub fail: bool,
}

fn default_id() -> u64 {
    42
}
fn default_amount() -> u64 {
    1999
}
fn default_email() -> String {
    "ada@example.com".into()
}

/// What the plugin answers.
#[derive(Debug, Serialize)]
pub struct Receipt {
    /// The order's id.
    pub order: u64,
    /// How many effects were requested.
    pub intents: usize,
}

/// Charges, saves and confirms one order.
#[escrow_guest::plugin]
pub fn checkout(order: Order) -> Result<Receipt, String> {
    defer(
        "payments.charge",
        &json!({ "order": order.id, "amount": order.amount }),
    )?;
    if order.fail {
        return Err(format!(
            "saving order {} failed: the orders table is read-only",
            order.id
        ));
    }
    defer(
        "orders.save",
        &json!({ "order": order.id, "status": "paid" }),
    )?;
    defer(
        "email.send",
        &json!({ "to": order.email, "subject": format!("Receipt for order {}", order.id) }),
    )?;
    Ok(Receipt {
        order: order.id,
        intents: escrow_guest::pending().len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use escrow_guest::testing::Sandbox;

    #[test]
    fn a_successful_checkout_requests_charge_save_and_receipt_in_order() {
        let order: Order = serde_json::from_str("{}").unwrap();
        let recording = Sandbox::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/escrow.toml"))
            .run(|| checkout(order));
        assert_eq!(recording.output.as_ref().unwrap().intents, 3);
        assert_eq!(
            recording.committed_effects(),
            ["payments.charge", "orders.save", "email.send"]
        );
    }

    #[test]
    fn a_failing_save_returns_an_error() {
        let order: Order = serde_json::from_str(r#"{"fail": true}"#).unwrap();
        let recording = Sandbox::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/escrow.toml"))
            .run(|| checkout(order));
        assert!(
            recording
                .output
                .unwrap_err()
                .contains("saving order 42 failed")
        );
    }
}
