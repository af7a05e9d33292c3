#!/usr/bin/env bash
# SOAP poller throughput: CPU time of the pg_kappa soap poller to fetch,
# parse, check and produce N confirmations (default 10 000) served in pages
# by test/soap_server.py, until Kafka acknowledged all and the watermark is
# stored.  Baseline, same pages, same run: the standard tools doing the same
# work in separate processes (curl fetching the pages, xmllint parsing them,
# kcat producing the same envelopes).
#
#   test/bench/soap_throughput.sh [N]
#
# Needs the extension installed (test/run-tests or make install) and curl,
# libxml2-utils (xmllint), kcat, python3; runs as root (clusters as
# postgres) or as an ordinary user.  Prints a Markdown table.
#
# The poller's CPU time is utime + stime of its process from /proc (all its
# threads, librdkafka's included), read before the poll starts and after the
# watermark is stored.  Target: under 1 s of CPU for 10 000 confirmations.
set -euo pipefail

n=${1:-10000}
here=$(cd "$(dirname "$0")/../.." && pwd)
bindir=/usr/lib/postgresql/15/bin
port=${BENCH_PORT:-55433}
python=/usr/bin/python3
hz=$(getconf CLK_TCK)

if [ "$(id -u)" -eq 0 ]; then
	run() { runuser -u postgres -- "$@"; }
	owner=postgres
else
	run() { "$@"; }
	owner=$(id -un)
fi
work=$(mktemp -d /tmp/pg_kappa-soap-bench.XXXXXX)
chown "$owner" "$work"
cleanup() {
	run "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
	[ -n "${broker_pid:-}" ] && kill "$broker_pid" 2>/dev/null || true
	[ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

free_port() { $python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# broker and SOAP service
"$here/test/dev-broker" --topic payment-confirmations:8 --topic baseline:8 \
	--bootstrap-file "$work/bootstrap" >/dev/null 2>&1 &
broker_pid=$!
soap_port=$(free_port)
watch_port=$(free_port)
$python "$here/test/soap_server.py" --port "$soap_port" --watch-port "$watch_port" \
	--fixtures "$here/test/fixtures" --log "$work/requests.log" --watch-log "$work/watch.log" \
	--ready-file "$work/ready" --username kappa --password bench-pw >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/bootstrap" ] && [ -s "$work/ready" ] && break; sleep 0.1; done
bootstrap=$(cat "$work/bootstrap")
printf 'soap.password = bench-pw\n' > "$work/secrets"
chmod 0600 "$work/secrets"
chown "$owner" "$work/secrets"

# cluster
run "$bindir/initdb" -D "$work/data" -A trust --encoding=UTF8 --locale=C >/dev/null
cat >> "$work/data/postgresql.conf" <<EOF
port = $port
unix_socket_directories = '$work'
listen_addresses = ''
shared_preload_libraries = 'pg_kappa'
kappa.database = 'bench'
kappa.brokers = '$bootstrap'
kappa.cdc_enabled = off
kappa.soap_username = 'kappa'
kappa.secrets_file = '$work/secrets'
kappa.soap_poll_interval = '1h'
EOF
run "$bindir/pg_ctl" -D "$work/data" -l "$work/log" -w start >/dev/null
psql() { run "$bindir/psql" -X -q -h "$work" -p "$port" -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c 'CREATE DATABASE bench'
psql -d bench -c 'CREATE EXTENSION pg_kappa'

now() { date +%s.%N; }
poller_pid() { psql -d bench -At -c "SELECT pid FROM kappa.stat_sources WHERE source = 'soap'"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
set_conf() {
	psql -d postgres -c "ALTER SYSTEM SET kappa.soap_page_size = $1" \
		-c "ALTER SYSTEM SET kappa.soap_url = '$2'" -c 'SELECT pg_reload_conf()' >/dev/null
}
wait_polled() {
	psql -d bench -At -c "DO \$\$ BEGIN
	  WHILE NOT EXISTS (SELECT FROM kappa.soap_state WHERE endpoint = '$1'
	                     AND page_token IS NULL AND since = '$2') LOOP
	    PERFORM pg_sleep(0.005);
	    COMMIT;	-- a snapshot held to the end would keep every old row version
	  END LOOP; END \$\$"
}
ingested() { psql -d bench -At -c "SELECT coalesce(sum(rows_ingested), 0) FROM kappa.stat_sources WHERE source = 'soap'"; }

# confirmation i of the generator is at 2026-11-21T00:00:00Z + i s + (i % 1000) ms
last_time() {
	local i=$(($1 - 1))
	psql -d bench -At -c "SELECT timestamptz '2026-11-21T00:00:00Z' + $i * interval '1 s' + ($i % 1000) * interval '1 ms'"
}

# warm-up: the producer is created and connected by a one-page poll
until [ -n "$(poller_pid)" ]; do sleep 0.1; done
set_conf 500 "http://127.0.0.1:$soap_port/bench/500"
wait_polled "http://127.0.0.1:$soap_port/bench/500" "$(last_time 500)"
pid=$(poller_pid)

declare -A cpu wall
for size in 500 1000; do
	url="http://127.0.0.1:$soap_port/bench/$n?page_size=$size"
	before=$(ingested)
	c0=$(cpu_ticks "$pid")
	t0=$(now)
	set_conf "$size" "$url"
	wait_polled "$url" "$(last_time "$n")"
	t1=$(now)
	c1=$(cpu_ticks "$pid")
	got=$(($(ingested) - before))
	if [ "$got" -ne "$n" ]; then
		echo "bench: $got confirmations produced instead of $n (page size $size)" >&2
		exit 1
	fi
	cpu[$size]=$(echo "($c1 - $c0) / $hz" | bc -l)
	wall[$size]=$(echo "$t1 - $t0" | bc -l)
done
[ "$(poller_pid)" = "$pid" ] || { echo "bench: the poller restarted" >&2; exit 1; }

# ---- baseline: the same pages through curl, xmllint and kcat -------------
mkdir -p "$work/pages"
request() {
	local token=$1
	printf '<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:pay="urn:electrored:payments:v1" xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">
<soapenv:Header><wsse:Security soapenv:mustUnderstand="1"><wsse:UsernameToken><wsse:Username>kappa</wsse:Username><wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText">bench-pw</wsse:Password></wsse:UsernameToken></wsse:Security></soapenv:Header>
<soapenv:Body><pay:GetPaymentConfirmations><pay:Since>1970-01-01T00:00:00Z</pay:Since>%s<pay:PageSize>500</pay:PageSize></pay:GetPaymentConfirmations></soapenv:Body></soapenv:Envelope>\n' \
		"${token:+<pay:PageToken>$token</pay:PageToken>}"
}
for ((off = 0; off < n; off += 500)); do
	token=""
	[ $off -gt 0 ] && token="o$off"
	request "$token" > "$work/pages/req-$off.xml"
done
# CPU time of a command and its children, from getrusage
cpu_of() {
	$python - "$@" <<'EOF'
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_utime + r.ru_stime)
EOF
}
cat > "$work/fetch.sh" <<EOF
#!/bin/sh
for f in $work/pages/req-*.xml; do
	curl -s -X POST -H 'Content-Type: text/xml; charset=utf-8' \
		-H 'SOAPAction: "urn:electrored:payments:v1#GetPaymentConfirmations"' \
		--data-binary @\$f -o \${f%.xml}.resp http://127.0.0.1:$soap_port/bench/$n
done
EOF
chmod +x "$work/fetch.sh"
curl_cpu=$(cpu_of "$work/fetch.sh")
pages=$(ls "$work"/pages/*.resp | wc -l)
xmllint_cpu=$(cpu_of xmllint --noout "$work"/pages/*.resp)
conf_count=$(cat "$work"/pages/*.resp | grep -o '<p:Confirmation>' | wc -l)
# the poller's own envelopes, produced again by kcat
kcat -C -b "$bootstrap" -t payment-confirmations -o beginning -e -q -K $'\x1f' -f $'%k\x1f%s\n' \
	| tail -n "$n" > "$work/envelopes"
kcat_cpu=$(cpu_of kcat -P -b "$bootstrap" -t baseline -K $'\x1f' -z lz4 -l "$work/envelopes")
if [ "$conf_count" -ne "$n" ] || [ "$(wc -l < "$work/envelopes")" -ne "$n" ]; then
	echo "bench: baseline counts do not match ($conf_count confirmations, $(wc -l < "$work/envelopes") envelopes)" >&2
	exit 1
fi
tools_cpu=$(echo "$curl_cpu + $xmllint_cpu + $kcat_cpu" | bc -l)
bytes=$(cat "$work"/pages/*.resp | wc -c)

f2() { printf '%.2f' "$1"; }
f3() { printf '%.3f' "$1"; }
rate() { echo "$n / $1" | bc -l | xargs printf '%.0f'; }
verdict() { if [ "$(echo "$1 < 1" | bc -l)" -eq 1 ]; then echo "met"; else echo "NOT met"; fi; }

cat <<EOF
SOAP poller, $n confirmations ($pages pages of 500, $((bytes / 1024)) kB of XML), $(nproc) cores, $(date -u +%Y-%m-%d)

| path | CPU s | wall s | confirmations per CPU s | CPU vs tools |
|---|---:|---:|---:|---:|
| curl + xmllint --noout + kcat -P (baseline: $(f3 "$curl_cpu") + $(f3 "$xmllint_cpu") + $(f3 "$kcat_cpu")) | $(f3 "$tools_cpu") | | $(rate "$tools_cpu") | 1.00 |
| pg_kappa soap poller, page size 500 | $(f3 "${cpu[500]}") | $(f2 "${wall[500]}") | $(rate "${cpu[500]}") | $(f2 "$(echo "${cpu[500]} / $tools_cpu" | bc -l)") |
| pg_kappa soap poller, page size 1000 | $(f3 "${cpu[1000]}") | $(f2 "${wall[1000]}") | $(rate "${cpu[1000]}") | $(f2 "$(echo "${cpu[1000]} / $tools_cpu" | bc -l)") |

Target (under 1 s of CPU for $n confirmations): $(verdict "${cpu[500]}") with pages of 500, $(verdict "${cpu[1000]}") with pages of 1000.
CPU is utime + stime of the poller process (10 ms ticks): fetching, parsing, checking, producing and
waiting for Kafka's acknowledgement of every page, and one transaction per page.  Wall time includes
the test service generating the pages (Python).
EOF
