#!/usr/bin/env bash
# CDC throughput: rows per second from WAL to Kafka acknowledgement for one
# pg_kappa publisher, side by side with pg_recvlogical + wal2json decoding
# the same WAL to a file, in the same run on the same machine.
#
#   test/bench/cdc_throughput.sh [ROWS]        (default 1000000)
#
# Needs the extension installed (test/run-tests or make install) and the
# packages postgresql-15-wal2json; runs as root (clusters as postgres) or as
# an ordinary user.  Prints a Markdown table; docs/performance.md quotes it.
#
# Three figures:
#   wal2json   pg_recvlogical -o format-version=2 to a file, started after
#              the commit, until it has written the transaction
#   cold       the publisher switched on after the commit (reload), until
#              the slot is confirmed past the transaction: every message
#              acknowledged by Kafka.  Same work as wal2json, plus Kafka.
#   live       the publisher running during the INSERT; time from commit to
#              the last acknowledgement
set -euo pipefail

rows=${1:-1000000}
. "$(dirname "$0")/lib.sh"

bench_start "kappa.cdc_enabled = off
kappa.stream_enabled = off" sales-events:32
psql -d bench -At <<'EOF' >/dev/null
CREATE TABLE sales (sale_id bigint PRIMARY KEY, store_id text NOT NULL, seller_id text NOT NULL,
  seller_name text NOT NULL, city text NOT NULL, country char(2) NOT NULL,
  amount numeric(12,2) NOT NULL, currency char(3) NOT NULL DEFAULT 'EUR',
  sold_at timestamptz NOT NULL DEFAULT now());
SET client_min_messages = warning;
SELECT kappa.publish_table('sales');
SELECT 'ok' FROM pg_create_logical_replication_slot('w2j', 'wal2json');
EOF

insert_rows() {
	psql -d bench -c "INSERT INTO sales SELECT i, 'ST-' || (i % 50), 'S-' || (i % 200),
	  'Seller ' || (i % 200), 'City ' || (i % 37), CASE WHEN i % 2 = 0 THEN 'ES' ELSE 'PT' END,
	  (i % 100000) / 100.0, 'EUR', timestamptz '2026-11-21 00:00:00Z' + i * interval '1 ms'
	  FROM generate_series($1, $2) i"
}
now() { date +%s.%N; }
wait_confirmed() {
	psql -d bench -At -c "DO \$\$ BEGIN
	  WHILE (SELECT coalesce(confirmed_lsn < '$1', true) FROM kappa.cdc_status) LOOP
	    PERFORM pg_sleep(0.005);
	    COMMIT;	-- a snapshot held to the end would keep every old row version
	  END LOOP; END \$\$"
}
worker_pid() { psql -d bench -At -c 'SELECT pid FROM kappa.cdc_status'; }

# ---- 1. one transaction of $rows rows, decoded by both -------------------
insert_rows 1 "$rows"
lsn=$(psql -d bench -At -c 'SELECT pg_current_wal_lsn()')
wal_mb=$(psql -d bench -At -c "SELECT round(pg_wal_lsn_diff('$lsn', restart_lsn) / 1048576.0) FROM pg_replication_slots WHERE slot_name = 'w2j'")

t0=$(now)
run "$bindir/pg_recvlogical" -h "$work" -p "$port" -d bench -S w2j --start \
	--endpos="$lsn" -o format-version=2 -f "$work/wal2json.out"
t1=$(now)
w2j_s=$(echo "$t1 - $t0" | bc -l)
w2j_lines=$(grep -c '"action":"I"' "$work/wal2json.out" || true)

t0=$(now)
psql -d postgres -c "ALTER SYSTEM SET kappa.cdc_enabled = on" -c "SELECT pg_reload_conf()" >/dev/null
wait_confirmed "$lsn"
t1=$(now)
cold_s=$(echo "$t1 - $t0" | bc -l)
produced=$(psql -d bench -At -c 'SELECT acknowledged FROM kappa.cdc_status')

# ---- 2. the publisher running while the next $rows rows are inserted -----
insert_rows $((rows + 1)) $((2 * rows))
t0=$(now)
lsn2=$(psql -d bench -At -c 'SELECT pg_current_wal_lsn()')
wait_confirmed "$lsn2"
t1=$(now)
live_s=$(echo "$t1 - $t0" | bc -l)
produced2=$(psql -d bench -At -c 'SELECT acknowledged FROM kappa.cdc_status')
pid=$(worker_pid)
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
anon_kb=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status")

rate() { echo "$1 / $2" | bc -l | xargs printf '%.0f'; }
w2j_rate=$(rate "$rows" "$w2j_s")
cold_rate=$(rate "$rows" "$cold_s")
live_rate=$(rate "$rows" "$live_s")

if [ "$w2j_lines" -ne "$rows" ] || [ "$produced" -ne "$rows" ] || [ "$produced2" -ne $((2 * rows)) ]; then
	echo "bench: counts do not match (wal2json $w2j_lines, pg_kappa $produced / $produced2)" >&2
	exit 1
fi

cat <<EOF
CDC throughput, $rows rows in one transaction ($wal_mb MB of WAL), $(nproc) cores, $(date -u +%Y-%m-%d)

| path | seconds | rows/s | vs wal2json |
|---|---:|---:|---:|
| pg_recvlogical + wal2json (format 2) to a file | $(printf '%.2f' "$w2j_s") | $w2j_rate | 1.00 |
| pg_kappa publisher, WAL to Kafka ack (cold) | $(printf '%.2f' "$cold_s") | $cold_rate | $(echo "$cold_rate / $w2j_rate" | bc -l | xargs printf '%.2f') |
| pg_kappa publisher, commit to Kafka ack (live) | $(printf '%.2f' "$live_s") | $live_rate | $(echo "$live_rate / $w2j_rate" | bc -l | xargs printf '%.2f') |

Publisher memory: peak RSS $((hwm_kb / 1024)) MB (VmHWM, shared memory pages included), private $((anon_kb / 1024)) MB (RssAnon) after $((2 * rows)) rows.
EOF
