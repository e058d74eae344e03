#!/usr/bin/env python3
"""The consumer's half of exactly-once: apply each payment of a JSON-lines
file once, however often it was delivered.

The bank keeps the idempotency keys it has applied in its own table, in the
same transaction as the balance change, and skips a key it has seen.

    python3 bank.py payments.jsonl bank.db
"""
import json
import sqlite3
import sys

lines, db = sys.argv[1], sys.argv[2]
bank = sqlite3.connect(db)
bank.execute("CREATE TABLE IF NOT EXISTS applied (key TEXT PRIMARY KEY)")
bank.execute("CREATE TABLE IF NOT EXISTS balances (name TEXT PRIMARY KEY, cents INTEGER NOT NULL)")
applied = skipped = 0
with open(lines) as deliveries:
    for line in deliveries:
        payment = json.loads(line)
        with bank:  # one transaction: the key and the effect, or neither
            seen = bank.execute(
                "INSERT INTO applied (key) VALUES (?) ON CONFLICT DO NOTHING",
                (payment["idempotency_key"],),
            ).rowcount == 0
            if seen:
                skipped += 1
                continue
            bank.execute(
                "INSERT INTO balances (name, cents) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET cents = cents + excluded.cents",
                (payment["payload"]["to"], payment["payload"]["cents"]),
            )
            applied += 1
print(f"applied {applied}, skipped {skipped} already applied")
for name, cents in bank.execute("SELECT name, cents FROM balances ORDER BY name"):
    print(f"  {name:<8} {cents / 100:>10.2f}")
