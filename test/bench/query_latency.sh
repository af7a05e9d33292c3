#!/usr/bin/env bash
# Query latency, 4 clients for SECONDS each with pgbench, p50/p99 from the
# per-transaction log:
#  1. kappa.top_sales_by_city(n => 10) with GROUPS cities in the window;
#  2. kappa.top_salesmen_by_country(n => 3), the top 3 of each of 20
#     countries, with GROUPS sellers in the window, and of one country;
#     side by side with the same top 3s computed by ranking every seller of
#     the window with a window function (how 0.1.4 answered), the baseline.
#
#   test/bench/query_latency.sh [GROUPS] [SECONDS]     defaults: 100000, 20
set -euo pipefail
groups=${1:-100000}
seconds=${2:-20}
countries=20
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
INSERT INTO kappa.ranking_windows (ranking, window_start, window_end)
SELECT 'top_salesman_by_country', w.window_start, w.window_end FROM kappa.ranking_window('top_salesman_by_country', now()) w;
INSERT INTO kappa.ranking_results (ranking, window_start, window_end, group_values, item, item_label, total, sale_count)
SELECT 'top_salesman_by_country', w.window_start, w.window_end, ARRAY['C' || (i % $countries)],
       'S-' || i, 'Seller ' || i, ((i * 7919) % 1000000) / 100.0, 1 + i % 50
  FROM kappa.ranking_window('top_salesman_by_country', now()) w, generate_series(1, $groups) i;
VACUUM ANALYZE kappa.ranking_results;
EOF2

# latency SCRIPT-TEXT: p50, p99 and max in ms, and the number of queries
latency() {
	rm -f "$work"/pgbench_log.*
	echo "$1" > "$work/query.sql"
	chown "$owner" "$work/query.sql"
	(cd "$work" && run "$bindir/pgbench" -n -h "$work" -p "$port" -c 4 -j 2 -T "$seconds" -l -f "$work/query.sql" bench > "$work/pgbench.out" 2>&1)
	# log lines: client txno latency_us ...
	local lat
	lat=$(cat "$work"/pgbench_log.* | awk '{print $3 / 1000.0}')
	echo "$(echo "$lat" | percentile 50) $(echo "$lat" | percentile 99) $(echo "$lat" | percentile 100) $(echo "$lat" | wc -l)"
}

# the baseline must give what the function gives
same=$(psql -d bench -At <<'EOF2'
SELECT (SELECT array_agg(ROW(country, rank, seller_id, total_sales)::text ORDER BY o)
          FROM kappa.top_salesmen_by_country(n => 3) WITH ORDINALITY t(country, rank, seller_id, seller_name, total_sales, sale_count, window_start, window_end, is_final, o))
     = (SELECT array_agg(ROW(r.group_values[1], r.rk, r.item, r.total)::text ORDER BY r.group_values, r.rk)
          FROM (SELECT res.*, row_number() OVER (PARTITION BY res.group_values
                                                 ORDER BY res.total DESC, res.sale_count DESC, res.item) AS rk
                  FROM kappa.ranking_results res, kappa.ranking_window('top_salesman_by_country', now()) w
                 WHERE res.ranking = 'top_salesman_by_country' AND res.window_start = w.window_start) r
         WHERE r.rk <= 3);
EOF2
)
[ "$same" = t ] || { echo "the baseline query and kappa.top_salesmen_by_country() disagree" >&2; exit 1; }

read -r c50 c99 cmax cn <<< "$(latency 'SELECT * FROM kappa.top_sales_by_city(n => 10);')"
read -r s50 s99 smax sn <<< "$(latency 'SELECT * FROM kappa.top_salesmen_by_country(n => 3);')"
read -r o50 o99 omax on <<< "$(latency "SELECT * FROM kappa.top_salesmen_by_country('C7', n => 3);")"
read -r b50 b99 bmax bn <<< "$(latency "SELECT r.group_values[1], r.rk, r.item, r.item_label, r.total, r.sale_count
  FROM (SELECT res.*, row_number() OVER (PARTITION BY res.group_values
                                         ORDER BY res.total DESC, res.sale_count DESC, res.item) AS rk
          FROM kappa.ranking_results res, kappa.ranking_window('top_salesman_by_country', now()) w
         WHERE res.ranking = 'top_salesman_by_country' AND res.window_start = w.window_start) r
 WHERE r.rk <= 3 ORDER BY r.group_values, r.rk;")"
cat <<EOF2
Query latency, $groups groups in the window, 4 clients, $seconds s each, $(nproc) cores, $(date -u +%Y-%m-%d)

| query | queries | p50 ms | p99 ms | max ms | p50 vs baseline |
|---|---:|---:|---:|---:|---:|
| kappa.top_sales_by_city(n => 10), $groups cities | $cn | $c50 | $c99 | $cmax | |
| kappa.top_salesmen_by_country(n => 3), $groups sellers in $countries countries | $sn | $s50 | $s99 | $smax | $(printf "%.4f" "$(echo "$s50 / $b50" | bc -l)") |
| kappa.top_salesmen_by_country('C7', n => 3), one country | $on | $o50 | $o99 | $omax | |
| baseline: every seller of the window ranked with row_number(), top 3 of each country | $bn | $b50 | $b99 | $bmax | 1.00 |
EOF2
