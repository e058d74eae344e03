#!/bin/sh
# accounts.debit / accounts.credit: the payload is
# {"account":"a","amount":5,"fence":12}; the answer is the new balance.
payload=$(cat)
account=$(echo "$payload" | sed 's/.*"account":"\([^"]*\)".*/\1/')
amount=$(echo "$payload" | sed 's/.*"amount":\([0-9]*\).*/\1/')
case "$ESCROW_EFFECT" in
  accounts.debit) amount="-$amount" ;;
esac
redis-cli -p "${BANK_REDIS_PORT:-6379}" INCRBY "balance:$account" "$amount"
