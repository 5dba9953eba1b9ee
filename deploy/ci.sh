#!/usr/bin/env bash
# CI for deploy/: builds the Debian package with cargo-deb, installs it on this machine, checks
# what it installed (binary, conffiles, user, systemd unit, a real start of the service binary
# as the palmgate user with the installed config), tests the Mosquitto ACL against a real
# broker, and removes (then purges) the package. Run as root from anywhere in the repository:
#   bash deploy/ci.sh
# Honours CARGO_TARGET_DIR. Prints `N passed, N failed` at the end; exits 1 on any failure.
# Under PALMGATE_PEERS=required a missing peer (Mosquitto) fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok    $*"; }
bad() { failed=$((failed + 1)); echo "FAIL  $*"; }
step() { echo; echo "== $*"; }
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
  echo "deploy/ci.sh installs a package: run it as root" >&2
  exit 1
fi

installed_by_us=0
smoke_dir=""
server_pid=""
broker_dir=""
broker_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi
  if [ -n "$smoke_dir" ]; then rm -rf "$smoke_dir"; fi
  if [ -n "$broker_dir" ]; then rm -rf "$broker_dir"; fi
  if [ "$installed_by_us" = 1 ] && dpkg -s palmgate >/dev/null 2>&1; then
    echo "(cleanup: purging the palmgate package)"
    dpkg --purge palmgate >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "Dockerfile build context"
# No image is built here (no Docker on CI): the build stage's COPY sources are copied to a
# scratch directory and cargo must load the manifest and lock file from them alone.
# A path dependency the Dockerfile does not copy (vendor/rumqttd) fails here.
ctx=$(mktemp -d)
sed -n '/^FROM .* AS build/,/^FROM /p' deploy/Dockerfile | awk '$1 == "COPY" && $2 !~ /^--/ {for (i = 2; i < NF; i++) print $i}' |
  while read -r src; do mkdir -p "$ctx/$(dirname "$src")"; cp -r "$src" "$ctx/$src"; done
if (cd "$ctx" && cargo metadata --locked --format-version 1 >/dev/null); then
  ok "the Dockerfile's build stage copies everything the manifest needs"
else
  bad "cargo cannot load the manifest from the Dockerfile's build context"
fi
rm -rf "$ctx"

step "cargo-deb"
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi
cargo deb --version

step "cargo deb (release build + package)"
out_dir="${CARGO_TARGET_DIR:-target}/debian"
mkdir -p "$out_dir"
rm -f "$out_dir"/palmgate_*.deb
# The package is built from the dev profile: `cargo test` has just built that binary, so CI
# does not pay a second, release build (~12 min cold on 2 cores). Releases use plain `cargo deb`.
cargo deb --profile "${PALMGATE_DEB_PROFILE:-dev}" --output "$out_dir/"
deb=$(ls -t "$out_dir"/palmgate_*.deb | head -1)
echo "package: $deb ($(du -h "$deb" | cut -f1))"

step "package contents"
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/palmgate ./etc/palmgate/palmgate.toml ./etc/palmgate/site.toml \
         ./usr/lib/systemd/system/palmgate.service ./usr/share/palmgate/mosquitto/palmgate.conf \
         ./usr/share/palmgate/mosquitto/acl ./usr/share/palmgate/mosquitto/acl-local \
         ./usr/share/doc/palmgate/README.md ./usr/share/doc/palmgate/DEPLOY.md \
         ./usr/share/doc/palmgate/env.example; do
  if grep -q " $f\$" <<<"$contents"; then ok "package has $f"; else bad "package lacks $f"; fi
done
conffiles=$(dpkg-deb -I "$deb" conffiles)
for f in /etc/palmgate/palmgate.toml /etc/palmgate/site.toml; do
  if grep -qx "$f" <<<"$conffiles"; then ok "$f is a conffile"; else bad "$f is not a conffile"; fi
done
dpkg-deb -f "$deb" Package Version Architecture Depends

step "dpkg -i"
if dpkg -s palmgate >/dev/null 2>&1; then
  echo "palmgate is already installed on this machine; replacing it"
fi
installed_by_us=1
if ! dpkg -i "$deb"; then
  apt-get update -qq
  apt-get install -y -f -qq
fi
if dpkg -s palmgate 2>/dev/null | grep -q '^Status: install ok installed'; then
  ok "package installed"
else
  bad "package not installed"
fi

step "installed files"
if /usr/bin/palmgate --help >/dev/null; then ok "palmgate --help runs"; else bad "palmgate --help"; fi
/usr/bin/palmgate --version || true
if id palmgate >/dev/null 2>&1; then ok "user palmgate exists ($(id palmgate))"; else bad "no user palmgate"; fi
if id -nG palmgate 2>/dev/null | tr ' ' '\n' | grep -qx dialout; then
  ok "palmgate is in dialout"
else
  bad "palmgate is not in dialout"
fi
if [ "$(stat -c %U:%a /var/lib/palmgate 2>/dev/null)" = "palmgate:750" ]; then
  ok "/var/lib/palmgate is palmgate's, mode 750"
else
  bad "/var/lib/palmgate: $(stat -c %U:%a /var/lib/palmgate 2>&1)"
fi

step "systemd unit"
# cargo-deb 3 installs units under /usr/lib (merged /usr: /lib/systemd/system is the same place).
unit=/lib/systemd/system/palmgate.service
[ -e "$unit" ] || unit=/usr/lib/systemd/system/palmgate.service
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq systemd >/dev/null
fi
# `verify` reports unit errors (unknown keys, bad values, a missing binary) as lines naming the
# unit, often with exit status 0; anything else it prints is about the machine (e.g. no systemd
# as PID 1 in a container) and is not the unit's fault.
set +e
verify_out=$(systemd-analyze verify "$unit" 2>&1)
verify_rc=$?
set -e
unit_lines=$(grep palmgate <<<"$verify_out" || true)
if [ -n "$unit_lines" ]; then
  echo "$verify_out"
  bad "systemd-analyze verify found errors in the unit"
elif [ "$verify_rc" -ne 0 ]; then
  echo "$verify_out"
  echo "WARNING: systemd-analyze verify could not run here (exit $verify_rc); nothing it said names the unit"
  ok "systemd-analyze verify: no unit errors (tool not usable here)"
else
  ok "systemd-analyze verify $unit: clean"
fi
# Hardening regressions: the offline security score (0 = locked down, 10 = none); 1.9 today.
set +e
security_out=$(systemd-analyze security --offline=true --no-pager --threshold=25 "$unit" 2>&1)
security_rc=$?
set -e
score=$(grep -o 'Overall exposure level for palmgate.service: [0-9.]*' <<<"$security_out" || true)
if [ -n "$score" ] && [ "$security_rc" -eq 0 ]; then
  ok "systemd-analyze security: ${score#Overall }"
elif [ -n "$score" ]; then
  grep '✗' <<<"$security_out" || true
  bad "systemd-analyze security: ${score#Overall } is above 2.5"
else
  echo "$security_out" | tail -5
  echo "WARNING: systemd-analyze security --offline could not run here"
fi

step "the installed binary serves with the installed config"
# As the palmgate user, with /etc/palmgate/palmgate.toml as installed and an environment file
# made as deploy/README.md says (admin token; palmgate's Mosquitto password in
# PALMGATE_MQTT_URL), loaded as the unit's EnvironmentFile= would. The broker is a Mosquitto run
# here with the shipped palmgate.conf, acl and acl-local (paths and ports moved into a temp dir,
# both listeners on 127.0.0.1, a throw-away CA), so palmgate must log in with those credentials;
# without mosquitto, the broker is a free port where nothing listens (palmgate retries in the
# background). Either way it touches no broker of this machine's. Only the state paths (into a
# temp dir), the HTTP port (any free one) and the site file (below) come from extra variables.
no_broker=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 9)
smoke_dir=$(mktemp -d /tmp/palmgate-ci.XXXXXX)
chown palmgate:palmgate "$smoke_dir"
chmod 0750 "$smoke_dir"
# The installed site.toml, its relay boards moved to that same dead port, so this run never
# drives the coils of a Modbus simulator some test may have on 127.0.0.1:5020.
sed -E "s#modbus = \"tcp://[^\"]*\"#modbus = \"tcp://127.0.0.1:$no_broker\"#" \
  /etc/palmgate/site.toml >"$smoke_dir/site.toml"
chmod 0644 "$smoke_dir/site.toml"

# /etc/palmgate/env as deploy/README.md makes it ("Install on a gateway box", "Readers and
# Mosquitto"), here in $smoke_dir/env.
have_broker=0
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  have_broker=1
  PATH="$PATH:/usr/sbin"
elif [ "${PALMGATE_PEERS:-}" = required ]; then
  bad "mosquitto is missing (PALMGATE_PEERS=required)"
else
  echo "skipped (the MQTT login checks): mosquitto is not installed"
fi
env_file="$smoke_dir/env"
install -m 0600 -o root -g root /usr/share/doc/palmgate/env.example "$env_file"
sed -i "s/^PALMGATE_ADMIN_TOKEN=.*/PALMGATE_ADMIN_TOKEN=ci-token/" "$env_file"
if [ "$have_broker" = 1 ]; then
  broker_dir=$(mktemp -d /tmp/palmgate-ci-broker.XXXXXX)
  chmod 755 "$broker_dir"   # mosquitto started as root drops to the mosquitto user
  # The README's commands, with the password file in $broker_dir.
  PG_MQTT_PASSWORD=$(openssl rand -hex 24)
  printf '%s\n%s\n' "$PG_MQTT_PASSWORD" "$PG_MQTT_PASSWORD" \
    | mosquitto_passwd -c "$broker_dir/palmgate.passwd" palmgate >/dev/null
  sed -i "s#^PALMGATE_MQTT_URL=.*#PALMGATE_MQTT_URL=mqtt://palmgate:${PG_MQTT_PASSWORD}@127.0.0.1:1883#" \
    "$env_file"
  mosquitto_passwd -b "$broker_dir/palmgate.passwd" lobby-1 lobby-1-secret   # a reader of site.toml
  if grep -q "^PALMGATE_MQTT_URL=mqtt://palmgate:$PG_MQTT_PASSWORD@127.0.0.1:1883\$" "$env_file" \
     && [ "$(stat -c %U:%G:%a "$env_file")" = root:root:600 ]; then
    ok "env file: PALMGATE_MQTT_URL with palmgate's password, root:root 0600"
  else
    bad "env file: $(stat -c %U:%G:%a "$env_file"), $(grep -c '^PALMGATE_MQTT_URL=' "$env_file") URL line(s)"
  fi
  unset PG_MQTT_PASSWORD
  # The broker: both listeners moved to free loopback ports, a throw-away CA for the TLS one.
  read -r mqtt_plain mqtt_tls < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
  mkdir "$broker_dir/certs"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=palmgate ci CA" \
    -keyout "$broker_dir/certs/ca.key" -out "$broker_dir/certs/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$broker_dir/certs/server.key" -out "$broker_dir/certs/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$broker_dir/certs/san.ext"
  openssl x509 -req -in "$broker_dir/certs/server.csr" -CA "$broker_dir/certs/ca.crt" \
    -CAkey "$broker_dir/certs/ca.key" -CAcreateserial -days 2 -extfile "$broker_dir/certs/san.ext" \
    -out "$broker_dir/certs/server.crt" 2>/dev/null
  chmod 644 "$broker_dir"/certs/*
  sed -e "s#^listener 1883 127.0.0.1\$#listener $mqtt_plain 127.0.0.1#" \
      -e "s#^listener 8883\$#listener $mqtt_tls 127.0.0.1#" \
      -e "s#/etc/mosquitto/#$broker_dir/#g" \
      /usr/share/palmgate/mosquitto/palmgate.conf >"$broker_dir/mosquitto.conf"
  printf 'log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\npersistence false\n' \
    >>"$broker_dir/mosquitto.conf"
  cp /usr/share/palmgate/mosquitto/acl "$broker_dir/palmgate.acl"
  cp /usr/share/palmgate/mosquitto/acl-local "$broker_dir/palmgate-local.acl"
  chmod 644 "$broker_dir"/*.acl "$broker_dir/palmgate.passwd"
  mosquitto -c "$broker_dir/mosquitto.conf" >"$broker_dir/mosquitto.log" 2>&1 &
  broker_pid=$!
  for _ in $(seq 50); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $mqtt_plain), 1)" \
      2>/dev/null && break
    sleep 0.1
  done
  # The listener moved: so does the URL (as the sed above moved the broker's).
  sed -i "/^PALMGATE_MQTT_URL=/s#@127.0.0.1:1883\$#@127.0.0.1:$mqtt_plain#" "$env_file"
else
  sed -i "s#^PALMGATE_MQTT_URL=.*#PALMGATE_MQTT_URL=mqtt://127.0.0.1:$no_broker#" "$env_file"
fi
# systemd's EnvironmentFile=: KEY=VALUE lines; comments and blank lines ignored.
mapfile -t unit_env < <(grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$env_file")
# `palmgate check` as the palmgate user with the unit's environment: the installed config and
# example site pass (nothing started, nothing made); a broken site file is named, exit 1.
as_palmgate() {
  setpriv --reuid palmgate --regid palmgate --init-groups -- env -i PATH=/usr/bin:/bin NO_COLOR=1 \
    "${unit_env[@]}" "$@"
}
if as_palmgate /usr/bin/palmgate check --config /etc/palmgate/palmgate.toml >"$smoke_dir/check" 2>&1 \
   && grep -q '^site policy /etc/palmgate/site.toml: valid, ' "$smoke_dir/check" \
   && grep -q '^/etc/palmgate/palmgate.toml: OK (' "$smoke_dir/check"; then
  ok "palmgate check: the installed config and example site"
else
  cat "$smoke_dir/check"
  bad "palmgate check on the installed config"
fi
sed 's#Asia/Almaty#Asia/Almatyy#' /etc/palmgate/site.toml >"$smoke_dir/broken-site.toml"
chmod 644 "$smoke_dir/broken-site.toml"
if as_palmgate PALMGATE_SITE="$smoke_dir/broken-site.toml" /usr/bin/palmgate check \
     --config /etc/palmgate/palmgate.toml >"$smoke_dir/check" 2>&1; then
  cat "$smoke_dir/check"
  bad "palmgate check passed a broken site file"
elif grep -q 'unknown time zone `Asia/Almatyy`' "$smoke_dir/check"; then
  ok "palmgate check: a broken site file is named, exit 1"
else
  cat "$smoke_dir/check"
  bad "palmgate check on a broken site file: no time zone error"
fi
# setpriv execs (no fork): $! is palmgate itself.
setpriv --reuid palmgate --regid palmgate --init-groups -- env -i PATH=/usr/bin:/bin NO_COLOR=1 \
  "${unit_env[@]}" \
  PALMGATE_STORE_PATH="$smoke_dir/events.db" \
  PALMGATE_SECRETS_KEY_FILE="$smoke_dir/master.key" \
  PALMGATE_SECRETS_KEY_STORE="$smoke_dir/keys.db" \
  PALMGATE_HTTP_LISTEN=127.0.0.1:0 \
  PALMGATE_SITE="$smoke_dir/site.toml" \
  /usr/bin/palmgate serve --config /etc/palmgate/palmgate.toml \
  >"$smoke_dir/stdout" 2>"$smoke_dir/stderr" &
server_pid=$!
addr=""
for _ in $(seq 100); do
  addr=$(grep -o 'listening on http://[0-9.:]*' "$smoke_dir/stdout" 2>/dev/null | sed 's#.*http://##' || true)
  [ -n "$addr" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -n "$addr" ]; then
  ok "palmgate serve started with /etc/palmgate/palmgate.toml ($addr)"
  if curl -fsS "http://$addr/healthz" >/dev/null; then ok "GET /healthz"; else bad "GET /healthz"; fi
  if curl -fsS "http://$addr/admin/v1/policy" -H 'Authorization: Bearer ci-token' \
       | grep -q main-entrance; then
    ok "the installed site.toml (boards moved) is the policy in force"
  else
    bad "the installed site.toml is not in force"
  fi
  if [ "$have_broker" = 1 ]; then
    # palmgate logs in on the loopback listener (allow_anonymous false) with the env file's
    # credentials and subscribes; a reader's status over TLS then reaches it, and its answer to
    # the reader's trigger reaches the reader.
    for _ in $(seq 100); do
      grep -q 'connected to the MQTT broker' "$smoke_dir/stderr" && break
      sleep 0.1
    done
    if grep -q 'connected to the MQTT broker' "$smoke_dir/stderr" \
       && ! grep -q 'MQTT connection lost' "$smoke_dir/stderr"; then
      ok "palmgate logged in to the shipped Mosquitto config (loopback, allow_anonymous false)"
    else
      grep -i mqtt "$smoke_dir/stderr" | tail -5 || true
      bad "palmgate did not log in to the broker"
    fi
    reader=(-h localhost -p "$mqtt_tls" --cafile "$broker_dir/certs/ca.crt" -u lobby-1 -P lobby-1-secret)
    mosquitto_sub "${reader[@]}" -v -W 10 -C 1 -t palmgate/readers/lobby-1/cmd \
      >"$broker_dir/lobby-1-cmd.out" 2>&1 &
    cmd_sub=$!
    sleep 0.5
    mosquitto_pub "${reader[@]}" -V 5 -q 1 -r -t palmgate/readers/lobby-1/status \
      -m '{"online": true}' || true
    online=""
    for _ in $(seq 100); do
      online=$(curl -fsS "http://$addr/admin/v1/readers" -H 'Authorization: Bearer ci-token' \
        | python3 -c 'import json,sys; print(any(r.get("id") == "lobby-1" and r.get("online") is True for r in json.load(sys.stdin)))' \
        2>/dev/null || true)
      [ "$online" = True ] && break
      sleep 0.1
    done
    if [ "$online" = True ]; then
      ok "a reader's status over TLS reached palmgate (GET /admin/v1/readers: lobby-1 online)"
    else
      bad "lobby-1's status never reached palmgate"
    fi
    mosquitto_pub "${reader[@]}" -V 5 -q 1 -t palmgate/readers/lobby-1/trigger \
      -m '{"trigger_id": "ci-1"}' || true
    wait "$cmd_sub" 2>/dev/null || true
    if grep -q '^palmgate/readers/lobby-1/cmd {' "$broker_dir/lobby-1-cmd.out"; then
      ok "palmgate answered the reader's trigger on its cmd topic ($(cut -c1-80 "$broker_dir/lobby-1-cmd.out" | head -1))"
    else
      cat "$broker_dir/lobby-1-cmd.out"
      bad "no cmd reached the reader after its trigger"
    fi
  fi
  # ExecReload: SIGHUP re-reads the site file, the server keeps running.
  kill -HUP "$server_pid"
  sleep 1
  if kill -0 "$server_pid" 2>/dev/null && curl -fsS "http://$addr/healthz" >/dev/null; then
    ok "SIGHUP (systemctl reload): still serving"
  else
    bad "SIGHUP stopped the server"
  fi
  if grep -q $'\e' "$smoke_dir/stderr"; then
    bad "log lines carry ANSI colour codes despite NO_COLOR (the unit sets it for the journal)"
  else
    ok "plain log lines under NO_COLOR=1, as the unit runs it"
  fi
  if [ "$(stat -c %a "$smoke_dir/master.key" 2>/dev/null)" = "600" ]; then
    ok "master.key generated with mode 600"
  else
    bad "master.key: $(stat -c %a "$smoke_dir/master.key" 2>&1)"
  fi
  kill -TERM "$server_pid"
  set +e
  wait "$server_pid"
  rc=$?
  set -e
  server_pid=""
  if [ "$rc" -eq 0 ]; then ok "SIGTERM: clean exit"; else bad "SIGTERM: exit status $rc"; fi
  if [ -n "$broker_pid" ]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
  fi
  # The log it wrote verifies, as a backup would (deploy/README.md, Backups).
  if command -v sqlite3 >/dev/null 2>&1; then
    setpriv --reuid palmgate --regid palmgate --init-groups -- \
      sqlite3 "$smoke_dir/events.db" ".backup $smoke_dir/backup.db"
  else
    cp "$smoke_dir/events.db" "$smoke_dir/backup.db"
    if [ -e "$smoke_dir/events.db-wal" ]; then cp "$smoke_dir/events.db-wal" "$smoke_dir/backup.db-wal"; fi
  fi
  if PALMGATE_STORE_PATH="$smoke_dir/backup.db" /usr/bin/palmgate audit verify \
       --config /etc/palmgate/palmgate.toml; then
    ok "palmgate audit verify on a backup of that log"
  else
    bad "palmgate audit verify on a backup"
  fi
else
  cat "$smoke_dir/stdout" "$smoke_dir/stderr"
  bad "palmgate serve did not start with the installed config"
  kill "$server_pid" 2>/dev/null || true
  server_pid=""
fi

step "Mosquitto configuration and ACL (real broker)"
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  if bash deploy/mosquitto/test-acl.sh; then ok "mosquitto ACL"; else bad "mosquitto ACL"; fi
elif [ "${PALMGATE_PEERS:-}" = required ]; then
  bad "mosquitto is missing (PALMGATE_PEERS=required)"
else
  echo "skipped: mosquitto is not installed"
fi

step "dpkg -r, dpkg --purge"
if dpkg -r palmgate >/dev/null; then ok "dpkg -r palmgate"; else bad "dpkg -r palmgate"; fi
if [ ! -e /usr/bin/palmgate ] && [ -e /etc/palmgate/palmgate.toml ]; then
  ok "removed: binary gone, conffiles kept"
else
  bad "after dpkg -r: binary or conffiles not as expected"
fi
if dpkg --purge palmgate >/dev/null; then ok "dpkg --purge palmgate"; else bad "dpkg --purge palmgate"; fi
if [ ! -e /etc/palmgate/palmgate.toml ] && [ -d /var/lib/palmgate ]; then
  ok "purged: conffiles gone, /var/lib/palmgate kept"
else
  bad "after purge: conffiles or state not as expected"
fi
installed_by_us=0
rmdir /var/lib/palmgate 2>/dev/null || true   # only if empty (this run's own leftover)

echo
echo "deploy/ci.sh took $(($(date +%s) - start)) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
