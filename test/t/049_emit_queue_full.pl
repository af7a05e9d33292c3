# The results topic's broker refuses to take messages while final windows
# wait to be produced: the stream worker's producer queue fills up.  The
# worker gives up producing after a second instead of waiting, with a
# transaction open, for room in the queue, and goes on applying events;
# once the broker takes messages again every final window is produced, in
# full, and marked produced.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [
	'sales-events:8', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $node = kappa_node('emit_queue_full', $broker, conf => q{
kappa.cdc_enabled = off
kappa.stream_enabled = off
kappa.idle_timeout = '1h'
kappa.default_grace = '1min'
kappa.stream_batch_ms = 50
kappa.stream_batch_size = 50
kappa.kafka_options = 'queue.buffering.max.messages=5'
});

sub sale
{
	my ($id, $city, $cents, $at) = @_;
	return [ $id, sprintf('{"op":"c","before":null,"after":{"sale_id":"%d","store_id":"ST-1","seller_id":"S-1","seller_name":"Ana","city":"%s","country":"ES","amount":"%d.%02d","currency":"EUR","sold_at":"%s"},"source":{"connector":"test"},"ts_ms":1}',
		$id, $city, int($cents / 100), $cents % 100, $at) ];
}

# 2026-11-20: sales in 20 cities, 20 result rows for its window, four
# times the producer's queue; then 50 000 sales of the next day, the first
# of which makes 2026-11-20 final (past its end and grace).  The worker
# takes them 50 at a time (8 partitions: the dev broker keeps about 5 MiB
# a partition): the day is final, and its results are produced,
# long before the worker is through (it finalizes and produces between
# batches, once a second).
my (@sales, %day1, $day2_cents, $day2_count);
for my $i (1 .. 200)
{
	my $city = sprintf('City %02d', $i % 20);
	my $cents = 100 + ($i * 37) % 900;
	push @sales, sale($i, $city, $cents, sprintf('2026-11-20T%02d:%02d:00Z', $i % 24, $i % 60));
	$day1{$city}{total} += $cents;
	$day1{$city}{count}++;
}
for my $i (201 .. 50200)
{
	my $cents = 100 + $i % 500;
	push @sales, sale($i, 'Madrid', $cents, sprintf('2026-11-21T%02d:%02d:00Z', 1 + int($i / 3000), $i % 60));
	$day2_cents += $cents;
	$day2_count++;
}
kcat_produce($broker, 'sales-events', \@sales);

# From now on the broker answers every produce request with a retriable
# error (NOT_ENOUGH_REPLICAS): librdkafka keeps what it was given queued
# and sends it again, and the queue stays full.
$broker->control('produce-errors 19 20000');
my $log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', 'kappa.stream_enabled = on');
$node->reload;

wait_until(sub { $node->safe_psql('shop', q{
SELECT coalesce(sum(sale_count), 0) FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city'}) eq '50200' },
	'every sale to be applied while the results cannot be produced', 60);
wait_until(sub { slurp_file($node->logfile, $log_offset) =~
	  /LOG:  pg_kappa stream worker: the producer's queue is full, final results wait\n.*DETAIL:  Window starting 2026-11-20 00:00:00\+00 of ranking "top_sales_by_city" and the ones after it are produced once Kafka takes messages again\./ },
	'the log to say the day\'s results wait for room in the queue', 60);
is($node->safe_psql('shop', q{
SELECT is_final::text || '|' || (produced_at IS NULL)::text FROM kappa.ranking_windows
 WHERE ranking = 'top_sales_by_city' AND window_start = '2026-11-20 00:00+00'}),
	'true|true', 'the day is final and not marked produced');
is($node->safe_psql('shop', q{
SELECT count(*) FROM pg_stat_activity
 WHERE backend_type = 'pg_kappa stream worker' AND xact_start < now() - interval '20 seconds'}),
	'0', 'the stream worker holds no transaction open while it waits');
is(scalar(grep { $_->{key} =~ /^2026-11-20T/ } @{ kcat_consume($broker, 'top-sales-by-city') }),
	0, 'nothing of the day is in the results topic yet');

# The broker takes messages again: the day is produced whole and marked.
$broker->control('clear-produce-errors');
wait_until(sub { $node->safe_psql('shop', q{
SELECT produced_at IS NOT NULL FROM kappa.ranking_windows
 WHERE ranking = 'top_sales_by_city' AND window_start = '2026-11-20 00:00+00'}) eq 't' },
	'the day to be marked produced', 120);
my %latest;
for my $m (grep { $_->{key} =~ /^2026-11-20T/ } @{ kcat_consume($broker, 'top-sales-by-city') })
{
	my $v = decode_json($m->{value});
	$latest{ $v->{group}{city} } = "$v->{total_sales}/$v->{sale_count}/" . ($v->{final} ? 'final' : 'open');
}
is(join(',', map { "$_=$latest{$_}" } sort keys %latest),
	join(',', map { sprintf('%s=%d.%02d/%d/final', $_, int($day1{$_}{total} / 100), $day1{$_}{total} % 100, $day1{$_}{count}) } sort keys %day1),
	'every city of the day is in the results topic with its exact total and count');
is($node->safe_psql('shop', q{
SELECT total || '/' || sale_count FROM kappa.ranking_results
 WHERE ranking = 'top_sales_by_city' AND window_start = '2026-11-21 00:00+00'}),
	sprintf('%d.%02d/%d', int($day2_cents / 100), $day2_cents % 100, $day2_count),
	'the next day counts every one of its sales once');
is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters'), '0', 'no dead letters');

$node->stop;
done_testing();
