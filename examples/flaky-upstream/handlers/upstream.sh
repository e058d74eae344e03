#!/bin/sh
# upstream.fetch: an unreliable dependency. It fails its first three calls
# (counted in the file $FLAKY_STATE, /tmp/escrow-flaky-upstream by
# default), then answers.
cat >/dev/null
state=${FLAKY_STATE:-/tmp/escrow-flaky-upstream}
count=$(( $(cat "$state" 2>/dev/null || echo 0) + 1 ))
echo "$count" > "$state"
if [ "$count" -le 3 ]; then
  echo "upstream unavailable (call $count)" >&2
  exit 1
fi
printf '{"call":%s,"status":"ok"}\n' "$count"
