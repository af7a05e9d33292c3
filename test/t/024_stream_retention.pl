# A stream worker whose stored offset the broker has already deleted
# (retention) says so loudly — a WARNING in the log, the reason in
# kappa.stat_consumers.last_error, a dead letter naming the partition and the
# lost offset — and then goes on from the earliest offset the broker still
# has, counting every remaining event exactly once.  The dev broker keeps
# about 5 MiB per partition, so producing well over that while the worker is
# stopped deletes the worker's stored offset.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:1', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $node = kappa_node('retention', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = '10min'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
});

sub sale
{
	my ($id, $city, $amount, $pad) = @_;
	return [ $id, sprintf('{"op":"c","before":null,"after":{"sale_id":"%d","seller_id":"S1","seller_name":"%s","city":"%s","country":"ES","amount":"%s","sold_at":"2026-11-20T10:00:00Z"},"source":{"connector":"test"}}',
		$id, 'x' x $pad, $city, $amount) ];
}

sub city_totals
{
	return $node->safe_psql('shop', q{
SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values[1])
  FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city'});
}

# 10 sales, consumed: the stored offset is 10.
kcat_produce($broker, 'sales-events', [ map { sale($_, 'Madrid', "$_.00", 0) } 1 .. 10 ]);
wait_until(sub { city_totals() eq 'Madrid=55.00/10' }, 'the first 10 sales counted');
is($node->safe_psql('shop', q{SELECT next_offset FROM kappa.stream_offsets WHERE topic = 'sales-events'}),
	'10', 'offset 10 stored');

# Stop the worker, then produce about 12 MB: the broker drops the oldest batches.
$node->safe_psql('postgres', q{ALTER SYSTEM SET kappa.stream_enabled = off});
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});
wait_until(sub { $node->safe_psql('shop',
	q{SELECT bool_and(state LIKE 'disabled%') FROM kappa.stream_worker_status()}) eq 't' },
	'the stream worker to leave the group');
for my $round (0 .. 5)
{
	kcat_produce($broker, 'sales-events',
		[ map { sale(1000 + $round * 5000 + $_, 'Lisboa', '1.00', 300) } 1 .. 5000 ]);
}

# The independent expectation: what the topic still holds, read with kcat.
my $left = kcat_consume($broker, 'sales-events');
my $earliest = $left->[0]{offset};
my $expected_lisboa = scalar(grep { $_->{value} =~ /"city":"Lisboa"/ } @$left);
cmp_ok($earliest, '>', 10, "the broker deleted the stored offset (earliest now $earliest)");
ok(!grep({ $_->{value} =~ /"city":"Madrid"/ } @$left), 'no Madrid sale is left in the topic');
cmp_ok($expected_lisboa, '<', 30000, "some Lisboa sales were deleted too ($expected_lisboa of 30000 left)");

# The row memory held by another session (a SHARE lock lets the worker read
# it but not write it): the worker's first batch waits, and the stored offset
# must already be past the lost range, moved with its dead letter (0.1.5;
# before, it stayed at 10 until a batch was applied, so a restart meanwhile
# reported the same loss again).  The lock is released only once that has
# been seen.
my $locker = $node->background_psql('shop', on_error_stop => 1);
$locker->query_safe('BEGIN; LOCK TABLE kappa.stream_rows IN SHARE MODE;');
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{ALTER SYSTEM SET kappa.stream_enabled = on});
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.dead_letters WHERE topic = 'sales-events'}) eq '1' },
	'the lost range reported');
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
 WHERE l.relation = 'kappa.stream_rows'::regclass AND NOT l.granted
   AND a.backend_type LIKE 'pg_kappa stream%'}) eq '1' },
	'the worker\'s batch to wait for the row memory');
is($node->safe_psql('shop', q{SELECT next_offset FROM kappa.stream_offsets WHERE topic = 'sales-events'}),
	$earliest, 'the stored offset moved past the lost range with its dead letter, before any batch');
is(city_totals(), 'Madrid=55.00/10', 'and nothing of the batch is counted yet');
$locker->query_safe('COMMIT');
$locker->quit;
wait_until(sub { city_totals() eq sprintf('Lisboa=%d.00/%d,Madrid=55.00/10', $expected_lisboa, $expected_lisboa) },
	'every remaining sale counted once');
is(city_totals(), sprintf('Lisboa=%d.00/%d,Madrid=55.00/10', $expected_lisboa, $expected_lisboa),
	'the earlier counts stand and every sale the broker still had is counted once');

my $reason = sprintf('offsets 10 to %d of sales-events[0] no longer exist at the broker (retention): '
  . 'they were never applied; resuming at offset %d', $earliest - 1, $earliest);
is($node->safe_psql('shop', q{
SELECT source || '|' || topic || '|' || partition || '|' || "offset" || '|' || error
  FROM kappa.dead_letters WHERE topic = 'sales-events'}),
	"stream|sales-events|0|10|$reason", 'a dead letter names the partition, the lost offset and why');
is($node->safe_psql('shop', q{SELECT last_error FROM kappa.stat_consumers WHERE topic = 'sales-events'}),
	$reason, 'kappa.stat_consumers shows it');
like(slurp_file($node->logfile, $log_offset),
	qr/WARNING:  pg_kappa stream worker \d+: \Q$reason\E/, 'the log says it as a WARNING');

# A stored offset past everything the topic holds, as after the topic was
# deleted and created again with fewer messages (the dev broker cannot
# delete a topic; the offset is moved instead, with the worker stopped): the
# worker must go back to the topic's start, not skip what the topic holds
# until it reaches its old position (before, the new sales below it were
# never counted, and nothing said so).  What it reads again that it applied
# already is recognised by row memory and changes nothing.
$node->safe_psql('postgres', q{ALTER SYSTEM SET kappa.stream_enabled = off});
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});
wait_until(sub { $node->safe_psql('shop',
	q{SELECT bool_and(state LIKE 'disabled%') FROM kappa.stream_worker_status()}) eq 't' },
	'the stream worker to leave the group again');
my $stored = $node->safe_psql('shop', q{SELECT next_offset FROM kappa.stream_offsets WHERE topic = 'sales-events'});
$node->safe_psql('shop', q{UPDATE kappa.stream_offsets SET next_offset = next_offset + 1000 WHERE topic = 'sales-events'});
kcat_produce($broker, 'sales-events', [ map { sale(900000 + $_, 'Porto', '2.00', 0) } 1 .. 5 ]);
$node->safe_psql('postgres', q{ALTER SYSTEM SET kappa.stream_enabled = on});
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});
wait_until(sub { city_totals() =~ /Porto=10.00\/5/ }, 'the sales produced after the stored offset counted');
is(city_totals(), sprintf('Lisboa=%d.00/%d,Madrid=55.00/10,Porto=10.00/5', $expected_lisboa, $expected_lisboa),
	'the new sales counted once, the ones read again not again');
my $moved = $stored + 1000;
my $last = $stored + 4;
is($node->safe_psql('shop', q{SELECT error FROM kappa.dead_letters WHERE topic = 'sales-events' ORDER BY id DESC LIMIT 1}),
	"offset $moved of sales-events[0] does not exist at the broker (it holds $earliest to $last): resuming at offset $earliest",
	'a dead letter says where the worker resumed');
wait_until(sub { $node->safe_psql('shop', q{SELECT next_offset FROM kappa.stream_offsets WHERE topic = 'sales-events'}) eq $stored + 5 },
	'the stored offset at the end of the topic');

$node->stop;
done_testing();
