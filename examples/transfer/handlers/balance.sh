#!/bin/sh
# accounts.balance: the payload is the account name as a JSON string; the
# answer is its balance. Balances live in Redis under `balance:<account>`.
account=$(tr -d '"')
balance=$(redis-cli -p "${BANK_REDIS_PORT:-6379}" GET "balance:$account")
echo "${balance:-0}"
