# A stream worker interrupted while it takes its partitions: the stored
# offsets are read when the consumer group assigns them, and that read can
# wait on a lock, time out, or be cut short by SIGTERM.  It used to run
# inside librdkafka's rebalance callback, so an ERROR unwound through
# librdkafka's frames and a SIGTERM closed the consumer from inside its own
# callback (it happened to work with librdkafka 2.0; now the callback only
# keeps the partitions and the worker reads the offsets after it).  Each case must end the worker promptly, be started again, and
# once the lock goes count every sale exactly once.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:2', 'payment-confirmations:1' ]);
my $node = kappa_node('assign_interrupted', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = '3650d'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
kappa.kafka_options = 'session.timeout.ms=6000; heartbeat.interval.ms=1000'
});

sub sale
{
	my ($id, $city, $amount) = @_;
	return [ $id, qq({"op":"c","before":null,"after":{"sale_id":"$id","store_id":"ST-1","seller_id":"S-1","seller_name":"Ana","city":"$city","country":"ES","amount":"$amount","currency":"EUR","sold_at":"2026-11-20T10:00:00Z"},"source":{"connector":"test"}}) ];
}

sub totals
{
	return $node->safe_psql('shop', q{
SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values)
  FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city'});
}

sub worker_pid
{
	return $node->safe_psql('shop', 'SELECT pid FROM kappa.stream_worker_status()');
}

# a worker other than $not waiting for the lock on kappa.stream_offsets
sub waiting_worker
{
	my ($not) = @_;
	my $pid = $node->safe_psql('shop', qq{
SELECT a.pid FROM pg_stat_activity a JOIN kappa.stream_worker_status() w USING (pid)
 WHERE a.wait_event_type = 'Lock' AND a.pid <> $not});
	return $pid ne '' ? $pid : undef;
}

sub gone
{
	my ($pid) = @_;
	return $node->safe_psql('shop', "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid") eq '0';
}

wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.stream_offsets}) eq '3' },
	'the worker assigned its partitions');
kcat_produce($broker, 'sales-events', [ sale(1, 'Madrid', '1.00'), sale(2, 'Vigo', '2.00') ]);
wait_until(sub { totals() eq 'Madrid=1.00/1,Vigo=2.00/1' }, 'the first sales counted');

# Hold the stored offsets: INSERT ... ON CONFLICT waits for a SHARE lock.
my $locker = $node->background_psql('shop', on_error_stop => 1);
$locker->query_safe('BEGIN; LOCK TABLE kappa.stream_offsets IN SHARE MODE;');

# 1. SIGTERM while the new worker waits for the lock to read its offsets.
my $first = worker_pid();
$node->safe_psql('shop', "SELECT pg_terminate_backend($first)");
my $waiting = wait_until(sub { waiting_worker($first) }, 'a new worker waiting to read its offsets');
$node->safe_psql('shop', "SELECT pg_terminate_backend($waiting)");
# not a timing test: a worker stuck closing its consumer from inside its own
# callback never exits; 30 s is five session timeouts
wait_until(sub { gone($waiting) }, 'the waiting worker to exit', 30);
pass('SIGTERM ends a worker waiting to read its offsets');

# 2. An ERROR there: the worker reports it and exits.  (A trigger of the
# test's making refuses the row; the workers ignore the database's
# lock_timeout and statement_timeout.)
my $next = wait_until(sub { waiting_worker($waiting) }, 'the next worker waiting to read its offsets');
$locker->query_safe(q{
CREATE FUNCTION public.refuse_offsets() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN RAISE EXCEPTION 'offsets refused by the test'; END$$;
CREATE TRIGGER refuse BEFORE INSERT ON kappa.stream_offsets
    FOR EACH ROW EXECUTE FUNCTION public.refuse_offsets();
COMMIT;
});
$locker->quit;
wait_until(sub { $node->safe_psql('shop', q{
SELECT last_error = 'offsets refused by the test' FROM kappa.stream_worker_status()}) eq 't' },
	'the error reported');
wait_until(sub { gone($next) }, 'the worker that hit the error to exit', 30);
pass('an ERROR reading the offsets ends the worker');

# 3. The trigger goes: a worker takes the partitions and goes on where the
# stored offsets say, nothing lost or doubled.
kcat_produce($broker, 'sales-events', [ sale(3, 'Madrid', '3.00'), sale(4, 'Soria', '4.00') ]);
$node->safe_psql('shop', 'DROP TRIGGER refuse ON kappa.stream_offsets');
wait_until(sub { totals() eq 'Madrid=4.00/2,Soria=4.00/1,Vigo=2.00/1' }, 'the later sales counted', 60);
is(totals(), 'Madrid=4.00/2,Soria=4.00/1,Vigo=2.00/1', 'every sale counted once');
is($node->safe_psql('shop', q{SELECT sum(next_offset) FROM kappa.stream_offsets WHERE topic = 'sales-events'}),
	'4', 'the stored offsets are past the four sales');

my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|server process .* was terminated|PANIC/, 'no crash');
is(scalar(() = $log =~ /FATAL:  terminating background worker "pg_kappa stream worker" due to administrator command/g),
	2, 'each terminated worker said why it stopped');

done_testing();
