# Final results Kafka takes its time to acknowledge (every produce request
# answered with a retriable error, NOT_ENOUGH_REPLICAS, so librdkafka sends
# them again and again): the stream worker that produced a window does not
# wait for the acknowledgements with a transaction open.  The window stays
# in flight under a session lock (an advisory lock, classid "kapp",
# objsubid "ke") that keeps the other stream worker from producing it a
# second time; once Kafka acknowledges, it is marked produced, the lock
# goes, and the results topic holds each of the window's rows once.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [
	'sales-events:2', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $node = kappa_node('emit_in_flight', $broker, conf => q{
kappa.cdc_enabled = off
kappa.stream_enabled = off
kappa.stream_workers = 2
kappa.idle_timeout = '1h'
kappa.default_grace = '1min'
kappa.stream_batch_ms = 50
});

sub sale
{
	my ($id, $city, $cents, $at) = @_;
	return [ $id, sprintf('{"op":"c","before":null,"after":{"sale_id":"%d","store_id":"ST-1","seller_id":"S-1","seller_name":"Ana","city":"%s","country":"ES","amount":"%d.%02d","currency":"EUR","sold_at":"%s"},"source":{"connector":"test"},"ts_ms":1}',
		$id, $city, int($cents / 100), $cents % 100, $at) ];
}

# 2026-11-20 in 10 cities on both partitions, then on each partition a sale
# of the next day past the day's end and grace: the day becomes final.
my (%day1, @p0, @p1);
for my $i (1 .. 40)
{
	my $city = sprintf('City %02d', $i % 10);
	my $cents = 100 + ($i * 37) % 900;
	push @{ $i % 2 ? \@p1 : \@p0 }, sale($i, $city, $cents, sprintf('2026-11-20T%02d:%02d:00Z', $i % 24, $i % 60));
	$day1{$city}{total} += $cents;
	$day1{$city}{count}++;
}
push @p0, sale(100, 'Madrid', 500, '2026-11-21T01:00:00Z');
push @p1, sale(101, 'Madrid', 700, '2026-11-21T01:30:00Z');
kcat_produce($broker, 'sales-events', \@p0, partition => 0);
kcat_produce($broker, 'sales-events', \@p1, partition => 1);

$broker->control('produce-errors 19 20000');
my $log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', 'kappa.stream_enabled = on');
$node->reload;

wait_until(sub { $node->safe_psql('shop', q{
SELECT is_final FROM kappa.ranking_windows
 WHERE ranking = 'top_sales_by_city' AND window_start = '2026-11-20 00:00+00'}) eq 't' },
	'the day to become final', 60);
wait_until(sub { slurp_file($node->logfile, $log_offset) =~
	  /LOG:  pg_kappa stream worker: Kafka has not acknowledged the final results of \d+ window\(s\) yet/ },
	'the worker to leave the day\'s results in flight', 60);
my $emit_locks = q{
SELECT count(*) FROM pg_locks l JOIN kappa.stream_worker_status() w USING (pid)
 WHERE l.locktype = 'advisory' AND l.classid = 1801547888 AND l.objsubid = 27493 AND l.granted};
is($node->safe_psql('shop', $emit_locks), '1', 'one stream worker holds the in-flight window\'s session lock');

# Both workers go on through several of their once-a-second ticks meanwhile.
sleep 5;
is($node->safe_psql('shop', q{
SELECT count(*) FROM pg_stat_activity
 WHERE backend_type = 'pg_kappa stream worker' AND xact_start < now() - interval '3 seconds'}),
	'0', 'no stream worker keeps a transaction open while Kafka has not acknowledged');
is($node->safe_psql('shop', q{
SELECT (produced_at IS NULL)::text FROM kappa.ranking_windows
 WHERE ranking = 'top_sales_by_city' AND window_start = '2026-11-20 00:00+00'}),
	'true', 'the day is not marked produced');

# Kafka takes messages again.
$broker->control('clear-produce-errors');
wait_until(sub { $node->safe_psql('shop', q{
SELECT bool_and(produced_at IS NOT NULL) FROM kappa.ranking_windows
 WHERE window_start = '2026-11-20 00:00+00' AND is_final}) eq 't' },
	'the day to be marked produced', 120);
wait_until(sub { $node->safe_psql('shop', $emit_locks) eq '0' }, 'the session locks to go');
pass('no session lock is left once the windows are marked produced');
my %seen;
my %latest;
for my $m (grep { $_->{key} =~ /^2026-11-20T/ } @{ kcat_consume($broker, 'top-sales-by-city') })
{
	my $v = decode_json($m->{value});
	$seen{ $m->{key} }++;
	$latest{ $v->{group}{city} } = "$v->{total_sales}/$v->{sale_count}";
}
is(join(',', grep { $seen{$_} != 1 } sort keys %seen), '', 'each of the day\'s rows is in the results topic once');
is(join(',', map { "$_=$latest{$_}" } sort keys %latest),
	join(',', map { sprintf('%s=%d.%02d/%d', $_, int($day1{$_}{total} / 100), $day1{$_}{total} % 100, $day1{$_}{count}) } sort keys %day1),
	'with every city\'s exact total and count');

# New Kafka settings while windows are in flight: the old producer's flush
# (up to 5 s) serves their acknowledgements.  The windows acknowledged then
# are marked produced, not produced a second time by the new producer.
my %want2 = ('2026-11-21 Madrid' => { total => 1200, count => 2 });	# sales 100 and 101
my (@q0, @q1);
for my $i (201 .. 230)
{
	my $city = sprintf('City %02d', $i % 7);
	my $cents = 100 + ($i * 53) % 900;
	push @{ $i % 2 ? \@q1 : \@q0 }, sale($i, $city, $cents, sprintf('2026-11-22T%02d:%02d:00Z', $i % 24, $i % 60));
	$want2{"2026-11-22 $city"}{total} += $cents;
	$want2{"2026-11-22 $city"}{count}++;
}
push @q0, sale(300, 'Madrid', 500, '2026-11-23T01:00:00Z');
push @q1, sale(301, 'Madrid', 700, '2026-11-23T01:30:00Z');
# (produce errors are the whole broker's: the sales go in while the
# workers are switched off)
$node->append_conf('postgresql.conf', 'kappa.stream_enabled = off');
$node->reload;
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM kappa.stream_worker_status() WHERE state LIKE 'disabled%'}) eq '2' },
	'both stream workers to be switched off');
kcat_produce($broker, 'sales-events', \@q0, partition => 0);
kcat_produce($broker, 'sales-events', \@q1, partition => 1);
$broker->control('produce-errors 19 20000');
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', 'kappa.stream_enabled = on');
$node->reload;
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM kappa.ranking_windows
 WHERE ranking = 'top_sales_by_city' AND window_start IN ('2026-11-21 00:00+00', '2026-11-22 00:00+00') AND is_final}) eq '2' },
	'the next two days to become final', 60);
wait_until(sub { slurp_file($node->logfile, $log_offset) =~
	  /LOG:  pg_kappa stream worker: Kafka has not acknowledged the final results of \d+ window\(s\) yet/ },
	'the worker to leave their results in flight', 60);
$node->append_conf('postgresql.conf', "kappa.kafka_options = 'client.id=pg_kappa_050'");
$node->reload;
wait_until(sub { slurp_file($node->logfile, $log_offset) =~
	  /LOG:  pg_kappa stream worker \d+: Kafka settings changed, waiting up to 5 s for the acknowledgement of \d+ window\(s\) in flight/ },
	'the worker to flush its producer', 60);
$broker->control('clear-produce-errors');
wait_until(sub { slurp_file($node->logfile, $log_offset) =~
	  /LOG:  pg_kappa stream worker \d+: (\d+) of \1 window\(s\) in flight acknowledged and marked produced, the others are produced again/ },
	'every window in flight to be acknowledged during the flush', 60);
wait_until(sub { $node->safe_psql('shop', q{
SELECT bool_and(produced_at IS NOT NULL) FROM kappa.ranking_windows
 WHERE window_start IN ('2026-11-21 00:00+00', '2026-11-22 00:00+00') AND is_final}) eq 't' },
	'both days to be marked produced', 120);
wait_until(sub { $node->safe_psql('shop', $emit_locks) eq '0' }, 'the session locks to go after the reload');
# Anything produced a second time would be there by now: the new producer
# takes what is not marked at the next tick, once a second.
sleep 3;
%seen = ();
%latest = ();
for my $m (grep { $_->{key} =~ /^2026-11-2[12]T/ } @{ kcat_consume($broker, 'top-sales-by-city') })
{
	my $v = decode_json($m->{value});
	my ($day) = $m->{key} =~ /^(\d{4}-\d\d-\d\d)/;
	$seen{ $m->{key} }++;
	$latest{"$day $v->{group}{city}"} = "$v->{total_sales}/$v->{sale_count}";
}
is(join(',', grep { $seen{$_} != 1 } sort keys %seen), '',
	'each row of windows acknowledged during the flush is in the results topic once');
is(join(',', map { "$_=$latest{$_}" } sort keys %latest),
	join(',', map { sprintf('%s=%d.%02d/%d', $_, int($want2{$_}{total} / 100), $want2{$_}{total} % 100, $want2{$_}{count}) } sort keys %want2),
	'with the exact totals and counts of both days');
is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters'), '0', 'no dead letters');

$node->stop;
done_testing();
