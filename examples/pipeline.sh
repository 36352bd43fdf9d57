#!/usr/bin/env bash
# A shell pipeline: generate calls with jq, run them concurrently over one connection with
# `synapse call --batch`, and post-process the NDJSON results with jq.
#
#   synapse serve &            # the built-ins
#   examples/pipeline.sh       # prints the sum of add_numbers(i, i) for i in 1..100 and the failures
set -euo pipefail
synapse=${SYNAPSE:-synapse}

# 100 calls of add_numbers(i, i), plus one that fails on purpose (divide by zero).
{
  jq -cn 'range(1; 101) | ["add_numbers", ., .]'
  jq -cn '{"func": "divide", "args": [1, 0]}'
} | "$synapse" call --batch - --concurrency 32 > results.ndjson || true   # exit 1: one call failed

echo "sum of results: $(jq -s 'map(select(.error == null) | .result) | add' results.ndjson)"
echo "failed calls:   $(jq -c 'select(.error != null) | {id, code: .error.code, message: .error.message}' results.ndjson)"
rm -f results.ndjson
