#!/bin/sh
# Cancels one leg: the payload is the original booking request.
payload=$(cat)
leg=${ESCROW_EFFECT%.cancel}
printf '{"cancelled":"%s"}\n' "$leg"
