//! Transfer: move money between two accounts named in the input, holding
//! both accounts' locks.
//!
//! The two keys are taken in one request, so the host takes them together in
//! key order: transfers in opposite directions cannot deadlock. Under the
//! locks the plugin reads the balance, refuses an overdraft, and moves the
//! money with two reversible actions; the ledger entry is deferred, and the
//! locks are kept until it has been dispatched.
//!
//! Input: `{"from": "a", "to": "b", "amount": 5}`.

use escrow_guest::{defer, invoke_reversible, lock, query};
use serde::{Deserialize, Serialize};

/// What to move.
#[derive(Debug, Deserialize)]
pub struct Transfer {
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// How much.
    pub amount: u64,
}

/// One side of the transfer, as sent to the account handlers. Its fencing
/// token lets the account store reject a stale lock holder.
#[derive(Debug, Serialize)]
struct Movement<'a> {
    account: &'a str,
    amount: u64,
    fence: u64,
}

/// What the plugin answers.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Receipt {
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// How much moved.
    pub amount: u64,
    /// The fencing token the transfer ran under.
    pub fence: u64,
}

/// Moves `amount` from one account to the other, or nothing at all.
#[escrow_guest::plugin]
pub fn transfer(t: Transfer) -> Result<Receipt, String> {
    if t.from == t.to {
        return Err("an account cannot pay itself".into());
    }
    let guard = lock([format!("account:{}", t.from), format!("account:{}", t.to)])?;
    let fence = guard.fencing_token();

    let balance: i64 = query("accounts.balance", &t.from).map_err(|e| e.to_string())?;
    if balance < t.amount as i64 {
        return Err(format!(
            "insufficient funds: {} has {balance}, needs {}",
            t.from, t.amount
        ));
    }
    let debit = Movement {
        account: &t.from,
        amount: t.amount,
        fence,
    };
    let credit = Movement {
        account: &t.to,
        amount: t.amount,
        fence,
    };
    invoke_reversible::<i64>("accounts.debit", &debit, "accounts.credit", &debit)
        .map_err(|e| e.to_string())?;
    invoke_reversible::<i64>("accounts.credit", &credit, "accounts.debit", &credit)
        .map_err(|e| e.to_string())?;
    let receipt = Receipt {
        from: t.from,
        to: t.to,
        amount: t.amount,
        fence,
    };
    defer("ledger.record", &receipt).map_err(|e| e.to_string())?;
    // Hold both accounts until the ledger entry has been dispatched.
    guard.keep();
    Ok(receipt)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use escrow_guest::testing::{Answer, Sandbox};

    use super::*;

    fn bank(balance: i64) -> Sandbox {
        let balances = Arc::new(Mutex::new(balance));
        let read = Arc::clone(&balances);
        Sandbox::from_config(concat!(env!("CARGO_MANIFEST_DIR"), "/escrow.toml"))
            .grant_lock("account:*")
            .query("accounts.balance", move |_: &[u8]| {
                Ok(read.lock().unwrap().to_string().into_bytes())
            })
            .action("accounts.debit", |_: &[u8]| Ok(b"0".to_vec()))
            .action("accounts.credit", |_: &[u8]| Ok(b"0".to_vec()))
    }

    fn transfer_of(amount: u64) -> Transfer {
        Transfer {
            from: "alice".into(),
            to: "bob".into(),
            amount,
        }
    }

    #[test]
    fn a_transfer_locks_both_accounts_in_key_order_and_moves_the_money() {
        let recording = bank(10).run(|| transfer(transfer_of(4)));
        assert_eq!(recording.output.as_ref().unwrap().fence, 1);
        assert_eq!(recording.locks[0].keys, ["account:alice", "account:bob"]);
        let calls: Vec<&str> = recording
            .invocations
            .iter()
            .map(|i| i.effect.as_str())
            .collect();
        assert_eq!(
            calls,
            ["accounts.balance", "accounts.debit", "accounts.credit"]
        );
        assert_eq!(recording.committed_effects(), ["ledger.record"]);
    }

    #[test]
    fn an_overdraft_is_refused_before_any_money_moves() {
        let recording = bank(3).run(|| transfer(transfer_of(4)));
        assert!(recording.output.unwrap_err().contains("insufficient funds"));
        assert_eq!(recording.invocations.len(), 1);
        assert_eq!(recording.invocations[0].result, Answer::Ok(b"3".to_vec()));
    }
}
