# Exactly once across crashes and rebalances: two stream workers in one
# consumer group read 16 partitions; the server is killed (kill -9) in the
# middle, then one worker is stopped and comes back (two rebalances).  The
# results must equal what the model computes from the topic: every event
# counted once, replays and re-deliveries ignored, updates and deletes
# applied.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use POSIX qw(strftime);
use PgKappa::Model;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:16', 'payment-confirmations:4' ]);
my $node = kappa_node('exactly_once', $broker, conf => q{
kappa.stream_workers = 2
kappa.stream_batch_size = 500
kappa.stream_batch_ms = 20
kappa.idle_timeout = '1h'
kappa.default_grace = '3650d'
kappa.cdc_enabled = off
# a killed member leaves the group after 6 s instead of 45
kappa.kafka_options = 'session.timeout.ms=6000; heartbeat.interval.ms=1000'
});

my @cities = ('Madrid', 'Barcelona', 'Lisboa', 'Porto', 'Paris', 'Lyon', 'Sevilla');
my %country = (Madrid => 'ES', Barcelona => 'ES', Sevilla => 'ES', Lisboa => 'PT', Porto => 'PT', Paris => 'FR', Lyon => 'FR');
my $base = PgKappa::Model::parse_time('2026-11-01T00:00:00Z');
my $lsn = 0x10000;

sub envelope
{
	my ($id, $cents, $op, $positioned, $dup_of) = @_;
	my $city = $cities[ $id % @cities ];
	my $at = strftime('%Y-%m-%dT%H:%M:%SZ', gmtime($base + ($id * 37) % (7 * 86400)));
	my $after = sprintf('{"sale_id":"%d","store_id":"ST-%d","seller_id":"S-%d","seller_name":"Seller %d","city":"%s","country":"%s","amount":"%d.%02d","currency":"EUR","sold_at":"%s"}',
		$id, $id % 20, $id % 30, $id % 30, $city, $country{$city}, $cents / 100, $cents % 100, $at);
	my $source = '{"connector":"test"}';
	if ($positioned)
	{
		$lsn += 0x28;
		$source = sprintf('{"connector":"postgres","lsn":"0/%X","seq":0}', $lsn);
	}
	return [ $id, $op eq 'd'
		  ? qq({"op":"d","before":{"sale_id":"$id"},"after":null,"source":$source})
		  : qq({"op":"$op","before":null,"after":$after,"source":$source}) ];
}

# A round of events: new sales, positioned updates and deletes of earlier
# ones, and exact re-deliveries.
my $next_id = 1;
sub round
{
	my ($n) = @_;
	my @m;
	my @ids;
	for (1 .. $n)
	{
		my $id = $next_id++;
		push @ids, $id;
		push @m, envelope($id, 1000 + ($id * 7919) % 90000, 'c', $id % 3 == 0);
		if ($id % 10 == 0)
		{
			my $old = $ids[ int(@ids / 2) ];
			push @m, envelope($old, 500 + ($id * 31) % 5000, 'u', 1);
		}
		push @m, $m[-1] if $id % 17 == 0;             # re-delivered as is
		push @m, envelope($ids[0], 0, 'd', 1) if $id % 50 == 0;
	}
	return \@m;
}

my $model = PgKappa::Model->new(rankings => [
	{ name => 'top_sales_by_city', group => ['city'], window => 'day', grace_s => 3650 * 86400 },
	{ name => 'top_salesman_by_country', group => ['country'], item => 'seller_id',
	  label => 'seller_name', window => '30d', grace_s => 3650 * 86400 } ]);

sub consumed
{
	return $node->safe_psql('shop',
		q{SELECT coalesce(sum(next_offset) FILTER (WHERE next_offset > 0), 0) FROM kappa.stream_offsets WHERE topic = 'sales-events'});
}

sub check_results
{
	my ($label) = @_;
	my $topic = kcat_consume($broker, 'sales-events');
	my $total = scalar(@$topic);
	wait_until(sub { consumed() == $total }, "$label: all $total messages applied", 120);
	$model = PgKappa::Model->new(rankings => $model->{rankings});
	$model->apply($_) for @$topic;
	my $db = $node->safe_psql('shop', q{
SELECT ranking || '|' || extract(epoch FROM window_start)::bigint || '|' || array_to_string(group_values, chr(31))
       || '|' || item || '|' || total || '|' || sale_count || '|' || CASE WHEN is_final THEN 't' ELSE 'f' END
  FROM kappa.ranking_results ORDER BY 1});
	is_deeply([ sort split /\n/, $db ], $model->result_lines, "$label: results equal the model");
	is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters'), '0', "$label: no dead letters");
	note "$label: $total messages, " . scalar(@{ $model->result_lines }) . " result rows, $model->{duplicates} duplicates";
	return;
}

# Hold the workers' next commit: a batch ends with its offsets' UPDATE,
# which waits for this SHARE lock (taken once the batch in flight, if any,
# committed).  What consumed() says then stays true until the lock goes.
sub hold_commits
{
	my $locker = $node->background_psql('shop', on_error_stop => 1);
	$locker->query_safe('BEGIN; LOCK TABLE kappa.stream_offsets IN SHARE MODE;');
	return $locker;
}

# 1. A crash in the middle of consumption.
kcat_produce($broker, 'sales-events', round(30000));
my $produced = scalar(@{ kcat_consume($broker, 'sales-events') });
wait_until(sub { consumed() > $produced / 5 }, 'consumption under way');
my $locker = hold_commits();
my $before_crash = consumed();
ok($before_crash < $produced, "killed after $before_crash of $produced messages, the rest not committed");
crash_node($node);
$node->start;
check_results('after kill -9');

# 2. A worker leaves the group and comes back while a new round is read.
# The lock is taken before the round and held until worker 1 is back: both
# rebalances (it leaves, it comes back) happen while the workers hold
# batches of the round they cannot commit.  (Waiting for part of the round
# to be applied first raced with the workers: at 500 messages a batch they
# were through before the lock was taken.)
$locker = hold_commits();
my $before_rebalance = consumed();
kcat_produce($broker, 'sales-events', round(20000));
$produced = scalar(@{ kcat_consume($broker, 'sales-events') });
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM pg_stat_activity a JOIN kappa.stream_worker_status() w USING (pid)
 WHERE a.wait_event_type = 'Lock'}) ne '0' }, 'a worker with a batch of the round waiting to commit');
my $victim = $node->safe_psql('shop', 'SELECT pid FROM kappa.stream_worker_status() WHERE worker = 1');
$node->safe_psql('shop', "SELECT pg_terminate_backend($victim)");
wait_until(sub {
	my $p = $node->safe_psql('shop', 'SELECT pid FROM kappa.stream_worker_status() WHERE worker = 1');
	$p ne '' && $p != $victim;
}, 'worker 1 back');
is(consumed(), $before_rebalance, 'nothing of the round committed meanwhile');
ok($before_rebalance < $produced, "worker 1 left and came back with $before_rebalance of $produced messages committed");
$locker->query_safe('COMMIT');
$locker->quit;
check_results('after a rebalance');
wait_until(sub {
	$node->safe_psql('shop', 'SELECT count(DISTINCT owner_pid) FROM kappa.stream_offsets') eq '2'
}, 'both workers own partitions again');
pass('both workers share the partitions again');

$node->stop;
done_testing();
