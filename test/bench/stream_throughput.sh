#!/usr/bin/env bash
# Stream worker throughput: sales events per second applied to the rankings
# (both shipped rankings, exactly once, offsets in PostgreSQL), side by side
# with `kcat -C -e` reading the same records to /dev/null: the floor of what
# consuming costs.
#
#   test/bench/stream_throughput.sh [EVENTS] [ROUNDS] [WORKERS]
#       defaults: 1000000 events a round, 5 rounds (5 million), 1 worker
#
# The dev broker keeps about 5 MiB of record batches per partition, so the
# events go in rounds that fit (64 partitions, lz4): each round is produced
# while the stream workers are switched off, read once by kcat, then
# consumed by the workers; their rate is measured from the moment their
# partitions are assigned (fetching starts then) to the last offset.  kcat
# reads everything the topic still holds (the earlier rounds too, as far as
# retention kept them); its rate counts what it read.  Prints a Markdown
# table; docs/performance.md quotes it.
set -euo pipefail

events=${1:-1000000}
rounds=${2:-5}
workers=${3:-1}
. "$(dirname "$0")/lib.sh"

bench_start "shared_buffers = 1GB
kappa.cdc_enabled = off
kappa.stream_enabled = off
kappa.stream_workers = $workers
kappa.stream_batch_size = 50000
kappa.stream_batch_ms = 500
kappa.idle_timeout = '1h'
log_min_messages = ${BENCH_LOG_LEVEL:-warning}" sales-events:64 payment-confirmations:4

# One round of events: new sales with distinct keys, 50 a second, 50 cities.
generate() {
	perl -e '
	my ($from, $n) = @ARGV;
	my @c = map { "City $_" } 1 .. 50;
	for my $i ($from .. $from + $n - 1) {
		my $t = 1795219200 + int($i / 50);
		my @g = gmtime($t);
		printf("%d\x1f{\"op\":\"c\",\"before\":null,\"after\":{\"sale_id\":\"%d\",\"store_id\":\"ST-%d\",\"seller_id\":\"S-%d\",\"seller_name\":\"Seller %d\",\"city\":\"%s\",\"country\":\"%s\",\"amount\":\"%d.%02d\",\"currency\":\"EUR\",\"sold_at\":\"%04d-%02d-%02dT%02d:%02d:%02d.000000Z\"},\"source\":{\"connector\":\"bench\"},\"ts_ms\":0}\n",
			$i, $i, $i % 300, $i % 500, $i % 500, $c[$i % 50], (qw(ES PT FR IT DE))[$i % 5],
			($i % 997), ($i % 100), $g[5] + 1900, $g[4] + 1, $g[3], $g[2], $g[1], $g[0]);
	}' "$1" "$2"
}
now() { date +%s.%N; }
applied_offsets() {
	psql -d bench -At -c "SELECT coalesce(sum(next_offset) FILTER (WHERE next_offset > 0), 0) FROM kappa.stream_offsets WHERE topic = 'sales-events'"
}
assigned() { psql -d bench -At -c 'SELECT coalesce(sum(partitions), 0) FROM kappa.stream_worker_status()'; }

total_kcat=0
kcat_msgs=0
total_worker=0
total=0
peak_kb=0
anon_kb=0
for r in $(seq 1 "$rounds"); do
	generate $(( (r - 1) * events + 1 )) "$events" > "$work/round.txt"
	kcat -P -b "$bootstrap" -t sales-events -z lz4 -K $'\x1f' -X linger.ms=50 \
		-X batch.num.messages=10000 -l "$work/round.txt"
	rm -f "$work/round.txt"
	total=$((total + events))

	# kcat reads what the topic holds
	t0=$(now)
	got=$(kcat -C -b "$bootstrap" -t sales-events -o beginning -e -q -f 'x\n' | wc -l)
	t1=$(now)
	kcat_s=$(echo "$t1 - $t0" | bc -l)

	# the stream workers catch up on it
	# timed from the moment every partition is assigned: the consumer
	# starts fetching then (joining the group takes seconds and is not
	# what is measured; fetching is)
	psql -d postgres -c "ALTER SYSTEM SET kappa.stream_enabled = on" -c "SELECT pg_reload_conf()" >/dev/null
	while [ "$(assigned)" -lt 64 ]; do sleep 0.01; done
	t0=$(now)
	while [ "$(applied_offsets)" -lt "$total" ]; do sleep 0.02; done
	t1=$(now)
	worker_s=$(echo "$t1 - $t0" | bc -l)
	for pid in $(psql -d bench -At -c 'SELECT pid FROM kappa.stream_worker_status()'); do
		kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
		[ "$kb" -gt "$peak_kb" ] && peak_kb=$kb
		kb=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status")
		[ "$kb" -gt "$anon_kb" ] && anon_kb=$kb
	done
	psql -d postgres -c "ALTER SYSTEM SET kappa.stream_enabled = off" -c "SELECT pg_reload_conf()" >/dev/null

	echo "round $r: kcat read $got messages in $(printf '%.2f' "$kcat_s") s; workers applied $events in $(printf '%.2f' "$worker_s") s" >&2
	total_kcat=$(echo "$total_kcat + $kcat_s" | bc -l)
	kcat_msgs=$((kcat_msgs + got))
	total_worker=$(echo "$total_worker + $worker_s" | bc -l)
done

# the results are exact: every event counted once
counted=$(psql -d bench -At -c "SELECT sum(sale_count) FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city'")
if [ "$counted" -ne "$total" ]; then
	echo "bench: the rankings count $counted events, not $total" >&2
	exit 1
fi

kcat_rate=$(echo "$kcat_msgs / $total_kcat" | bc -l | xargs printf '%.0f')
worker_rate=$(echo "$total / $total_worker" | bc -l | xargs printf '%.0f')
cat <<EOF
Stream worker throughput, $total events ($rounds rounds of $events, 64 partitions), $workers worker(s), $(nproc) cores, $(date -u +%Y-%m-%d)

| path | seconds | events/s | vs kcat |
|---|---:|---:|---:|
| kcat -C -e to /dev/null ($kcat_msgs messages) | $(printf '%.2f' "$total_kcat") | $kcat_rate | 1.00 |
| pg_kappa stream worker(s), 2 rankings, exactly once | $(printf '%.2f' "$total_worker") | $worker_rate | $(echo "$worker_rate / $kcat_rate" | bc -l | xargs printf '%.2f') |

Stream worker memory: peak RSS $((peak_kb / 1024)) MB (VmHWM, shared buffers it touched included), private $((anon_kb / 1024)) MB (RssAnon, largest after a round).
EOF
