#!/usr/bin/env bash
# Builds the Debian package with dpkg-deb alone (no cargo-deb to install): the binary, the man
# page and completions generated from it (so they match its clap definitions), the unit, the
# tmpfiles snippet, the docs, and the maintainer scripts in this directory.
#
#   contrib/deb/build.sh                     # release build, then the package
#   COSELL_BIN=target/debug/cosell-sync contrib/deb/build.sh
#                                            # package a binary already built (CI: no second build)
#   -> target/debian/cosell-sync_<version>-1_<arch>.deb   (its path is the last line printed)
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=${COSELL_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --locked
  bin=target/release/cosell-sync
fi
[ -x "$bin" ] || { echo "build.sh: no executable at $bin" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
deb_version="$version-1"
out=target/debian
stage=$out/stage
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"

put() { # put MODE SOURCE DEST: install a file into the package tree
  install -D -m "$1" "$2" "$stage/$3"
}

# The binary, stripped (a dev build carries ~200 MB of debug info).
put 0755 "$bin" usr/bin/cosell-sync
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage/usr/bin/cosell-sync"

# Generated from the binary, so they match its --help.
gen=$out/generated
mkdir -p "$gen"
"$bin" man > "$gen/cosell-sync.1"
gzip -9nf "$gen/cosell-sync.1"
"$bin" completions bash > "$gen/cosell-sync.bash"
"$bin" completions zsh > "$gen/_cosell-sync"
"$bin" completions fish > "$gen/cosell-sync.fish"
put 0644 "$gen/cosell-sync.1.gz" usr/share/man/man1/cosell-sync.1.gz
put 0644 "$gen/cosell-sync.bash" usr/share/bash-completion/completions/cosell-sync
put 0644 "$gen/_cosell-sync" usr/share/zsh/vendor-completions/_cosell-sync
put 0644 "$gen/cosell-sync.fish" usr/share/fish/vendor_completions.d/cosell-sync.fish

put 0644 config.example.toml etc/cosell-sync/config.toml
put 0644 systemd/cosell-sync.service lib/systemd/system/cosell-sync.service
put 0644 contrib/deb/cosell-sync.tmpfiles usr/lib/tmpfiles.d/cosell-sync.conf

doc=usr/share/doc/cosell-sync
put 0644 config.example.toml "$doc/config.example.toml"
put 0644 README.md "$doc/README.md"
put 0644 docs/operations.md "$doc/operations.md"
put 0644 contrib/grafana/cosell-sync.json "$doc/contrib/grafana/cosell-sync.json"
put 0644 contrib/prometheus/cosell-sync.rules.yml "$doc/contrib/prometheus/cosell-sync.rules.yml"
put 0644 contrib/deb/copyright "$doc/copyright"
# debian/changelog, dated by the last commit (reproducible), compressed as policy asks.
date=$(git log -1 --format=%cD 2>/dev/null || date -R)
mkdir -p "$stage/$doc"
printf '%s\n' \
  "cosell-sync ($deb_version) unstable; urgency=medium" "" \
  "  * Package of cosell-sync $version (see README.md for what it does)." "" \
  " -- cosell-sync maintainers <cosell-sync@users.noreply.github.com>  $date" \
  | gzip -9n > "$stage/$doc/changelog.Debian.gz"
chmod 0644 "$stage/$doc/changelog.Debian.gz"
put 0644 contrib/deb/lintian-overrides usr/share/lintian/overrides/cosell-sync

for script in postinst prerm postrm; do
  put 0755 "contrib/deb/$script" "DEBIAN/$script"
done
echo /etc/cosell-sync/config.toml > "$stage/DEBIAN/conffiles"

# Shared-library dependencies as dpkg-shlibdeps computes them (libc6, libgcc-s1).
depends=$(
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/debian"
  printf 'Source: cosell-sync\n\nPackage: cosell-sync\nArchitecture: any\n' > "$tmp/debian/control"
  abs_bin=$(readlink -f "$stage/usr/bin/cosell-sync")
  (cd "$tmp" && dpkg-shlibdeps -O "$abs_bin" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
)
[ -n "$depends" ] || depends="libc6 (>= 2.34), libgcc-s1 (>= 4.2)"

installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: cosell-sync
Version: $deb_version
Architecture: $arch
Maintainer: cosell-sync maintainers <cosell-sync@users.noreply.github.com>
Installed-Size: $installed_size
Depends: $depends, systemd (>= 239), init-system-helpers (>= 1.52)
Section: net
Priority: optional
Description: sync Microsoft co-sell referrals with Google Cloud partner leads
 A daemon for partners who co-sell with both Microsoft and Google Cloud: it
 keeps Microsoft Partner Center co-sell referrals and Google Cloud CRM
 Partners leads and opportunities in step, and alerts before a referral's
 14-day response window closes.
EOF

(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
  | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$stage/DEBIAN/md5sums" "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles"

deb="$out/cosell-sync_${deb_version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
