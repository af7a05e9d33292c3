#!/usr/bin/env bash
# Freshness: while sales are inserted at 10 000 a second (pgbench), how long
# from a sale's commit until it is in the rankings (kappa.top_sales_by_city
# reads kappa.ranking_results)?  Probe sales with a city of their own are
# committed every 100 ms; a procedure polls every 5 ms until each appears.
#
#   test/bench/freshness.sh [SECONDS] [ROWS_PER_SECOND]     defaults: 30, 10000
#   BENCH_HOLD_SNAPSHOT=1 ...   a session holds one snapshot open for the
#       whole load (as a long report or pg_dump does): no old row version
#       written meanwhile can be pruned or vacuumed
#   BENCH_BATCH_MS=N ...        kappa.stream_batch_ms (20 unless given)
set -euo pipefail
seconds=${1:-30}
rate=${2:-10000}
. "$(dirname "$0")/lib.sh"

bench_start "kappa.stream_batch_ms = ${BENCH_BATCH_MS:-20}" sales-events:8 payment-confirmations:2 \
	top-sales-by-city:1 top-salesman-by-country:1
psql -d bench >/dev/null <<'EOF2'
CREATE TABLE sales (sale_id bigint PRIMARY KEY, store_id text NOT NULL, seller_id text NOT NULL,
  seller_name text NOT NULL, city text NOT NULL, country char(2) NOT NULL,
  amount numeric(12,2) NOT NULL, currency char(3) NOT NULL DEFAULT 'EUR',
  sold_at timestamptz NOT NULL DEFAULT now());
CREATE SEQUENCE sale_ids;
SET client_min_messages = warning;
SELECT kappa.publish_table('sales');
CREATE TABLE probe_latency (probe int, seconds float8);
CREATE SEQUENCE probe_ids;
-- up to n probes, none started after secs seconds (while the load runs)
CREATE PROCEDURE probe(n int, secs float8 DEFAULT 1e6) LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    i bigint;
    deadline timestamptz := clock_timestamp() + secs * interval '1 s';
BEGIN
    FOR k IN 1 .. n LOOP
        EXIT WHEN clock_timestamp() > deadline;
        i := nextval('probe_ids');
        INSERT INTO sales VALUES (-i, 'P', 'P', 'P', 'probe-' || i, 'ES', 1, 'EUR', now());
        COMMIT;
        t0 := clock_timestamp();
        WHILE NOT EXISTS (SELECT FROM kappa.ranking_results
                           WHERE ranking = 'top_sales_by_city' AND group_values = ARRAY['probe-' || i]) LOOP
            PERFORM pg_sleep(0.005);
            COMMIT;  -- a snapshot held while waiting would keep old row versions
        END LOOP;
        INSERT INTO probe_latency VALUES (i, extract(epoch FROM clock_timestamp() - t0));
        COMMIT;
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
EOF2
# wait for the stream worker to join its group (the first probe)
psql -d bench -c 'CALL probe(1)'
psql -d bench -c 'TRUNCATE probe_latency'

cat > "$work/load.sql" <<'EOF2'
INSERT INTO sales SELECT nextval('sale_ids'), 'ST-' || (i % 50), 'S-' || (i % 200), 'Seller ' || (i % 200),
       'City ' || (i % 40), CASE WHEN i % 2 = 0 THEN 'ES' ELSE 'PT' END, (i % 1000) / 10.0, 'EUR', now()
  FROM generate_series(1, 100) i;
EOF2
chown "$owner" "$work/load.sql"
tps=$((rate / 100))
if [ -n "${BENCH_HOLD_SNAPSHOT:-}" ]; then
	psql -d bench -c "SET application_name = 'bench_hold'" -c 'BEGIN ISOLATION LEVEL REPEATABLE READ' \
		-c 'SELECT count(*) FROM kappa.rankings' -c "SELECT pg_sleep($seconds + 600)" >/dev/null 2>&1 &
	hold_pid=$!
	psql -d bench -At -c "DO \$\$ BEGIN
	  WHILE NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_xmin IS NOT NULL
	                       AND application_name = 'bench_hold') LOOP
	    PERFORM pg_sleep(0.01);
	    COMMIT;
	  END LOOP; END \$\$"
fi
run "$bindir/pgbench" -n -h "$work" -p "$port" -c 2 -j 2 -R "$tps" -T "$seconds" -f "$work/load.sql" bench \
	> "$work/pgbench.out" 2>&1 &
load_pid=$!
probes=$(( seconds * 2 - 4 ))
psql -d bench -c "CALL probe($probes, $seconds - 1)"
wait "$load_pid"
if [ -n "${hold_pid:-}" ]; then
	psql -d bench -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bench_hold'" >/dev/null
	wait "$hold_pid" || true
fi
achieved=$(awk '/^tps =/ {printf "%.0f", $3 * 100}' "$work/pgbench.out")

lat=$(psql -d bench -At -c 'SELECT seconds FROM probe_latency')
n=$(echo "$lat" | wc -l)
p50=$(echo "$lat" | percentile 50)
p99=$(echo "$lat" | percentile 99)
max=$(echo "$lat" | percentile 100)
# the last fifth of the probes: does it get worse as the run goes on?
late=$(psql -d bench -At -c 'SELECT seconds FROM probe_latency ORDER BY probe DESC LIMIT (SELECT count(*) / 5 FROM probe_latency)')
late_p50=$(echo "$late" | percentile 50)
late_p99=$(echo "$late" | percentile 99)
cat <<EOF2
Freshness under load: $achieved sales/s inserted for $seconds s (target $rate), $n probes, $(nproc) cores, kappa.stream_batch_ms = ${BENCH_BATCH_MS:-20}, $(date -u +%Y-%m-%d)${BENCH_HOLD_SNAPSHOT:+, one snapshot held open throughout}

| commit to visible in the rankings | seconds |
|---|---:|
| p50 | $(printf '%.3f' "$p50") |
| p99 | $(printf '%.3f' "$p99") |
| max | $(printf '%.3f' "$max") |
| p50, the last fifth of the run | $(printf '%.3f' "$late_p50") |
| p99, the last fifth of the run | $(printf '%.3f' "$late_p99") |
EOF2
