#!/usr/bin/env bash
# The patched crates are what they say they are: each vendor/<crate> equals the crate as
# published on crates.io (checked by its SHA-256) with vendor/<crate>/wirechat.patch
# applied, and Cargo uses it (a [patch] that no longer matches the version in Cargo.lock is
# only a warning to Cargo, which then builds the published crate instead).
set -euo pipefail
cd "$(dirname "$0")/.."

# crate, version, SHA-256 of the published .crate
crates=(
    "sqlx-core 0.8.6 ee6798b1838b6a0f69c007c133b8df5866302197e404e8b6ee8ed3e3a5e68dc6"
    "tungstenite 0.29.0 6c01152af293afb9c7c2a57e4b559c5620b421f6d133261c60dd2d0cdb38e6b8"
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for entry in "${crates[@]}"; do
    read -r name version sum <<<"$entry"
    file="$work/$name-$version.crate"
    curl -sfL --retry 3 -o "$file" "https://static.crates.io/crates/$name/$name-$version.crate"
    echo "$sum  $file" | sha256sum -c --quiet -
    tar -xzf "$file" -C "$work"
    upstream="$work/$name-$version"
    rm -f "$upstream/.cargo_vcs_info.json" "$upstream/Cargo.toml.orig" "$upstream/Cargo.lock"
    patch -s -p1 -d "$upstream" <"vendor/$name/wirechat.patch"
    if ! diff -r -x README.wirechat.md -x wirechat.patch "$upstream" "vendor/$name"; then
        echo "vendor/$name is not $name $version with vendor/$name/wirechat.patch" >&2
        exit 1
    fi
    grep -q "^name = \"$name\"\$" Cargo.lock
    if ! grep -A1 "^name = \"$name\"\$" Cargo.lock | grep -q "^version = \"$version\"\$"; then
        echo "Cargo.lock does not hold $name $version, the version vendor/$name patches" >&2
        exit 1
    fi
    echo "vendor/$name: $name $version as published, with its patch"
done
if cargo metadata --format-version 1 2>&1 >/dev/null | grep -i "was not used"; then
    echo "a [patch.crates-io] entry is not used: Cargo builds the published crate" >&2
    exit 1
fi
