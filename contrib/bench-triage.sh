#!/bin/sh
# Triage benches (issue 27): `rules test` and `GET /inbox` over N referrals awaiting an answer.
# cargo build --release --bin cosell-sync && BIN=target/release/cosell-sync N=10000 sh contrib/bench-triage.sh
set -eu
BIN=${BIN:-target/release/cosell-sync}
N=${N:-10000}
D=${D:-/tmp/cosell-triage-bench}
rm -rf "$D"; mkdir -p "$D/creds" "$D/state"
"$BIN" sim --listen 127.0.0.1:8611 --referrals "$N" --credentials-dir "$D/creds" > "$D/sim.out" 2>&1 &
SIM=$!
trap 'kill $SIM ${RUN:-} 2>/dev/null || true' EXIT
sleep 2
cat > "$D/config.toml" <<CONF
[state]
path = "$D/state/state.db"
[daemon]
sync_on_start = false
[log]
level = "warn"
[microsoft]
api_base = "http://127.0.0.1:8611"
authority = "http://127.0.0.1:8611"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-00000000c0de"
client_secret_file = "$D/creds/microsoft-client-secret"
requests_per_second = 1000
[actions]
listen = "127.0.0.1:8612"
public_url = "http://127.0.0.1:8612/act"
actor_header = "X-Forwarded-Email"
[[rules]]
name = "keep-contoso"
customer = "(?i)contoso"
action = "none"
[[rules]]
name = "outside-territory"
not_countries = ["US", "CA"]
action = "decline"
reason = "Customer is outside our region"
[[rules]]
name = "small-usd"
max_value = 50000
currency = "USD"
action = "decline"
reason = "Deal size too small"
CONF
C="--config $D/config.toml"
"$BIN" $C auth microsoft > /dev/null 2>&1 || true
"$BIN" $C sync > /dev/null 2>&1
echo "rules test --json over $N referrals (whole process, 5 runs):"
for i in 1 2 3 4 5; do
  s=$(date +%s%N); "$BIN" $C rules test --json > "$D/rules.json"; e=$(date +%s%N)
  echo "  $(( (e - s) / 1000000 )) ms"
done
python3 -c "import json,sys; print('  rows:', len(json.load(open('$D/rules.json'))))"
"$BIN" $C run > "$D/run.log" 2>&1 &
RUN=$!
sleep 3
: > "$D/inbox.times"
for i in $(seq 1 200); do
  curl -s -o /dev/null -w '%{time_total}\n' -H 'X-Forwarded-Email: ana@partner.example' \
    "http://127.0.0.1:8612/act/inbox?page=$(( (i % 3) + 1 ))" >> "$D/inbox.times"
done
curl -s -H 'X-Forwarded-Email: ana@partner.example' http://127.0.0.1:8612/act/inbox | grep -o 'name="referral"' | wc -l | sed 's/^/  rows on page 1: /'
sort -n "$D/inbox.times" | awk '{a[NR]=$1} END {printf "GET /inbox (200 requests, pages 1-3): p50 %.1f ms, p95 %.1f ms, max %.1f ms\n", a[int(NR*0.5)]*1000, a[int(NR*0.95)]*1000, a[NR]*1000}'
