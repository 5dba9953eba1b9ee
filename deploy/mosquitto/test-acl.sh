#!/usr/bin/env bash
# Runs a real Mosquitto with palmgate.conf, acl and acl-local (paths and ports moved into a temp
# dir, both listeners on 127.0.0.1, a throw-away self-signed CA for the TLS listener) and checks
# what each client may do. Needs mosquitto, mosquitto_pub, mosquitto_sub, mosquitto_passwd,
# openssl and python3. Prints one line per check and `N passed, N failed`; exits 1 on a failure.
#
#   bash deploy/mosquitto/test-acl.sh          (from the repository root, or from anywhere)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
for tool in mosquitto mosquitto_pub mosquitto_sub mosquitto_passwd openssl python3; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin"
  command -v "$tool" >/dev/null 2>&1 || { echo "test-acl: $tool is missing" >&2; exit 1; }
done

T="$(mktemp -d /tmp/palmgate-acl.XXXXXX)"
chmod 755 "$T"   # mosquitto started as root drops to the mosquitto user: it must read these
pid=""
cleanup() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$T"; }
trap cleanup EXIT

# Two free loopback ports.
read -r PLAIN TLSPORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')

# A throw-away CA and a server certificate for localhost.
mkdir "$T/certs"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=palmgate test CA" \
  -keyout "$T/certs/ca.key" -out "$T/certs/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$T/certs/server.key" -out "$T/certs/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$T/certs/san.ext"
openssl x509 -req -in "$T/certs/server.csr" -CA "$T/certs/ca.crt" -CAkey "$T/certs/ca.key" \
  -CAcreateserial -days 2 -extfile "$T/certs/san.ext" -out "$T/certs/server.crt" 2>/dev/null
chmod 644 "$T"/certs/*

# The shipped configuration, with its paths and ports moved into $T.
sed -e "s#^listener 1883 127.0.0.1\$#listener $PLAIN 127.0.0.1#" \
    -e "s#^listener 8883\$#listener $TLSPORT 127.0.0.1#" \
    -e "s#/etc/mosquitto/#$T/#g" \
    "$here/palmgate.conf" >"$T/mosquitto.conf"
grep -q "^listener $PLAIN 127.0.0.1\$" "$T/mosquitto.conf"
grep -q "^listener $TLSPORT 127.0.0.1\$" "$T/mosquitto.conf"
printf 'log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\npersistence false\n' \
  >>"$T/mosquitto.conf"
cp "$here/acl" "$T/palmgate.acl"
cp "$here/acl-local" "$T/palmgate-local.acl"
mosquitto_passwd -c -b "$T/palmgate.passwd" palmgate pg-secret
mosquitto_passwd -b "$T/palmgate.passwd" reader-1 r1-secret
mosquitto_passwd -b "$T/palmgate.passwd" reader-2 r2-secret
chmod 644 "$T"/*.acl "$T/palmgate.passwd"

mosquitto -c "$T/mosquitto.conf" >"$T/mosquitto.log" 2>&1 &
pid=$!
for _ in $(seq 50); do
  if mosquitto_pub -h 127.0.0.1 -p "$PLAIN" -u palmgate -P pg-secret -t palmgate/ping -m x \
       2>/dev/null; then break; fi
  sleep 0.1
done

GW=(-h 127.0.0.1 -p "$PLAIN" -u palmgate -P pg-secret)
R1=(-h localhost -p "$TLSPORT" --cafile "$T/certs/ca.crt" -u reader-1 -P r1-secret)
R2=(-h localhost -p "$TLSPORT" --cafile "$T/certs/ca.crt" -u reader-2 -P r2-secret)
passed=0 failed=0
check() { # check NAME COMMAND... : the command must succeed
  local name="$1"; shift
  if "$@" >>"$T/checks.log" 2>&1; then passed=$((passed + 1)); echo "ok    $name"
  else failed=$((failed + 1)); echo "FAIL  $name"; fi
}
refused() { # refused NAME COMMAND... : the broker must refuse (a failed command, or an MQTT 5
  # PUBACK "Not authorized", which mosquitto_pub only reports as a warning)
  local name="$1" out; shift
  if out="$("$@" 2>&1)" && ! grep -qi 'not authori' <<<"$out"; then
    failed=$((failed + 1)); echo "FAIL  $name"
  else passed=$((passed + 1)); echo "ok    $name"; fi
  printf '%s: %s\n' "$name" "$out" >>"$T/checks.log"
}
has() { grep -qF -- "$2" "$T/$1.out"; }
hasnt() { ! grep -qF -- "$2" "$T/$1.out"; }

# Subscribers: palmgate (loopback, every reader's inbound topics), reader-1 on its own cmd, on
# reader-2's cmd and on palmgate/#, reader-2 on its own cmd.
subs=()
mosquitto_sub "${GW[@]}" -v -W 5 -t 'palmgate/readers/+/status' -t 'palmgate/readers/+/capture' \
  -t 'palmgate/readers/+/trigger' >"$T/gw.out" 2>&1 & subs+=($!)
mosquitto_sub "${GW[@]}" -v -W 5 -t 'palmgate/#' >"$T/gw-wild.out" 2>&1 & subs+=($!)
mosquitto_sub -h 127.0.0.1 -p "$PLAIN" -u reader-1 -P r1-secret -v -W 5 -t 'palmgate/#' \
  >"$T/r1-loopback.out" 2>&1 & subs+=($!)
mosquitto_sub "${R1[@]}" -v -W 5 -t palmgate/readers/reader-1/cmd >"$T/r1-own.out" 2>&1 & subs+=($!)
mosquitto_sub "${R1[@]}" -v -W 5 -V 5 -t palmgate/readers/reader-2/cmd >"$T/r1-other.out" 2>&1 & subs+=($!)
mosquitto_sub "${R1[@]}" -v -W 5 -V 5 -t 'palmgate/#' >"$T/r1-wild.out" 2>&1 & subs+=($!)
mosquitto_sub "${R2[@]}" -v -W 5 -t palmgate/readers/reader-2/cmd >"$T/r2-own.out" 2>&1 & subs+=($!)
sleep 1

# Publishers. MQTT 5 with QoS 1, so the broker's refusal comes back in PUBACK.
check   "reader-1 publishes its own status over TLS" \
  mosquitto_pub "${R1[@]}" -V 5 -q 1 -r -t palmgate/readers/reader-1/status -m '{"online": true}'
check   "reader-1 publishes its own capture" \
  mosquitto_pub "${R1[@]}" -V 5 -q 1 -t palmgate/readers/reader-1/capture -m '{"capture_id": "c1"}'
check   "reader-1 publishes its own trigger" \
  mosquitto_pub "${R1[@]}" -V 5 -q 1 -t palmgate/readers/reader-1/trigger -m '{"trigger_id": "t1"}'
refused "reader-1 cannot publish reader-2's status" \
  mosquitto_pub "${R1[@]}" -V 5 -q 1 -t palmgate/readers/reader-2/status -m '{"forged": "status"}'
refused "reader-1 cannot publish a capture as reader-2" \
  mosquitto_pub "${R1[@]}" -V 5 -q 1 -t palmgate/readers/reader-2/capture -m '{"forged": "capture"}'
refused "reader-1 cannot publish a cmd (its own)" \
  mosquitto_pub "${R1[@]}" -V 5 -q 1 -t palmgate/readers/reader-1/cmd -m '{"forged": "own-cmd"}'
refused "reader-1 cannot publish outside its topics" \
  mosquitto_pub "${R1[@]}" -V 5 -q 1 -t palmgate/anything -m '{"forged": "elsewhere"}'
check   "palmgate sends a cmd to reader-1" \
  mosquitto_pub "${GW[@]}" -V 5 -q 1 -t palmgate/readers/reader-1/cmd -m '{"action": "retry", "reason": "for-reader-1"}'
check   "palmgate sends a cmd to reader-2" \
  mosquitto_pub "${GW[@]}" -V 5 -q 1 -t palmgate/readers/reader-2/cmd -m '{"action": "show", "url": "for-reader-2"}'
refused "anonymous client on the TLS listener" \
  mosquitto_pub -h localhost -p "$TLSPORT" --cafile "$T/certs/ca.crt" -q 1 -t palmgate/readers/x/status -m x
refused "wrong password on the TLS listener" \
  mosquitto_pub -h localhost -p "$TLSPORT" --cafile "$T/certs/ca.crt" -u reader-1 -P wrong -q 1 -t palmgate/readers/reader-1/status -m x
refused "plain MQTT on the TLS listener" \
  timeout 5 mosquitto_pub -h 127.0.0.1 -p "$TLSPORT" -u reader-1 -P r1-secret -q 1 -t palmgate/readers/reader-1/status -m x
# The loopback listener (acl-local): only palmgate, with its password, within palmgate/#.
refused "anonymous client on loopback cannot publish" \
  mosquitto_pub -h 127.0.0.1 -p "$PLAIN" -V 5 -q 1 -t palmgate/readers/reader-1/cmd -m '{"forged": "anon-loopback"}'
refused "anonymous client on loopback cannot subscribe" \
  mosquitto_sub -h 127.0.0.1 -p "$PLAIN" -V 5 -W 3 -C 1 -t 'palmgate/#'
# MQTT 3.1.1 has no refusal in PUBACK (a denied publish is acked silently): this one passes only
# if the broker refuses the anonymous CONNECT itself (allow_anonymous false), not just its topics.
refused "anonymous CONNECT on loopback is refused (MQTT 3.1.1)" \
  mosquitto_pub -h 127.0.0.1 -p "$PLAIN" -V 311 -q 1 -t palmgate/readers/reader-1/cmd -m '{"forged": "anon-loopback-311"}'
refused "palmgate with a wrong password on loopback" \
  mosquitto_pub -h 127.0.0.1 -p "$PLAIN" -u palmgate -P wrong -V 5 -q 1 -t palmgate/readers/reader-1/cmd -m '{"forged": "wrong-password"}'
refused "palmgate without a password on loopback" \
  mosquitto_pub -h 127.0.0.1 -p "$PLAIN" -u palmgate -V 5 -q 1 -t palmgate/readers/reader-1/cmd -m '{"forged": "no-password"}'
refused "palmgate may not publish outside palmgate/ (acl-local)" \
  mosquitto_pub "${GW[@]}" -V 5 -q 1 -t other/topic -m x
check   "palmgate publishes under palmgate/ on loopback" \
  mosquitto_pub "${GW[@]}" -V 5 -q 1 -t palmgate/gateway/ping -m '{"from": "palmgate-loopback"}'
refused "a reader's login on loopback gets nothing (acl-local)" \
  mosquitto_pub -h 127.0.0.1 -p "$PLAIN" -u reader-1 -P r1-secret -V 5 -q 1 -t palmgate/readers/reader-2/capture -m '{"forged": "loopback"}'
# The subscribers end 5 s after they started (-W 5).
wait "${subs[@]}" 2>/dev/null || true

check   "palmgate received reader-1's status" has gw 'palmgate/readers/reader-1/status {"online": true}'
check   "palmgate received reader-1's capture" has gw 'palmgate/readers/reader-1/capture'
check   "palmgate received reader-1's trigger" has gw 'palmgate/readers/reader-1/trigger'
check   "no forged message reached palmgate" hasnt gw 'forged'
check   "palmgate subscribed to palmgate/# on loopback gets the readers' messages" has gw-wild 'palmgate/readers/reader-1/capture'
check   "... and its own publications" has gw-wild 'palmgate-loopback'
check   "... and none a refused client sent" hasnt gw-wild 'forged'
check   "a reader's login on loopback receives nothing" hasnt r1-loopback 'palmgate/'
check   "reader-1 received its own cmd" has r1-own 'for-reader-1'
check   "reader-2 received its own cmd" has r2-own 'for-reader-2'
check   "reader-1 cannot read reader-2's cmd" hasnt r1-other 'for-reader-2'
check   "reader-1 subscribed to palmgate/# sees only its own cmd" has r1-wild 'for-reader-1'
check   "... and nothing of reader-2's" hasnt r1-wild 'reader-2'
check   "... and no status (write-only)" hasnt r1-wild '/status'

echo "$passed passed, $failed failed"
if [ "$failed" -gt 0 ]; then
  echo "--- mosquitto log"; cat "$T/mosquitto.log"
  echo "--- client output"; cat "$T/checks.log"
  for f in "$T"/*.out; do echo "--- $f"; cat "$f"; done
  exit 1
fi
