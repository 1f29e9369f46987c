#!/usr/bin/env bash
# Builds the Debian package: the release binary, the man page and completions generated from
# it (so they match its clap definitions), then `cargo deb --no-build`.
#   cargo install cargo-deb --locked   # once
#   contrib/deb/build.sh               # -> target/debian/cosell-sync_<version>-1_<arch>.deb
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked
bin=target/release/cosell-sync
mkdir -p target/assets
"$bin" man > target/assets/cosell-sync.1
gzip -9nf target/assets/cosell-sync.1
"$bin" completions bash > target/assets/cosell-sync.bash
"$bin" completions zsh > target/assets/_cosell-sync
"$bin" completions fish > target/assets/cosell-sync.fish
cargo deb --no-build --locked "$@"
