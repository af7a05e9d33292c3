#!/usr/bin/env bash
# CSV inbox throughput: rows per second from files in the inbox to Kafka
# acknowledgement, side by side with kcat -P sending the same rows as lines,
# in the same run on the same machine and broker.
#
#   test/bench/csv_throughput.sh [ROWS] [ROWS_PER_FILE] [ROUNDS]
#       defaults: 1000000 rows in files of 50000, 3 rounds
#   BENCH_KAFKA_OPTIONS='compression.type=none' ...   other producer settings
#       for the worker (kappa.kafka_options)
#
# Needs the extension installed (test/run-tests or make install) and kcat;
# runs as root (cluster as postgres) or as an ordinary user.  Prints a
# Markdown table; docs/csv-inbox.md quotes it.
#
# Figures:
#   kcat -P     the data rows of all files (header lines dropped) as one
#               message per line, lz4 like pg_kappa's producer; kcat exits
#               once every message is acknowledged.  Then, to tell Kafka's
#               cost from the worker's, the envelopes pg_kappa makes of the
#               same rows (generated here), keyed by sale_id; and both
#               again with other producer settings (batching, no
#               compression, zstd): how close any producer that only sends
#               these envelopes comes to the rate of the lines
#   pg_kappa    the files are put in the inbox while the worker is switched
#               off; the clock runs from the reload that switches it on
#               until every file is recorded as processed (which happens
#               only after Kafka acknowledged all its rows).  Includes the
#               SHA-256 pass, parsing, the input functions, the envelopes,
#               the ledger transaction and the move of each file.  The
#               stream worker is off: it would consume sales-events, and
#               only sales-events, on the same two cores meanwhile.
# Rounds: the machine's speed can swing by a third within minutes, so kcat
# and the worker are measured back to back ROUNDS times, each round with
# rows of its own (other sale ids and file names: the inbox's ledger would
# recognise the same files), and the table gives every round and the
# medians.  A round's ratio compares the runs of that round only.
# The dev broker drops the oldest batches beyond ~5 MiB per partition: the
# topics have 32 partitions and only acknowledgements are measured.
set -euo pipefail

rows=${1:-1000000}
per_file=${2:-50000}
rounds=${3:-3}
here=$(cd "$(dirname "$0")/../.." && pwd)
bindir=/usr/lib/postgresql/15/bin
port=${BENCH_PORT:-55433}

if [ "$(id -u)" -eq 0 ]; then
	run() { runuser -u postgres -- "$@"; }
	owner=postgres
else
	run() { "$@"; }
	owner=$(id -un)
fi
work=$(mktemp -d /tmp/pg_kappa-bench.XXXXXX)
chown "$owner" "$work"
cleanup() {
	run "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
	[ -n "${broker_pid:-}" ] && kill "$broker_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# ---- the files -------------------------------------------------------------
# A round's files go to $work/stage/ (moved into the inbox while the worker
# is off), its envelopes and lines to $work/envelopes and $work/lines.
files=$(( (rows + per_file - 1) / per_file ))
mkdir "$work/inbox" "$work/stage"
chown "$owner" "$work/inbox"
make_round() {
	local round=$1
	awk -v rows="$rows" -v per="$per_file" -v dir="$work/stage" -v envelopes="$work/envelopes" \
		-v first=$(( (round - 1) * rows )) -v round="$round" \
		-v sha=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef 'BEGIN {
		hdr = "sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at"
		for (n = 1; n <= rows; n++) {
			i = first + n
			if ((n - 1) % per == 0) {
				if (f) close(f)
				name = sprintf("sales_r%d_%08d.csv", round, int((n - 1) / per))
				f = dir "/" name
				print hdr > f
			}
			s = i % 86400
			# the envelope pg_kappa makes of the row, for the second kcat baseline
			printf "%d\t{\"op\":\"c\",\"before\":null,\"after\":{\"sale_id\":\"%d\",\"store_id\":\"ST-%d\",\"seller_id\":\"S-%d\",\"seller_name\":\"Seller, %d\",\"city\":\"City %d\",\"country\":\"%s\",\"amount\":\"%d.%02d\",\"currency\":\"EUR\",\"sold_at\":\"2026-11-21T%02d:%02d:%02d.000000Z\"},\"source\":{\"connector\":\"csv\",\"file\":\"%s\",\"line\":%d,\"sha256\":\"%s\"},\"ts_ms\":1763720103213}\n",
				i, i, i % 50, i % 200, i % 200, i % 37, (i % 2 ? "ES" : "PT"), i % 10000, i % 100,
				int(s / 3600), int(s / 60) % 60, s % 60, name, (n - 1) % per + 2, sha > envelopes
			printf "%d,ST-%d,S-%d,\"Seller, %d\",City %d,%s,%d.%02d,EUR,2026-11-21T%02d:%02d:%02dZ\n",
				i, i % 50, i % 200, i % 200, i % 37, (i % 2 ? "ES" : "PT"), i % 10000, i % 100,
				int(s / 3600), int(s / 60) % 60, s % 60 > f
		}
		close(f)
		close(envelopes)
	}'
	# the same rows as kcat input: every file without its header
	for f in "$work"/stage/sales_*.csv; do tail -n +2 "$f"; done > "$work/lines"
	chown -R "$owner" "$work/stage"
}

# ---- broker and cluster ----------------------------------------------------
"$here/test/dev-broker" --topic sales-events:32 --topic kcat-lines:32 --topic kcat-envelopes:32 \
	$(for i in 1 2 3; do echo "--topic ceiling-lines-$i:32 --topic ceiling-envelopes-$i:32"; done) \
	--bootstrap-file "$work/bootstrap" >/dev/null &
broker_pid=$!
for _ in $(seq 50); do [ -s "$work/bootstrap" ] && break; sleep 0.1; done
bootstrap=$(cat "$work/bootstrap")

run "$bindir/initdb" -D "$work/data" -A trust --encoding=UTF8 --locale=C >/dev/null
cat >> "$work/data/postgresql.conf" <<EOF
port = $port
unix_socket_directories = '$work'
listen_addresses = ''
shared_preload_libraries = 'pg_kappa'
wal_level = logical
shared_buffers = 256MB
kappa.database = 'bench'
kappa.brokers = '$bootstrap'
kappa.cdc_enabled = off
kappa.stream_enabled = off
kappa.csv_enabled = off
kappa.csv_inbox = '$work/inbox'
kappa.csv_stable_ms = 0
kappa.csv_poll_interval = 20
kappa.kafka_options = '${BENCH_KAFKA_OPTIONS:-}'
EOF
run "$bindir/pg_ctl" -D "$work/data" -l "$work/log" -w start >/dev/null
psql() { run "$bindir/psql" -X -q -h "$work" -p "$port" -v ON_ERROR_STOP=1 "$@"; }
psql -d postgres -c 'CREATE DATABASE bench'
psql -d bench -c 'CREATE EXTENSION pg_kappa'
# the worker started before database "bench" existed: wait for its restart
psql -d bench -At -c "DO \$\$ BEGIN
  WHILE NOT EXISTS (SELECT FROM kappa.stat_sources WHERE source = 'csv' AND state LIKE 'disabled%'
                    AND pid IS NOT NULL) LOOP
    PERFORM pg_sleep(0.05);
  END LOOP; END \$\$"

now() { date +%s.%N; }
rate() { echo "$1 / $2" | bc -l | xargs printf '%.0f'; }

# seconds of kcat -P sending FILE to TOPIC with the producer settings given
kcat_send() {
	local topic=$1 file=$2 t0
	shift 2
	t0=$(now)
	kcat -P -b "$bootstrap" -t "$topic" "$@" < "$file"
	echo "$(now) - $t0" | bc -l
}
tab=$(printf '\t')

# ---- the rounds: kcat -P, then the pg_kappa CSV inbox ---------------------
csv_switch() {
	psql -d postgres -c "ALTER SYSTEM SET kappa.csv_enabled = $1" -c "SELECT pg_reload_conf()" >/dev/null
}
declare -a kcat_s kcat_env_s csv_s
bytes=0
for r in $(seq 1 "$rounds"); do
	make_round "$r"
	[ "$r" -eq 1 ] && bytes=$(cat "$work"/stage/sales_*.csv | wc -c)
	kcat_s[$r]=$(kcat_send kcat-lines "$work/lines" -z lz4 -X linger.ms=5)
	kcat_env_s[$r]=$(kcat_send kcat-envelopes "$work/envelopes" -z lz4 -X linger.ms=5 -K "$tab")

	# the worker is off: the files appear at once, then it is switched on
	mv "$work"/stage/sales_*.csv "$work/inbox/"
	t0=$(now)
	csv_switch on
	psql -d bench -At -c "DO \$\$ BEGIN
	  WHILE (SELECT count(*) FROM kappa.csv_files WHERE state = 'processed') < $((r * files)) LOOP
	    PERFORM pg_sleep(0.005);
	    COMMIT;	-- a snapshot held to the end would keep every old row version
	  END LOOP; END \$\$"
	t1=$(now)
	csv_s[$r]=$(echo "$t1 - $t0" | bc -l)
	csv_switch off
	psql -d bench -At -c "DO \$\$ BEGIN
	  WHILE NOT EXISTS (SELECT FROM kappa.stat_sources WHERE source = 'csv' AND state LIKE 'disabled%') LOOP
	    PERFORM pg_sleep(0.01);
	  END LOOP; END \$\$"
	echo "round $r: kcat lines $(printf '%.2f' "${kcat_s[$r]}") s, kcat envelopes $(printf '%.2f' "${kcat_env_s[$r]}") s, pg_kappa $(printf '%.2f' "${csv_s[$r]}") s" >&2
done

# ---- 3. what any producer of these envelopes can reach -------------------
# The same lines and envelopes sent by kcat with other producer settings: a
# producer that does nothing but send the envelopes, against the lines with
# the same settings.  After the worker, so that the broker holds only what
# the other phases sent while they are timed.
ceiling=""
i=0
for settings in "-z lz4 -X linger.ms=20 -X batch.size=4000000 -X batch.num.messages=100000" \
		"-z none -X linger.ms=5" "-z zstd -X linger.ms=5"; do
	i=$((i + 1))
	# shellcheck disable=SC2086
	lines_s=$(kcat_send "ceiling-lines-$i" "$work/lines" $settings)
	# shellcheck disable=SC2086
	env_s=$(kcat_send "ceiling-envelopes-$i" "$work/envelopes" $settings -K "$tab")
	ceiling="$ceiling| \`$settings\` | $(rate "$rows" "$lines_s") | $(rate "$rows" "$env_s") | $(echo "$lines_s / $env_s" | bc -l | xargs printf '%.2f') |
"
done

read -r ingested rejected < <(psql -d bench -At -F ' ' -c "SELECT sum(rows_ingested), sum(rows_rejected)
	FROM kappa.csv_files WHERE state = 'processed'")
pid=$(psql -d bench -At -c "SELECT pid FROM kappa.stat_sources WHERE source = 'csv'")
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
anon_kb=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status")
left=$(find "$work/inbox" -maxdepth 1 -name 'sales_*.csv' | wc -l)

if [ "$ingested" -ne $((rows * rounds)) ] || [ "$rejected" -ne 0 ] || [ "$left" -ne 0 ]; then
	echo "bench: counts do not match ($ingested rows ingested, $rejected rejected, $left files left)" >&2
	exit 1
fi

div() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }
# the median of the arguments, printed with the printf format $fmt
median() {
	local fmt=$1
	shift
	printf '%s\n' "$@" | sort -g | awk -v fmt="$fmt" '{ v[NR] = $1 }
		END { printf fmt "\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
per_round=""
declare -a kr er cr cvk cve evk inner
for r in $(seq 1 "$rounds"); do
	kr[$r]=$(rate "$rows" "${kcat_s[$r]}")
	er[$r]=$(rate "$rows" "${kcat_env_s[$r]}")
	cr[$r]=$(rate "$rows" "${csv_s[$r]}")
	evk[$r]=$(div "${er[$r]}" "${kr[$r]}")
	cvk[$r]=$(div "${cr[$r]}" "${kr[$r]}")
	cve[$r]=$(div "${cr[$r]}" "${er[$r]}")
	# the round's files, first started to last recorded (no reload in it)
	inner[$r]=$(psql -d bench -At -c "SELECT extract(epoch FROM max(finished_at) - min(started_at))
		FROM kappa.csv_files WHERE state = 'processed' AND name LIKE 'sales\_r${r}\_%'")
	per_round="$per_round| $r | ${kr[$r]} | ${er[$r]} (${evk[$r]}) | ${cr[$r]} (${cvk[$r]}) | ${cve[$r]} |
"
done
kcat_rate=$(median %.0f "${kr[@]}")
kcat_env_rate=$(median %.0f "${er[@]}")
csv_rate=$(median %.0f "${cr[@]}")
inner_rate=$(rate "$rows" "$(median %.6f "${inner[@]}")")

cat <<EOF
CSV inbox throughput, $rows rows in $files files ($((bytes / 1048576)) MB of CSV) a round, $rounds rounds, $(nproc) cores${BENCH_KAFKA_OPTIONS:+, worker kappa.kafka_options = '$BENCH_KAFKA_OPTIONS'}, $(date -u +%Y-%m-%d)

Each round: kcat sends the round's rows as lines, then as the envelopes pg_kappa makes of them, then the pg_kappa CSV inbox reads the round's files (rows/s; in parentheses, against kcat's lines in the same round):

| round | kcat -P, the rows as lines (lz4) | kcat -P, the same envelopes, keyed (lz4) | pg_kappa CSV inbox, reload to last file processed (Kafka ack + ledger) | pg_kappa vs kcat's envelopes |
|---|---:|---:|---:|---:|
${per_round}| median | $kcat_rate | $kcat_env_rate ($(median %.2f "${evk[@]}")) | $csv_rate ($(median %.2f "${cvk[@]}")) | $(median %.2f "${cve[@]}") |

pg_kappa from the first file started to the last file recorded (the ledger's times, no reload in it), median of the rounds: $inner_rate rows/s.
kcat sends each CSV line (about $(( $(wc -c < "$work/lines") / rows )) bytes), then envelopes shaped like pg_kappa's (about $(( $(wc -c < "$work/envelopes") / rows )) bytes with the key); pg_kappa makes an envelope per row from the CSV and sends it keyed by sale_id.
The ceiling: kcat sending the envelopes against kcat sending the lines, other producer settings, the last round's rows (rows/s):

| kcat -P settings | lines | envelopes | envelopes / lines |
|---|---:|---:|---:|
${ceiling}
CSV worker memory: peak RSS $((hwm_kb / 1024)) MB (VmHWM, shared memory pages included), private $((anon_kb / 1024)) MB (RssAnon) after $rounds rounds of $rows rows.
EOF
