//! Payroll: one deferred `payments.send` per employee, committed together.
//!
//! Run with an outbox, the payments are durable the moment the run reports
//! `committed`: a host killed before (or while) delivering them loses none,
//! and `escrow outbox deliver` delivers them later, each with an idempotency
//! key that lets the bank apply it exactly once.

use escrow_guest::defer;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// One employee to pay.
#[derive(Debug, Deserialize)]
pub struct Employee {
    /// Who.
    pub name: String,
    /// Amount in cents.
    pub cents: u64,
}

/// The payroll to run.
#[derive(Debug, Deserialize)]
pub struct Payroll {
    /// The month, as `YYYY-MM`.
    pub month: String,
    /// Who is paid.
    pub employees: Vec<Employee>,
}

/// What the plugin answers.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Payments requested.
    pub payments: usize,
    /// Their total, in cents.
    pub total_cents: u64,
}

/// Requests one payment per employee; an employee paid nothing is an error,
/// and then no one is paid.
#[escrow_guest::plugin]
pub fn payroll(payroll: Payroll) -> Result<Summary, String> {
    let mut total_cents = 0;
    for employee in &payroll.employees {
        if employee.cents == 0 {
            return Err(format!("{} would be paid nothing", employee.name));
        }
        defer(
            "payments.send",
            &json!({ "to": employee.name, "cents": employee.cents, "month": payroll.month }),
        )?;
        total_cents += employee.cents;
    }
    Ok(Summary {
        payments: payroll.employees.len(),
        total_cents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use escrow_guest::testing::Sandbox;

    fn payroll_of(cents: &[u64]) -> Payroll {
        Payroll {
            month: "2026-11".into(),
            employees: cents
                .iter()
                .enumerate()
                .map(|(i, cents)| Employee {
                    name: format!("e{i}"),
                    cents: *cents,
                })
                .collect(),
        }
    }

    #[test]
    fn every_employee_gets_one_payment_in_order() {
        let recording = Sandbox::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/escrow.toml"))
            .run(|| payroll(payroll_of(&[100, 200, 300])));
        assert_eq!(recording.output.as_ref().unwrap().total_cents, 600);
        assert_eq!(recording.committed_effects(), ["payments.send"; 3]);
    }

    #[test]
    fn an_employee_paid_nothing_fails_the_whole_payroll() {
        let recording = Sandbox::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/escrow.toml"))
            .run(|| payroll(payroll_of(&[100, 0])));
        assert!(recording.output.unwrap_err().contains("paid nothing"));
    }
}
