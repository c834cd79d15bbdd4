#!/usr/bin/env bash
# Makes a fixture of tests/test_upgrade.py: runs the gateway of an older checkout (a worktree:
# git worktree add --detach /work/wt-old <commit>) with real traffic, stops it, and packs the
# state directory (var/) and conf.d/ it left, with a made-up admin token, into OUT.
#
#   tests/upgrade/produce.sh WORKTREE OUT.tar.gz term|kill [fleet]
#
# With main's venv (.venv) and mosquitto on this machine, ports 21301-21308 on 127.0.0.1.
# Traffic: 3 messages to telemetry/a sent to the cloud (a mosquitto), then 20 acknowledged with
# the cloud down; an ingest write; a persistent session dev1 (cmd/#, QoS 1) with 5 queued
# messages; a retained status/dev1; two twin changes (the gateway's thing and a child);
# the GWE app hello installed as 1 then 2 (gatewayctl); a configuration change waiting for
# its confirmation; a download stalled after 4 KiB. With "fleet": an upload waiting for the
# cloud's start, periodic uploads on, and a DDI deployment (hello 3) whose feedback the
# server refuses, the gateway killed in the update's health window. Older builds without a
# feature (admin API, ingest, twin...) refuse or ignore its part: the fixture holds what they
# wrote. Takes about 40 s.
set -u
old=$(realpath "$1") out=$(realpath "$2") stop=$3 fleet=${4:-}
here=$(cd "$(dirname "$0")/../.." && pwd)
py=$here/.venv/bin/python
[ -x "$py" ] || py=/work/main/.venv/bin/python
twistd=$(dirname "$py")/twistd
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
mkdir up && echo "a log" >up/a.txt && echo "another" >up/b.txt
ctl() { PYTHONPATH=$old "$py" "$(dirname "$py")/gatewayctl" --socket "$work/admin.sock" "$@"; }

cat >gateway.yaml <<EOF
gateway: {state_dir: $work/var, device_id: gw1, tenant_id: acme, shutdown_timeout: 4.0}
broker:
  listeners: {default: {endpoint: "tcp:21301:interface=127.0.0.1"}}
  plugins: {amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}}
links:
  links:
    cloud: {endpoint: "tcp:host=127.0.0.1:port=21302", client_id: gw1, clean_session: false,
            backoff_initial: 0.2, backoff_max: 1.0}
EOF
# The sections an older build may not know yet: each is kept when that build takes it.
for section in 'ingest: {endpoint: "tcp:21303:interface=127.0.0.1"}' \
    'telemetry: {metrics_endpoint: "tcp:21304:interface=127.0.0.1"}' \
    "admin: {socket: $work/admin.sock, tcp: \"tcp:21305:interface=127.0.0.1\"}" \
    'updates: {download: {allow_http: true}}' \
    "uploads: {files: [\"$work/up/*.txt\"]}" \
    'fleet: {enabled: true, base_url: "http://127.0.0.1:21308", controller_id: gw-1, auth: none, allow_http: true}'; do
    case $section in fleet:* | uploads:*) [ -n "$fleet" ] || continue ;; esac
    cp gateway.yaml try.yaml && echo "$section" >>try.yaml
    (cd "$old" && PYTHONPATH=$old "$py" "$twistd" gateway --config "$work/try.yaml" --check-config >/dev/null 2>&1) \
        && mv try.yaml gateway.yaml
done

# A download that stalls after 4 KiB; a DDI server (tests/fleet/ddiserver.py) offering hello 3
# once ddi-offer exists, refusing feedback while ddi-fail does.
cat >servers.py <<'EOF'
import hashlib, http.server, os, sys, threading, time
from twisted.internet import reactor
from twisted.web.server import Site
from tests.fleet.ddiserver import DDIServer, deployment
from tests.updates.resources import RangeFile

class Stall(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(4 << 20))
        self.end_headers()
        self.wfile.write(b"x" * 4096)
        self.wfile.flush()
        time.sleep(3600)

class Refusing(DDIServer):
    def render(self, request):
        if request.method == b"POST" and os.path.exists("ddi-fail"):
            request.setResponseCode(503)
            return b""
        return super().render(request)

    def _poll(self):
        saved = self.deployment
        if not os.path.exists("ddi-offer"):
            self.deployment = None
        try:
            return super()._poll()
        finally:
            self.deployment = saved

threading.Thread(target=http.server.ThreadingHTTPServer(("127.0.0.1", 21306), Stall).serve_forever, daemon=True).start()
data = open(sys.argv[1], "rb").read()
ddi = Refusing("http://127.0.0.1:21308")
ddi.sleep = "00:00:01"
ddi.files["hello.v3.tar.gz"] = RangeFile(data)
ddi.deployment = deployment("7", {"hello.v3.tar.gz": (data, hashlib.sha256(data).hexdigest())}, "http://127.0.0.1:21308")
reactor.listenTCP(21308, Site(ddi), interface="127.0.0.1")
reactor.run()
EOF
for v in 1 2 3; do
    mkdir "hello$v"
    printf '#!/bin/sh\necho installed v%s\n' "$v" >"hello$v/install.sh"
    printf 'import time\nwhile True:\n    time.sleep(1)\n' >"hello$v/hello.py"
    printf '[program:hello]\ncommand=python3 hello.py\nautostart=true\nautorestart=true\nstartsecs=1\n' >"hello$v/supervisor.conf"
    tar -C "hello$v" -czf "hello.v$v.tar.gz" install.sh hello.py supervisor.conf
done
touch ddi-fail
PYTHONPATH=$here "$py" servers.py "$work/hello.v3.tar.gz" >servers.log 2>&1 &
printf 'listener 21302 127.0.0.1\nallow_anonymous true\n' >cloud.conf
mosquitto -c cloud.conf >cloud.log 2>&1 &
cloud=$!
sleep 0.5
(cd "$old" && PYTHONPATH=$old exec "$py" "$twistd" --nodaemon --pidfile= gateway --config "$work/gateway.yaml") >gateway.log 2>&1 &
gateway=$!
for _ in $(seq 120); do grep -q "gateway started" gateway.log && break; sleep 0.25; done
grep -q "gateway started" gateway.log || { cat gateway.log; exit 1; }
for i in 1 2 3; do mosquitto_pub -p 21301 -q 1 -t telemetry/a -m "phase1-$i"; done
sleep 2
kill "$cloud"
wait "$cloud"
for i in $(seq 20); do mosquitto_pub -p 21301 -q 1 -t telemetry/a -m "phase2-$i"; done
curl -s -o /dev/null -H "X-Exosite-CIK: $(printf 'a%.0s' $(seq 40))" -d 'temp=21.5' http://127.0.0.1:21303/onep:v1/stack/alias
mosquitto_sub -p 21301 -c -i dev1 -q 1 -t 'cmd/#' -E
for i in $(seq 5); do mosquitto_pub -p 21301 -q 1 -t cmd/x -m "queued-$i"; done
mosquitto_pub -p 21301 -r -q 1 -t status/dev1 -m online
mosquitto_pub -p 21301 -q 1 -t e -m '{"topic": "acme/gw1/things/twin/commands/modify", "path": "/features/meter/properties/kwh", "value": 12.5}'
mosquitto_pub -p 21301 -q 1 -t e -m '{"topic": "acme/gw1:dev7/things/twin/commands/create", "path": "/", "value": {"attributes": {"x": 1}}}'
ctl apps install "$work/hello.v1.tar.gz"
ctl apps install "$work/hello.v2.tar.gz"
ctl config set telemetry.usage_report_interval 600 --confirm-within 120
mosquitto_pub -p 21301 -q 1 -t edge/gateway/updates/download -m '{"correlationId": "dl-1", "softwareModules": [{"softwareModule": {"name": "big", "version": "1"}, "artifacts": [{"filename": "big.bin", "download": {"HTTP": {"url": "http://127.0.0.1:21306/big.bin"}}, "size": 4194304}]}]}'
sleep 3
if [ -n "$fleet" ]; then
    mosquitto_pub -p 21301 -q 1 -t edge/gateway/uploads/trigger -m '{"correlationId": "up-1"}'
    mosquitto_pub -p 21301 -q 1 -t edge/gateway/uploads/activate -m '{"from": "2026-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}'
    touch ddi-offer
    for _ in $(seq 80); do [ -e var/apps/installing.json ] && break; sleep 0.25; done
    sleep 1
fi
ctl ops
ctl apps
if [ "$stop" = kill ]; then kill -KILL "$gateway"; else kill -TERM "$gateway"; fi
wait "$gateway"
echo "the gateway of $old ended with status $?"
if [ -e var/admin/token ]; then
    printf 'upgrade-fixture-token-not-a-secret\n' >var/admin/token
fi
dirs=var
[ -d conf.d ] && dirs="conf.d var"
# shellcheck disable=SC2086
tar --owner=0 --group=0 --numeric-owner --sort=name --mtime='2026-12-07 00:00Z' -czf "$out" $dirs
echo "$out: $(stat -c %s "$out") bytes"
