#!/bin/sh
# Books one leg. escrow passes the effect (`flight.book`, ...) in
# ESCROW_EFFECT and the leg as JSON on stdin; the answer goes to stdout.
payload=$(cat)
leg=${ESCROW_EFFECT%.book}
case "$payload" in
  *'"fail":true'*)
    echo "no $leg available for these dates" >&2
    exit 1
    ;;
esac
printf '{"confirmation":"%s-%s"}\n' "$(echo "$leg" | tr a-z A-Z)" 1042
