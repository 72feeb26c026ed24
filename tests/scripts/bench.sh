#!/usr/bin/env bash
# `make bench`: runs every benchmark; each writes target/bench/<name>.json, and this merges them
# into target/bench/report.json (one object of named figures).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="$ROOT/target/bench"
mkdir -p "$OUT"
rm -f "$OUT"/*.json

echo "==> config store (runtime)" >&2
BENCH_OUT="$OUT/runtime.json" cargo bench --locked -p mesh-runtime --bench config_store

python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
report = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    if os.path.basename(path) == "report.json":
        continue
    with open(path) as f:
        report.update(json.load(f))
with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
    f.write("\n")
print(json.dumps(report, indent=2, sort_keys=True))
PY
