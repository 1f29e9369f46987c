#!/usr/bin/env bash
# The operator's first day under a real systemd (252, Debian 12) in systemd-nspawn: builds the
# Debian package, installs it with dpkg -i into a minimal Debian root file system, boots it,
# and walks docs/operations.md's install as a root shell would, against `cosell-sync sim`:
#   Microsoft-only: check-config as root → first sign-in (systemd-run as the service) →
#   auth check as root → start → active (running), READY, STATUS → status as root →
#   reload (taken, then refused: `systemctl reload` fails; a restart-only key is refused
#   naming it, and served after a restart) → ten restarts in a row leave it active → stop;
#   full (with [google] and the key's drop-in): start → leads created → reload → stop →
#   the database deleted and an older backup restored → starts, re-links without a create;
#   `dpkg -i` over the running service restarts it (a new PID); a missing credential file
#   arrives blank (the unit's SetCredential= default): exit 78 naming the key, not restarted,
#   and check-config names the file; AWS-only (no [microsoft], no Microsoft or Google secret
#   file): the shipped unit starts and asks Microsoft for nothing;
#   then a failing start trips the start limit, and purge says what it removes and does.
#
#   contrib/systemd-test/run.sh      (as root; .ci/run calls it)
#   COSELL_BIN=target/debug/cosell-sync   package this binary (default; built if missing)
#   COSELL_SYSTEMD_TEST=skip         say why and skip (a machine that cannot run nspawn)
#
# The debootstrapped root file system is cached in /var/tmp/cosell-sync-systemd-test/rootfs
# (about 70 s to make, 260 MB); each run works on a copy. Any failed check fails the script.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

cache=/var/tmp/cosell-sync-systemd-test
base=$cache/rootfs
steps=0

say() { printf '== %s\n' "$*"; }
ok() { steps=$((steps + 1)); printf '   ok  %s  [%ss]\n' "$*" "$SECONDS"; }
fail() {
  printf '   FAIL %s\n' "$*" >&2
  if [ -n "${X:-}" ]; then
    echo "--- journal (cosell-sync, cosell-sim) ---" >&2
    $X journalctl -u cosell-sync -u cosell-sim --no-pager -n 80 >&2 2>&1 || true
  fi
  exit 1
}
skip() {
  echo "SKIPPED: real-systemd test: $*" >&2
  exit 0
}
cannot() {
  # Not being able to run the test is a failure unless it was asked to skip.
  if [ "${COSELL_SYSTEMD_TEST:-}" = skip ]; then skip "$*"; fi
  echo "the real-systemd test cannot run: $* (COSELL_SYSTEMD_TEST=skip skips it on purpose)" >&2
  exit 1
}

[ "${COSELL_SYSTEMD_TEST:-}" = skip ] && skip "COSELL_SYSTEMD_TEST=skip"
[ "$(id -u)" = 0 ] || cannot "needs root (debootstrap, chroot, systemd-nspawn)"
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null \
  || ! command -v lintian >/dev/null; then
  say "installing systemd-container, debootstrap and lintian"
  # A fresh machine may have no package lists yet: install, else update and install.
  install_tools() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
      systemd-container debootstrap lintian >/dev/null
  }
  install_tools || { apt-get update -qq >/dev/null && install_tools; } \
    || cannot "systemd-nspawn, debootstrap or lintian are missing and apt-get could not install them"
fi

# 1. The package, from the binary the tests already built (no second build).
bin=${COSELL_BIN:-target/debug/cosell-sync}
if [ ! -x "$bin" ]; then
  say "building $bin"
  cargo build --locked
fi
say "package"
deb=$(COSELL_BIN="$bin" contrib/deb/build.sh | tail -1)
[ -f "$deb" ] || fail "contrib/deb/build.sh made no package"
ok "built $deb"
if command -v lintian >/dev/null; then
  lintian --fail-on error --suppress-tags initial-upload-closes-no-bugs "$deb" 2>&1 \
    | grep -v 'running with root privileges' >&2 || true
  lintian --fail-on error "$deb" >/dev/null 2>&1 || fail "lintian reports errors on $deb"
  ok "lintian: no errors"
else
  echo "   (lintian not installed: apt-get install lintian to check the package)"
fi

# 2. The root file system: cached, rebuilt when missing (made aside, then moved in place).
if [ ! -x "$base/usr/lib/systemd/systemd" ]; then
  say "debootstrap (cached in $base afterwards)"
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  mirror=${mirror:-http://deb.debian.org/debian}
  mkdir -p "$cache"
  rm -rf "$base.new"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,procps,curl,ca-certificates \
    bookworm "$base.new" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || cannot "debootstrap failed (network?); see $cache/debootstrap.log"
  rm -rf "$base"
  mv "$base.new" "$base"
fi
root=$(mktemp -d /var/tmp/cosell-sync-systemd-test/run.XXXXXX)
NSPAWN=""
X=""
cleanup() {
  if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
    [ -n "$X" ] && $X systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 50); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.2; done
    kill "$NSPAWN" 2>/dev/null || true
    wait "$NSPAWN" 2>/dev/null || true
  fi
  rm -rf "$root"
}
trap cleanup EXIT
cp -a "$base/." "$root/"
ok "root file system copied from the cache"

# 3. Install, as `dpkg -i` on a fresh Debian 12.
cp "$deb" "$root/tmp/cosell-sync.deb"
# /tmp is a fresh tmpfs once systemd boots: the upgrade below installs this copy.
cp "$deb" "$root/root/cosell-sync.deb"
chroot "$root" dpkg -i /tmp/cosell-sync.deb >"$root/tmp/dpkg.log" 2>&1 \
  || { cat "$root/tmp/dpkg.log" >&2; fail "dpkg -i"; }
chroot "$root" systemctl mask console-getty.service getty@tty1.service >/dev/null 2>&1
[ -d "$root/etc/cosell-sync/credentials" ] \
  && [ "$(stat -c %a "$root/etc/cosell-sync/credentials")" = 700 ] \
  || fail "postinst made no 0700 /etc/cosell-sync/credentials"
ok "dpkg -i: /usr/bin/cosell-sync, the unit, config.toml, credentials/ (0700)"

# 4. Boot. --register=no --keep-unit: no machined, no host D-Bus; --private-network: the
# container has its own loopback, where the simulator listens.
say "boot systemd in systemd-nspawn"
systemd-nspawn --register=no --keep-unit --private-network -D "$root" -b --console=pipe \
  >"$cache/console.log" 2>&1 </dev/null &
NSPAWN=$!
PID1=""
for _ in $(seq 100); do PID1=$(pgrep -P "$NSPAWN" -x systemd) && break; sleep 0.1; done
[ -n "$PID1" ] || cannot "systemd-nspawn did not boot (see $cache/console.log)"
X="nsenter -t $PID1 -a"
state=""
for _ in $(seq 150); do
  state=$($X systemctl is-system-running 2>/dev/null || true)
  case "$state" in running | degraded) break ;; esac
  sleep 0.2
done
case "$state" in running | degraded) ;; *) fail "boot: system is '$state'" ;; esac
ok "booted: $($X systemctl --version | head -1), system $state"

# Runs a command inside; `inside sh -c '...'` for shell syntax.
inside() { $X "$@"; }
expect_active() {
  local s
  s=$(inside systemctl is-active cosell-sync || true)
  [ "$s" = active ] || fail "cosell-sync is '$s', not active"
}

# 5. The simulator, as an operator rehearses: a service of its own, writing the secrets.
inside systemd-run --unit=cosell-sim --quiet /usr/bin/cosell-sync sim --listen 127.0.0.1:8600 \
  --referrals 20 --credentials-dir /etc/cosell-sync/credentials
for _ in $(seq 100); do inside test -s /etc/cosell-sync/credentials/google-key.json && break; sleep 0.1; done
inside test -s /etc/cosell-sync/credentials/microsoft-client-secret || fail "sim wrote no secrets"
ok "cosell-sync sim --listen 127.0.0.1:8600 (a unit of its own)"

# The documented edits of config.toml: the simulator's endpoints and app registration
# (`cosell-sync sim` prints them). Microsoft-only first: the shipped config has no partner_id.
inside sh -c 'sed -i \
  -e "s|^api_base = \"https://api.partner.microsoft.com\"|api_base = \"http://127.0.0.1:8600\"|" \
  -e "s|^authority = \"https://login.microsoftonline.com\"|authority = \"http://127.0.0.1:8600\"|" \
  -e "s|^api_base = \"https://cloudcrmpartners.googleapis.com\"|api_base = \"http://127.0.0.1:8600\"|" \
  -e "s|^client_id = \"00000000-0000-0000-0000-000000000000\"|client_id = \"00000000-0000-0000-0000-00000000c0de\"|" \
  /etc/cosell-sync/config.toml'
inside grep -q '^authority = "http://127.0.0.1:8600"' /etc/cosell-sync/config.toml || fail "config edit"
# Microsoft-only: no Google key in credentials/ (the unit must not need one).
inside mv /etc/cosell-sync/credentials/google-key.json /root/google-key.json

say "Microsoft-only"
out=$(inside cosell-sync check-config 2>&1) || fail "check-config as root: $out"
ok "check-config as root (step 6 before the service ever ran)"

# First sign-in, as docs/operations.md step 5 runs it: as the service will see its state.
out=$(inside systemd-run --wait --pipe --quiet --property=DynamicUser=yes \
  --property=StateDirectory=cosell-sync \
  --property=LoadCredential=microsoft-client-secret:/etc/cosell-sync/credentials/microsoft-client-secret \
  /usr/bin/cosell-sync --config /etc/cosell-sync/config.toml auth microsoft 2>&1) \
  || fail "first sign-in: $out"
echo "$out" | grep -q "Signed in" || fail "first sign-in said: $out"
ok "first sign-in (auth microsoft through systemd-run as the DynamicUser)"

out=$(inside cosell-sync auth check 2>&1) || fail "auth check as root: $out"
owner=$(inside stat -c %U:%a /var/lib/private/cosell-sync/microsoft-refresh-token)
case "$owner" in root:*) fail "auth check as root left the token to root ($owner)" ;; esac
ok "auth check as root; the rotated token stays the service's ($owner)"

inside systemctl start cosell-sync || fail "systemctl start"
expect_active
sub=$(inside systemctl show cosell-sync -p SubState --value)
[ "$sub" = running ] || fail "SubState $sub"
ok "systemctl start → active (running); READY came (Type=notify)"
for _ in $(seq 100); do
  status_text=$(inside systemctl show cosell-sync -p StatusText --value)
  case "$status_text" in "last cycle"*) break ;; esac
  sleep 0.2
done
case "$status_text" in "last cycle ok"*) ;; *) fail "StatusText: '$status_text'" ;; esac
ok "STATUS: $status_text"
out=$(inside cosell-sync status 2>&1) || fail "status as root: $out"
for cmd in "alerts list" "outbox list" "audit"; do
  # shellcheck disable=SC2086
  out=$(inside cosell-sync $cmd 2>&1) || fail "$cmd as root: $out"
done
ok "status, alerts list, outbox list, audit as root"
# The default text log under journald: priorities (journalctl -p finds the ALERT lines) and
# the journal's timestamp only.
alerts_logged=$(inside journalctl -u cosell-sync -p warning -o cat --no-pager -q | grep -c "ALERT: " || true)
[ "$alerts_logged" -gt 0 ] || fail "journalctl -p warning finds no ALERT line"
stamped=$(inside journalctl -u cosell-sync -o cat --no-pager -q _COMM=cosell-sync | grep -c '^20[0-9][0-9]-' || true)
[ "$stamped" = 0 ] || fail "$stamped log lines carry a second timestamp"
ok "text logs under journald: $alerts_logged ALERT lines at warning or above, one timestamp"

inside systemctl reload cosell-sync || fail "systemctl reload (good config)"
expect_active
ok "systemctl reload with a good config"
inside cp /etc/cosell-sync/config.toml /root/config.good
inside sh -c 'sed -i "s|^sync = \".*\"|sync = \"every five minutes\"|" /etc/cosell-sync/config.toml'
if inside systemctl reload cosell-sync 2>/dev/null; then fail "a refused reload returned 0"; fi
expect_active
inside cp /root/config.good /etc/cosell-sync/config.toml
inside systemctl reload cosell-sync || fail "reload after the fix"
ok "a refused reload fails systemctl reload; the daemon keeps running"

# A restart-only key: refused whole, naming it; a restart applies it.
inside sh -c 'sed -i "s|^# listen = \"127.0.0.1:9464\"|listen = \"127.0.0.1:9464\"|" /etc/cosell-sync/config.toml'
inside grep -q '^listen = "127.0.0.1:9464"' /etc/cosell-sync/config.toml || fail "metrics edit"
if inside systemctl reload cosell-sync 2>/dev/null; then fail "reload of [metrics] listen returned 0"; fi
expect_active
inside journalctl -u cosell-sync --no-pager -q | grep -q "needs a restart: metrics.listen" \
  || fail "the refused reload does not name metrics.listen"
if inside curl -fsS -o /dev/null http://127.0.0.1:9464/metrics 2>/dev/null; then
  fail "a refused reload serves /metrics anyway"
fi
inside systemctl restart cosell-sync || fail "restart for [metrics] listen"
for _ in $(seq 50); do inside curl -fsS -o /dev/null http://127.0.0.1:9464/metrics 2>/dev/null && break; sleep 0.2; done
inside curl -fsS -o /dev/null http://127.0.0.1:9464/metrics || fail "no /metrics after the restart"
ok "systemctl reload of [metrics] listen fails naming the key; a restart serves it"

# The operator's own restarts never trip the start limit (it counts them too).
for i in $(seq 10); do
  inside systemctl restart cosell-sync || fail "systemctl restart number $i"
done
sleep 1
expect_active
ok "ten systemctl restart in a row: still active ($(inside systemctl show cosell-sync -p NRestarts --value) automatic restarts)"
inside systemctl reset-failed cosell-sync 2>/dev/null || true
# An older backup for the restore below (before any lead exists), taken while it runs.
inside cosell-sync backup /root/before-google.db >/dev/null || fail "cosell-sync backup"

inside systemctl stop cosell-sync || fail "systemctl stop"
s=$(inside systemctl is-active cosell-sync || true)
[ "$s" = inactive ] || fail "after stop: $s"
restarts=$(inside systemctl show cosell-sync -p NRestarts --value)
[ "$restarts" = 0 ] || fail "NRestarts=$restarts"
ok "systemctl stop → inactive, NRestarts=0"

say "full set-up: [google], its key in credentials/ (the shipped unit loads it: no drop-in)"
inside mv /root/google-key.json /etc/cosell-sync/credentials/google-key.json
inside sh -c 'sed -i "s|^# partner_id = \"1234567\".*|partner_id = \"1234567\"|" /etc/cosell-sync/config.toml'
inside grep -q '^partner_id = "1234567"' /etc/cosell-sync/config.toml || fail "partner_id edit"
out=$(inside cosell-sync check-config 2>&1) || fail "check-config with [google]: $out"
inside systemctl start cosell-sync || fail "start with [google]"
expect_active
for _ in $(seq 100); do
  status_text=$(inside systemctl show cosell-sync -p StatusText --value)
  case "$status_text" in "last cycle"*) break ;; esac
  sleep 0.2
done
case "$status_text" in "last cycle ok"*) ;; *) fail "StatusText with [google]: '$status_text'" ;; esac
done_creates=$(inside cosell-sync outbox list --state done --json | grep -c '"kind": *"create_lead"' || true)
[ "$done_creates" -gt 0 ] || fail "no lead was created with [google] (outbox: $(inside cosell-sync outbox list 2>&1 | head -5))"
ok "active (running) with [google]: $done_creates lead creates done"
inside systemctl reload cosell-sync || fail "reload with [google]"
inside systemctl stop cosell-sync || fail "stop with [google]"
ok "reload and stop with [google]"

say "restore: the database deleted, a backup from before the leads put back"
inside sh -c 'rm -f /var/lib/cosell-sync/state.db /var/lib/cosell-sync/state.db-wal /var/lib/cosell-sync/state.db-shm'
out=$(inside cosell-sync restore /root/before-google.db 2>&1) || fail "cosell-sync restore: $out"
owner=$(inside stat -c %U:%a /var/lib/private/cosell-sync/state.db)
case "$owner" in root:*) fail "the restored database is root's ($owner)" ;; esac
ok "cosell-sync restore as root: state.db is the service's ($owner)"
inside systemctl start cosell-sync || fail "start after the restore"
expect_active
adopted=0
for _ in $(seq 150); do
  adopted=$(inside cosell-sync outbox list --state done --json | grep -c '"kind": *"adopt_link"' || true)
  [ "$adopted" -ge "$done_creates" ] && break
  sleep 0.2
done
[ "$adopted" -ge "$done_creates" ] || fail "re-linked $adopted of $done_creates leads"
creates=$(inside cosell-sync outbox list --json | grep -c '"kind": *"create_lead"' || true)
[ "$creates" = 0 ] || fail "$creates lead creates after the restore"
ok "the restored database starts and re-links $adopted leads without a create"

say "upgrade: dpkg -i over the running service"
old_pid=$(inside systemctl show cosell-sync -p MainPID --value)
out=$(inside dpkg -i /root/cosell-sync.deb 2>&1) || fail "dpkg -i over the running service: $out"
expect_active
new_pid=$(inside systemctl show cosell-sync -p MainPID --value)
[ "$new_pid" != "$old_pid" ] && [ "$new_pid" != 0 ] \
  || fail "dpkg -i did not restart the daemon (MainPID $old_pid → $new_pid)"
inside systemctl stop cosell-sync || fail "stop after the upgrade"
ok "dpkg -i restarts the running service (MainPID $old_pid → $new_pid)"
inside systemctl reset-failed cosell-sync 2>/dev/null || true

say "a missing credential file: blank (the unit's default), exit 78 naming the key, not restarted"
inside mv /etc/cosell-sync/credentials/microsoft-client-secret /root/microsoft-client-secret
if inside systemctl start cosell-sync 2>/dev/null; then fail "started without its credential file"; fi
sleep 2
result=$(inside systemctl show cosell-sync -p ExecMainStatus --value)
restarts=$(inside systemctl show cosell-sync -p NRestarts --value)
[ "$result" = 78 ] || fail "ExecMainStatus=$result, not 78"
s=$(inside systemctl is-active cosell-sync || true)
[ "$s" = failed ] || fail "a missing credential left it '$s' (a restart pending?)"
sleep 1
[ "$restarts" = "$(inside systemctl show cosell-sync -p NRestarts --value)" ] || fail "restarted"
inside journalctl -u cosell-sync --no-pager -q -o cat | tr -s ' \n' ' ' \
  | grep -q "microsoft.client_secret_file: .*microsoft-client-secret is empty (the unit's blank default: is /etc/cosell-sync/credentials/microsoft-client-secret missing?" \
  || fail "the journal does not name the key and the missing file"
if out=$(inside cosell-sync check-config 2>&1); then fail "check-config passed without the secret"; fi
echo "$out" | grep -q "/etc/cosell-sync/credentials/microsoft-client-secret" \
  || fail "check-config does not name the file: $out"
inside mv /root/microsoft-client-secret /etc/cosell-sync/credentials/microsoft-client-secret
inside systemctl reset-failed cosell-sync 2>/dev/null || true
ok "a missing credential: 78, failed, not restarted; the journal and check-config name the key and file"

say "AWS-only: no [microsoft], no Microsoft or Google secret file; the shipped unit starts"
inside cp /etc/cosell-sync/config.toml /root/config.full
inside mkdir -p /root/away
inside mv /etc/cosell-sync/credentials/microsoft-client-secret /etc/cosell-sync/credentials/google-key.json /root/away/
inside sh -c 'printf "%s\n" sim-aws-secret-access-key | install -m 0600 /dev/stdin /etc/cosell-sync/credentials/aws-secret-access-key'
# 8601 is the rehearsal simulator's AWS port (its sample invitations are in catalog AWS, not
# Sandbox): this stage checks the start, not the AWS inbox.
inside sh -c 'printf "[state]\npath = \"/var/lib/cosell-sync/state.db\"\n\n[aws]\ncatalog = \"Sandbox\"\nendpoint = \"http://127.0.0.1:8601\"\naccess_key_id = \"AKIDSIMULATORAWS01\"\nsecret_access_key_file = \"aws-secret-access-key\"\n" > /etc/cosell-sync/config.toml'
out=$(inside cosell-sync check-config 2>&1) || fail "check-config AWS-only: $out"
echo "$out" | grep -q "Microsoft is off" || fail "check-config does not say Microsoft is off: $out"
inside systemctl start cosell-sync || fail "systemctl start AWS-only"
expect_active
sub=$(inside systemctl show cosell-sync -p SubState --value)
[ "$sub" = running ] || fail "AWS-only SubState $sub"
inside journalctl -u cosell-sync --no-pager -q | grep -q "Microsoft is off; no token is asked for" \
  || fail "AWS-only: the journal does not say Microsoft is off"
inside systemctl stop cosell-sync || fail "stop AWS-only"
inside rm /etc/cosell-sync/credentials/aws-secret-access-key
inside sh -c 'mv /root/away/* /etc/cosell-sync/credentials/'
inside cp /root/config.full /etc/cosell-sync/config.toml
inside systemctl reset-failed cosell-sync 2>/dev/null || true
ok "AWS-only: active (running) with the shipped unit, READY without a Microsoft token"

say "restart policy: a start that keeps failing trips the start limit"
# Exit 1 (Entra refuses a wrong client secret) with a short RestartSec in a drop-in, so the limit trips
# within the test; the shipped 30s and 20 starts in 1 h are checked by tests/it/install.rs.
inside sh -c 'echo wrong-secret > /etc/cosell-sync/credentials/microsoft-client-secret'
inside mkdir -p /etc/systemd/system/cosell-sync.service.d
inside sh -c 'printf "[Service]\nRestartSec=1s\n" > /etc/systemd/system/cosell-sync.service.d/fast.conf'
inside systemctl daemon-reload
inside systemctl start cosell-sync 2>/dev/null || true
# systemd 252 logs "Start request repeated too quickly" and leaves the unit failed for good.
limited=""
# StartLimitBurst=20 starts, each failing at once and restarted 1 s later: well under 2 min.
for _ in $(seq 240); do
  if inside journalctl -u cosell-sync --no-pager -q | grep -q "Start request repeated too quickly"; then
    limited=yes
    break
  fi
  sleep 0.5
done
[ -n "$limited" ] \
  || fail "no start limit after repeated failures (NRestarts=$(inside systemctl show cosell-sync -p NRestarts --value))"
restarts=$(inside systemctl show cosell-sync -p NRestarts --value)
sleep 3
s=$(inside systemctl is-active cosell-sync || true)
[ "$s" = failed ] && [ "$(inside systemctl show cosell-sync -p NRestarts --value)" = "$restarts" ] \
  || fail "the unit went on restarting after the start limit ($s)"
ok "failing starts stop at the start limit (NRestarts=$restarts, then failed for good)"
inside rm /etc/systemd/system/cosell-sync.service.d/fast.conf
inside systemctl daemon-reload
inside systemctl reset-failed cosell-sync 2>/dev/null || true

say "purge"
out=$(inside dpkg --purge cosell-sync 2>&1) || fail "dpkg --purge: $out"
echo "$out" | grep -q "purge deletes /etc/cosell-sync/credentials" || fail "purge said nothing: $out"
for gone in /etc/cosell-sync/credentials /var/lib/private/cosell-sync /var/lib/cosell-sync /usr/bin/cosell-sync; do
  if inside test -e "$gone"; then fail "purge left $gone"; fi
done
ok "dpkg --purge says what it deletes, and removes the secrets and the state"

echo "real-systemd test: $steps checks passed"
