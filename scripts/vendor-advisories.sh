#!/usr/bin/env bash
# Refreshes supply-chain/advisories/ from a checkout of the RustSec advisory database
# (https://github.com/rustsec/advisory-db): the advisories of every crates.io package in
# Cargo.lock, so that tests/supply_chain.rs checks them offline.
#
#   scripts/vendor-advisories.sh PATH/TO/advisory-db
set -euo pipefail
db="${1:?usage: scripts/vendor-advisories.sh PATH/TO/advisory-db}"
cd "$(dirname "$0")/.."
out=supply-chain/advisories
rm -rf "$out"
mkdir -p "$out"
revision=$(git -C "$db" rev-parse HEAD)
date=$(git -C "$db" log -1 --format=%cs)
cargo metadata --format-version 1 --locked --offline \
  | python3 -c 'import json, sys; print("\n".join(sorted({p["name"] for p in json.load(sys.stdin)["packages"] if p.get("source")})))' \
  | while read -r name; do
      for file in $(git -C "$db" ls-tree --name-only HEAD "crates/$name/"); do
        mkdir -p "$out/$name"
        git -C "$db" show "HEAD:$file" > "$out/$name/$(basename "$file")"
      done
    done
cat > supply-chain/SOURCE.md <<SOURCE
# Vendored advisories

\`advisories/\` holds the RustSec advisories (https://github.com/rustsec/advisory-db, CC0-1.0) of
every crates.io package in Cargo.lock, copied verbatim by \`scripts/vendor-advisories.sh\` from
revision \`$revision\` ($date). \`tests/supply_chain.rs\` checks Cargo.lock against them offline;
refresh them with the script (and a fresh checkout of the database) when dependencies change.
SOURCE
echo "vendored $(find "$out" -name '*.md' | wc -l) advisories of revision $revision"
