#!/usr/bin/env bash
# Instructions per operation for each scenario of benches/instructions.rs,
# counted by callgrind: the difference between a run of N2 and a run of N1
# operations, divided by N2 - N1, so every fixed cost cancels out. Counts
# repeat exactly, whatever else the machine is doing.
#
#     host/benches/instructions.sh [SCENARIO...]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench -q -p escrow-host --bench instructions --no-run 2>/dev/null
driver=$(cargo bench -q -p escrow-host --bench instructions --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*instructions[^"]*\)".*/\1/p' | tail -1)
# Warm the compile cache outside the counts (the typed fixture is
# compiled by a host of its own). Under valgrind, as the counts run: the
# CPU features valgrind reports make other compiler flags, so natively
# compiled code is cached under another key.
valgrind --tool=none "$driver" noop 0 >/dev/null 2>&1
valgrind --tool=none "$driver" typed-enqueue 0 >/dev/null 2>&1

count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$driver" "$1" "$2" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(intent bare-call commit invoke bare-invoke bare-async-invoke breaker lock run instantiate typed-deferred typed-enqueue typed-serialize bare-typed typed-immediate typed-invoke)
for scenario in "${scenarios[@]}"; do
    case $scenario in
        run | instantiate) n1=100 n2=300 ;;
        *) n1=1000 n2=3000 ;;
    esac
    a=$(count "$scenario" $n1)
    b=$(count "$scenario" $n2)
    printf '%-12s %8d instructions per operation\n' "$scenario" $(((b - a) / (n2 - n1)))
done
