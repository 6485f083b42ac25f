#!/usr/bin/env bash
# A user's crate outside the workspace: it depends on alp's crates by path with no
# `[patch]`, so it builds on the registry's candle-core; it trains, evaluates and resumes a
# user's pieces through the library (scripts/downstream/main.rs). Also checks that the library
# alp-trainer pulls none of the application's crates (they live in alp-cli).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
echo "+ cargo tree -p alp-trainer -e normal (no clap, plotters, indicatif, ctrlc, anyhow)"
if cargo tree -p alp-trainer -e normal --prefix none \
        | grep -E '^(clap|plotters|indicatif|ctrlc|anyhow) '; then
    echo "the library alp-trainer depends on the application's crates above" >&2
    exit 1
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/src"
cp scripts/downstream/main.rs "$dir/src/main.rs"
# The workspace's lock as a starting point (the same versions where they still apply).
cp Cargo.lock "$dir/Cargo.lock"
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "alp-downstream"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
alp-core = { path = "$root/alp-core" }
alp-loss = { path = "$root/alp-loss" }
alp-trainer = { path = "$root/alp-trainer" }
safetensors = "0.8"
# The server crate builds on the registry's candle-core too.
alp-serve = { path = "$root/alp-serve" }

[workspace]

[profile.release]
debug = false
TOML
cd "$dir"
echo "+ (in $dir) cargo run --release"
# The workspace's target directory: crates of the same version and features are reused; the
# registry's candle-core and everything above it build anew.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" cargo run --release
src=$(cargo tree -e normal --prefix none -i candle-core | head -1)
echo "candle-core in the downstream build: $src"
case "$src" in
    *vendor*|*"$root"*) echo "the downstream build used the vendored candle-core" >&2; exit 1 ;;
esac
