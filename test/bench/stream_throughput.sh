#!/usr/bin/env bash
# Stream worker throughput: sales events per second applied to the rankings
# (exactly once, offsets in PostgreSQL), side by side with `kcat -C -e`
# reading the same records to /dev/null: the floor of what consuming costs.
# Two ways, on two topics with two rankings each (top sales per city and
# day, top seller per country and 30 days):
#   sales-events  the shipped rankings, with row memory (kappa.stream_rows)
#   sales-cdc     the same rankings created with row_memory => false
# The events carry CDC positions (source.system_id/timeline/lsn/seq), as the
# publisher's do.
#
#   test/bench/stream_throughput.sh [EVENTS] [ROUNDS] [WORKERS]
#       defaults: 1000000 events a round, 5 rounds (5 million), 1 worker
#
# The dev broker keeps about 5 MiB of record batches per partition, so the
# events go in rounds that fit (64 partitions, lz4).  Each round is first
# produced to a topic of its own and read there by kcat: the baseline, the
# same records and nothing else, start-up paid once per round as the workers
# pay theirs.  Then it is produced to one stream topic while the workers are
# switched off, read there by kcat too (everything the topic still holds,
# earlier rounds included: a second, larger-volume reference), and consumed
# by the workers, timed from the moment their partitions are assigned
# (fetching starts then) to the last offset; then the same for the other
# topic.  After each phase the tables it wrote are vacuumed and
# checkpointed, untimed, so that one topic's maintenance and writes do not
# run inside the other's timing.  A third reference bounds row memory from
# below: PostgreSQL's own COPY FROM of the rows remembered in the round into
# a table with the same columns and indexes (what writing a row per sale
# costs the database alone).
# Prints a Markdown table; docs/performance.md quotes it.
set -euo pipefail

events=${1:-1000000}
rounds=${2:-5}
workers=${3:-1}
partitions=64	# of each stream topic (and of each round's kcat topic)
. "$(dirname "$0")/lib.sh"

bench_start "shared_buffers = 1GB
kappa.cdc_enabled = off
kappa.stream_enabled = off
kappa.stream_workers = $workers
kappa.stream_batch_size = ${BENCH_BATCH_SIZE:-50000}
kappa.idle_timeout = '1h'
log_min_messages = ${BENCH_LOG_LEVEL:-warning}" sales-events:$partitions sales-cdc:$partitions payment-confirmations:4 \
	$(for r in $(seq 1 "$rounds"); do echo "kcat-round-$r:$partitions"; done)
psql -d bench -c "SELECT kappa.create_ranking('cdc_sales_by_city', ARRAY['city'], interval '1 day',
                         calendar => true, source_topic => 'sales-cdc', row_memory => false)" \
	-c "SELECT kappa.create_ranking('cdc_salesman_by_country', ARRAY['country'], interval '30 days',
                         item => 'seller_id', item_label => 'seller_name', calendar => false,
                         source_topic => 'sales-cdc', row_memory => false)" >/dev/null

# One round of events: new sales with distinct keys, 50 a second, 50 cities,
# one transaction each.
generate() {
	perl -e '
	my ($from, $n) = @ARGV;
	my @c = map { "City $_" } 1 .. 50;
	for my $i ($from .. $from + $n - 1) {
		my $t = 1795219200 + int($i / 50);
		my @g = gmtime($t);
		printf("%d\x1f{\"op\":\"c\",\"before\":null,\"after\":{\"sale_id\":\"%d\",\"store_id\":\"ST-%d\",\"seller_id\":\"S-%d\",\"seller_name\":\"Seller %d\",\"city\":\"%s\",\"country\":\"%s\",\"amount\":\"%d.%02d\",\"currency\":\"EUR\",\"sold_at\":\"%04d-%02d-%02dT%02d:%02d:%02d.000000Z\"},\"source\":{\"connector\":\"postgres\",\"db\":\"shop\",\"schema\":\"public\",\"table\":\"sales\",\"system_id\":\"7301457082633547813\",\"timeline\":1,\"lsn\":\"%X/%X\",\"seq\":0,\"txid\":%d,\"ts_ms\":0},\"ts_ms\":0}\n",
			$i, $i, $i % 300, $i % 500, $i % 500, $c[$i % 50], (qw(ES PT FR IT DE))[$i % 5],
			($i % 997), ($i % 100), $g[5] + 1900, $g[4] + 1, $g[3], $g[2], $g[1], $g[0],
			int($i * 256 / 4294967296), ($i * 256) % 4294967296, $i);
	}' "$1" "$2"
}
now() { date +%s.%N; }
# The wait runs inside one backend: polling from the shell (a psql, a
# runuser and a new backend every 20 ms) took about half a core of the two
# away from the workers being measured.  It is a procedure that commits
# after every look: a function (or a DO block without COMMIT) holds its
# statement's snapshot to the end, and its xmin keeps the old versions of
# every result row a batch updates from being pruned while the workers are
# timed (docs/operations.md#long-transactions).
psql -d bench -c "CREATE PROCEDURE bench_catch_up(t text, total bigint, parts int, INOUT seconds float8 DEFAULT NULL)
LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz;
BEGIN
  -- timed from the moment every partition is assigned: fetching starts then
  -- (joining the group takes seconds and is not what is measured)
  WHILE (SELECT coalesce(sum(partitions), 0) FROM kappa.stream_worker_status()) < parts LOOP
    PERFORM pg_sleep(0.005);
    COMMIT;
  END LOOP;
  t0 := clock_timestamp();
  WHILE (SELECT coalesce(sum(next_offset) FILTER (WHERE next_offset > 0), 0)
           FROM kappa.stream_offsets WHERE topic = t) < total LOOP
    PERFORM pg_sleep(0.005);
    COMMIT;
  END LOOP;
  seconds := extract(epoch FROM clock_timestamp() - t0);
END \$\$"
# The floor of row memory: PostgreSQL itself writing the rows the workers
# remembered in a round, with COPY (multi-insert, as the workers do) into a
# table with kappa.stream_rows' columns and indexes that grows round by
# round as kappa.stream_rows does.  The round's rows are first copied out to
# a file in binary format, untimed; only COPY FROM is timed: no Kafka, no
# JSON, no probes, no text input functions.
psql -d bench -c "CREATE TABLE bench_rows (LIKE kappa.stream_rows INCLUDING ALL)" -c "CREATE FUNCTION bench_write_floor(lo bigint, hi bigint, path text) RETURNS float8
LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz;
BEGIN
  EXECUTE format('COPY (SELECT * FROM kappa.stream_rows WHERE topic = %L AND key::bigint BETWEEN %s AND %s) TO %L (FORMAT binary)',
                 'sales-events', lo, hi, path);
  t0 := clock_timestamp();
  EXECUTE format('COPY bench_rows FROM %L (FORMAT binary)', path);
  RETURN extract(epoch FROM clock_timestamp() - t0);
END \$\$"
sum() { echo "$1 + $2" | bc -l; }
rate() { echo "$1 / $2" | bc -l | xargs printf '%.0f'; }

produce() {
	kcat -P -b "$bootstrap" -t "$1" -z lz4 -K $'\x1f' -X linger.ms=50 \
		-X batch.num.messages=10000 -l "$work/round.txt"
}
# seconds and messages of kcat -C -e reading a topic from the start
kcat_read() {
	local t0 t1 got
	t0=$(now)
	got=$(kcat -C -b "$bootstrap" -t "$1" -o beginning -e -q -f 'x\n' | wc -l)
	t1=$(now)
	echo "$(echo "$t1 - $t0" | bc -l) $got"
}

declare -A kcat_s kcat_n worker_s peak_kb anon_kb
topics="sales-events sales-cdc"
for t in $topics; do kcat_s[$t]=0; kcat_n[$t]=0; worker_s[$t]=0; peak_kb[$t]=0; anon_kb[$t]=0; done
same_s=0
same_n=0
floor_s=0
total=0
for r in $(seq 1 "$rounds"); do
	generate $(( (r - 1) * events + 1 )) "$events" > "$work/round.txt"
	total=$((total + events))

	# the baseline: kcat reading exactly the round's records, from a topic
	# that holds nothing else (same partitions, compression and batching)
	produce "kcat-round-$r"
	read -r k got < <(kcat_read "kcat-round-$r")
	same_s=$(sum "$same_s" "$k")
	same_n=$((same_n + got))
	echo "round $r: kcat read the round's $got messages in $(printf '%.2f' "$k") s" >&2

	for t in $topics; do
		produce "$t"

		# kcat reading everything the topic holds (earlier rounds too)
		read -r k got < <(kcat_read "$t")
		kcat_s[$t]=$(sum "${kcat_s[$t]}" "$k")
		kcat_n[$t]=$(( ${kcat_n[$t]} + got ))

		# the stream workers catch up on it (timed once both stream topics'
		# partitions are assigned)
		psql -d postgres -c "ALTER SYSTEM SET kappa.stream_enabled = on" -c "SELECT pg_reload_conf()" >/dev/null
		w=$(psql -d bench -At -c "CALL bench_catch_up('$t', $total, $((2 * partitions)))")
		worker_s[$t]=$(sum "${worker_s[$t]}" "$w")
		for pid in $(psql -d bench -At -c 'SELECT pid FROM kappa.stream_worker_status()'); do
			kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
			[ "$kb" -gt "${peak_kb[$t]}" ] && peak_kb[$t]=$kb
			kb=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status")
			[ "$kb" -gt "${anon_kb[$t]}" ] && anon_kb[$t]=$kb
		done
		psql -d postgres -c "ALTER SYSTEM SET kappa.stream_enabled = off" -c "SELECT pg_reload_conf()" >/dev/null
		# the maintenance this phase left (a million rows remembered, the
		# results' dead versions) is done now, untimed, rather than by
		# autovacuum during the next phase's timing; then it is all written
		psql -d bench -q -c "VACUUM (ANALYZE) kappa.stream_rows, kappa.ranking_results" -c "CHECKPOINT"
		sync
		echo "round $r, $t: kcat read $got messages in $(printf '%.2f' "$k") s; workers applied $events in $(printf '%.2f' "$w") s" >&2
		if [ "$t" = sales-events ]; then
			f=$(psql -d bench -At -c "SELECT bench_write_floor($(( (r - 1) * events + 1 )), $(( r * events )), '$work/rows.copy')")
			floor_s=$(sum "$floor_s" "$f")
			rm -f "$work/rows.copy"
			psql -d bench -q -c "VACUUM (ANALYZE) bench_rows" -c "CHECKPOINT"
			sync
			echo "round $r: PostgreSQL wrote the round's $events remembered rows (COPY FROM, binary) in $(printf '%.2f' "$f") s" >&2
		fi
	done
	rm -f "$work/round.txt"
done

# the results are exact: every event counted once, both ways
for ranking in top_sales_by_city cdc_sales_by_city; do
	counted=$(psql -d bench -At -c "SELECT sum(sale_count) FROM kappa.ranking_results WHERE ranking = '$ranking'")
	if [ "$counted" -ne "$total" ]; then
		echo "bench: $ranking counts $counted events, not $total" >&2
		exit 1
	fi
done
rows=$(psql -d bench -At -c "SELECT count(*) FROM kappa.stream_rows WHERE topic = 'sales-cdc'")
[ "$rows" -eq 0 ] || { echo "bench: $rows rows remembered for sales-cdc" >&2; exit 1; }

kn=$(( ${kcat_n[sales-events]} + ${kcat_n[sales-cdc]} ))
ks=$(sum "${kcat_s[sales-events]}" "${kcat_s[sales-cdc]}")
all_rate=$(rate "$kn" "$ks")
kcat_rate=$(rate "$same_n" "$same_s")
mem_rate=$(rate "$total" "${worker_s[sales-events]}")
nomem_rate=$(rate "$total" "${worker_s[sales-cdc]}")
floor_rate=$(rate "$total" "$floor_s")
cat <<EOF
Stream worker throughput, $total events each way ($rounds rounds of $events, $partitions partitions), $workers worker(s), $(nproc) cores, $(date -u +%Y-%m-%d)

| path | seconds | events/s | vs kcat |
|---|---:|---:|---:|
| kcat -C -e to /dev/null, the same records ($same_n messages, a topic per round) | $(printf '%.2f' "$same_s") | $kcat_rate | 1.00 |
| kcat -C -e to /dev/null, all the topic holds each round ($kn messages) | $(printf '%.2f' "$ks") | $all_rate | $(echo "$all_rate / $kcat_rate" | bc -l | xargs printf '%.2f') |
| pg_kappa, 2 rankings with row memory, exactly once | $(printf '%.2f' "${worker_s[sales-events]}") | $mem_rate | $(echo "$mem_rate / $kcat_rate" | bc -l | xargs printf '%.2f') |
| PostgreSQL COPY FROM (binary) of the rows remembered, into a table like kappa.stream_rows (the floor of row memory) | $(printf '%.2f' "$floor_s") | $floor_rate | $(echo "$floor_rate / $kcat_rate" | bc -l | xargs printf '%.2f') |
| pg_kappa, 2 rankings without row memory, exactly once | $(printf '%.2f' "${worker_s[sales-cdc]}") | $nomem_rate | $(echo "$nomem_rate / $kcat_rate" | bc -l | xargs printf '%.2f') |

Stream worker memory (peak RSS = VmHWM, shared buffers it touched included; private = RssAnon, largest after a round):
with row memory $(( ${peak_kb[sales-events]} / 1024 )) MB peak, $(( ${anon_kb[sales-events]} / 1024 )) MB private;
without row memory $(( ${peak_kb[sales-cdc]} / 1024 )) MB peak, $(( ${anon_kb[sales-cdc]} / 1024 )) MB private.
EOF
