#!/usr/bin/env bash
# Query latency: kappa.top_sales_by_city(n => 10) with 100 000 cities in
# the current window, 4 clients for 20 seconds with pgbench; p50/p99 from
# the per-transaction log.
#
#   test/bench/query_latency.sh [GROUPS] [SECONDS]     defaults: 100000, 20
set -euo pipefail
groups=${1:-100000}
seconds=${2:-20}
. "$(dirname "$0")/lib.sh"

bench_start "kappa.cdc_enabled = off
kappa.stream_enabled = off" sales-events:1
psql -d bench <<EOF2
INSERT INTO kappa.ranking_windows (ranking, window_start, window_end)
SELECT 'top_sales_by_city', w.window_start, w.window_end FROM kappa.ranking_window('top_sales_by_city', now()) w;
INSERT INTO kappa.ranking_results (ranking, window_start, window_end, group_values, total, sale_count)
SELECT 'top_sales_by_city', w.window_start, w.window_end, ARRAY['City ' || i],
       ((i * 7919) % 1000000) / 100.0, 1 + i % 50
  FROM kappa.ranking_window('top_sales_by_city', now()) w, generate_series(1, $groups) i;
VACUUM ANALYZE kappa.ranking_results;
EOF2
echo 'SELECT * FROM kappa.top_sales_by_city(n => 10);' > "$work/query.sql"
chown "$owner" "$work/query.sql"
(cd "$work" && run "$bindir/pgbench" -n -h "$work" -p "$port" -c 4 -j 2 -T "$seconds" -l -f "$work/query.sql" bench > "$work/pgbench.out" 2>&1)
# log lines: client txno latency_us ...
lat=$(cat "$work"/pgbench_log.* | awk '{print $3 / 1000.0}')
n=$(echo "$lat" | wc -l)
cat <<EOF2
Query latency, kappa.top_sales_by_city(n => 10), $groups groups in the window, 4 clients, $n queries, $(nproc) cores, $(date -u +%Y-%m-%d)

| latency | ms |
|---|---:|
| p50 | $(echo "$lat" | percentile 50) |
| p99 | $(echo "$lat" | percentile 99) |
| max | $(echo "$lat" | percentile 100) |
EOF2
