#!/usr/bin/env bash
# What writing row memory costs PostgreSQL in other shapes: one million rows
# shaped like kappa.stream_rows (the stream bench's sales), written with
# INSERT ... SELECT from an unlogged table already in shared buffers, into
#   - a table like kappa.stream_rows (primary key and BRIN index)
#   - the same without the row itself (row_data), primary key kept
#   - the same with the row, no index
#   - one row per 50 000 sales: key, row and position as one value (lz4)
#   - one row per 50 000 sales: the keys as text[] under a GIN index
#     (fastupdate off, then on), and a lookup of 50 000 keys with && against
#     it (given at most 60 s)
# Each write is preceded by a CHECKPOINT (untimed).  No pg_kappa, no Kafka:
# the question is only what the database pays for each shape.
#
#   test/bench/row_store_shapes.sh [ROWS]      default 1000000
# Prints a Markdown table; docs/performance.md quotes it.
set -euo pipefail

rows=${1:-1000000}
pg_config=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
bindir=$($pg_config --bindir)
port=${BENCH_PORT:-55435}

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
	rm -rf "$work"
}
trap cleanup EXIT
psql() { run "$bindir/psql" -X -q -h "$work" -p "$port" -v ON_ERROR_STOP=1 -d postgres "$@"; }

run "$bindir/initdb" -D "$work/data" -A trust --encoding=UTF8 --locale=C >/dev/null
cat >> "$work/data/postgresql.conf" <<EOC
port = $port
unix_socket_directories = '$work'
listen_addresses = ''
shared_buffers = 1GB
max_wal_size = 16GB
checkpoint_timeout = 30min
wal_level = logical
EOC
run "$bindir/pg_ctl" -D "$work/data" -l "$work/log" -w start >/dev/null

# The rows: the stream bench's sales, as the worker remembers them.
psql -c "CREATE EXTENSION pg_prewarm" -c "
CREATE UNLOGGED TABLE stage AS
SELECT 'sales-events'::text AS topic, i::text AS key,
       pg_lsn('0/0') + i * 256 AS lsn, 0::bigint AS seq, false AS deleted,
       json_build_object('sale_id', i::text, 'store_id', 'ST-' || i % 300, 'seller_id', 'S-' || i % 500,
                         'seller_name', 'Seller ' || i % 500, 'city', 'City ' || i % 50,
                         'country', (ARRAY['ES','PT','FR','IT','DE'])[i % 5 + 1],
                         'amount', to_char(i % 997 + (i % 100) / 100.0, 'FM990.00'), 'currency', 'EUR',
                         'sold_at', to_char(to_timestamp(1795219200 + i / 50) AT TIME ZONE 'UTC',
                                            'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))::text AS row_data,
       '{1,2}'::int[] AS counted, '{}'::int[] AS excluded, now() AS updated_at,
       date_trunc('day', to_timestamp(1795219200 + i / 50)) + interval '1 day' AS windows_end
  FROM generate_series(1000000, 1000000 + $rows - 1) i" -c "SELECT pg_prewarm('stage')" >/dev/null

# seconds of one statement after a checkpoint
timed() {
	psql -c "CHECKPOINT" >/dev/null
	# (a statement over its timeout fails: reported as such, not fatal here)
	{ psql -At -c "SET statement_timeout = '${2:-0}'" -c "DO \$\$ DECLARE t0 timestamptz := clock_timestamp();
BEGIN $1; RAISE NOTICE 'secs %', extract(epoch FROM clock_timestamp() - t0); END \$\$" 2>&1 || true; } |
		sed -n 's/.*secs \([0-9.]*\).*/\1/p; s/.*canceling statement due to statement timeout.*/over/p' |
		awk 'NF { if ($1 == "over") print "did not finish"; else printf "%.2f\n", $1; exit }'
}

psql -c "CREATE TABLE like_rows (LIKE stage, PRIMARY KEY (key, topic))" \
	-c "CREATE INDEX ON like_rows USING brin (windows_end) WITH (autosummarize = on)" \
	-c "CREATE TABLE no_row_data (LIKE stage, PRIMARY KEY (key, topic))" \
	-c "ALTER TABLE no_row_data DROP COLUMN row_data" \
	-c "CREATE TABLE no_index (LIKE stage)" \
	-c "SET default_toast_compression = lz4" \
	-c "CREATE UNLOGGED TABLE stage_seg AS SELECT (key::bigint / 50000) AS seg,
	           string_agg(key || E'\t' || row_data || E'\t' || lsn::text, E'\n' ORDER BY key) AS data,
	           array_agg(key ORDER BY key) AS keys FROM stage GROUP BY 1" \
	-c "CREATE TABLE segments (seg bigint PRIMARY KEY, data text COMPRESSION lz4)" \
	-c "CREATE TABLE key_arrays (seg bigint PRIMARY KEY, keys text[])" \
	-c "CREATE INDEX ON key_arrays USING gin (keys) WITH (fastupdate = off)" \
	-c "CREATE TABLE key_arrays_fu (seg bigint PRIMARY KEY, keys text[])" \
	-c "CREATE INDEX ON key_arrays_fu USING gin (keys) WITH (fastupdate = on)" >/dev/null

like_s=$(timed "INSERT INTO like_rows SELECT * FROM stage")
norow_s=$(timed "INSERT INTO no_row_data SELECT topic, key, lsn, seq, deleted, counted, excluded, updated_at, windows_end FROM stage")
noidx_s=$(timed "INSERT INTO no_index SELECT * FROM stage")
seg_s=$(timed "INSERT INTO segments SELECT seg, data FROM stage_seg")
gin_s=$(timed "INSERT INTO key_arrays SELECT seg, keys FROM stage_seg")
ginfu_s=$(timed "INSERT INTO key_arrays_fu SELECT seg, keys FROM stage_seg")
lookup_s=$(timed "PERFORM count(*) FROM key_arrays WHERE keys && (SELECT array_agg(k::text) FROM generate_series(1475000, 1524999) k)" 60s)
seg_mb=$(psql -At -c "SELECT pg_total_relation_size('segments') / 1048576")
nsegs=$(psql -At -c "SELECT count(*) FROM segments")

cat <<EOF
Row memory in other shapes, $rows rows shaped like kappa.stream_rows, INSERT ... SELECT from shared buffers, $(nproc) cores, $(date -u +%Y-%m-%d)

| into | seconds |
|---|---:|
| a table like kappa.stream_rows (primary key and BRIN index) | $like_s |
| the same without the row itself (row_data), primary key kept | $norow_s |
| the same with the row, no index | $noidx_s |
| $nsegs rows of 50 000 sales each (key, row and position as one lz4-compressed value, $seg_mb MB) | $seg_s |
| $nsegs rows of 50 000 keys as text[] under a GIN index, fastupdate off / on | $gin_s / $ginfu_s |
| a lookup of 50 000 keys with && against that GIN index (at most 60 s) | $lookup_s |
EOF
