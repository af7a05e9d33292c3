# Idle partitions: kappa.idle_timeout moves a partition's stream time on
# once it has been caught up and without records for that long, so that a
# partition nobody writes to does not hold every window open.  Two
# partitions, sales on one only: the day's window becomes final after the
# idle timeout, is produced to top-sales-by-city, and the times the worker
# writes are the time of day (the worker's now() follows the clock).  The
# other partition holds one sale of the next day and a transaction's commit
# marker, as a transactional producer leaves it: caught up and idle all the
# same, so that its stream time moves on from that sale's.  And
# a reload that changes the secrets file or kappa.brokers makes the
# consumer anew.
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
my $node = kappa_node('idle', $broker, conf => q{
kappa.idle_timeout = '2s'
kappa.default_grace = '1min'
kappa.stream_batch_ms = 50
kappa.cdc_enabled = off
});

sub sale
{
	my ($id, $city, $amount, $at) = @_;
	return sprintf('{"op":"c","before":null,"after":{"sale_id":"%d","store_id":"ST-1","seller_id":"S-1","seller_name":"Ana","city":"%s","country":"ES","amount":"%s","currency":"EUR","sold_at":"%s"},"source":{"connector":"test"},"ts_ms":1}',
		$id, $city, $amount, $at);
}

# let the worker run for a while first: a clock frozen at its start would show
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.stream_offsets WHERE topic = 'sales-events'}) eq '2' },
	'both partitions assigned');
sleep 3;
my $before = $node->safe_psql('shop', 'SELECT now()');

# partition 0, with kcat -p 0: the day of 2026-11-20, then a sale past
# its end and grace.  Partition 1: a sale 50 s into the next day, 10 s short
# of the day's end and grace, then a commit marker, the control record a
# broker writes when a transactional producer (Kafka Streams or Connect
# exactly-once) commits.  The mock's transactions write none; dev-broker's
# commit-marker appends one.  Partition 1's high watermark stays one past
# its last message: only once it counts as caught up does it go idle and
# its stream time move on past the day's end and grace.
my @day = (
	[ 1, sale(1, 'Madrid', '10.00', '2026-11-20T10:00:00Z') ],
	[ 2, sale(2, 'Vigo', '4.50', '2026-11-20T18:00:00Z') ],
	[ 3, sale(3, 'Madrid', '1.00', '2026-11-21T00:30:00Z') ]);
my @transactional = ([ 9, sale(9, 'Sevilla', '2.00', '2026-11-21T00:00:50Z') ]);
kcat_produce($broker, 'sales-events', \@transactional, partition => 1);
$broker->control('commit-marker sales-events 1');
kcat_produce($broker, 'sales-events', \@day, partition => 0);
is(kcat_high_watermark($broker, 'sales-events', 1), 2, 'partition 1: one sale and its commit marker');

wait_until(sub { $node->safe_psql('shop', q{
SELECT is_final FROM kappa.ranking_windows
 WHERE ranking = 'top_sales_by_city' AND window_start = '2026-11-20 00:00+00'}) eq 't' },
	'the day to become final with partition 1 idle past its commit marker', 30);
is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters'), '0', 'no dead letters');
is($node->safe_psql('shop', q{
SELECT string_agg(group_values[1] || '=' || total || '/' || is_final, ',' ORDER BY group_values)
  FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city' AND window_start = '2026-11-20 00:00+00'}),
	'Madrid=10.00/true,Vigo=4.50/true', 'the day\'s results are final');
is($node->safe_psql('shop', q{
SELECT string_agg(format('%s: next %s, high %s, lag %s, caught up %s', partition, next_offset, high_watermark, lag, caught_up), '; ' ORDER BY partition)
  FROM kappa.stat_consumers WHERE topic = 'sales-events'}),
	'0: next 3, high 3, lag 0, caught up t; 1: next 1, high 2, lag 0, caught up t',
	'kappa.stat_consumers: the offset a marker takes is no lag');
is($node->safe_psql('shop', q{
SELECT is_final FROM kappa.ranking_windows
 WHERE ranking = 'top_sales_by_city' AND window_start = '2026-11-21 00:00+00'}),
	'f', 'the next day is still open');
is($node->safe_psql('shop', qq{
SELECT bool_and(w.finalized_at >= '$before') AND bool_and(o.updated_at >= '$before')
  FROM kappa.ranking_windows w, kappa.stream_offsets o
 WHERE w.ranking = 'top_sales_by_city' AND w.window_start = '2026-11-20 00:00+00'
   AND o.topic = 'sales-events' AND o.partition = 0}),
	't', 'finalized_at and the offsets\' updated_at are the time of day, not the worker\'s start');

my $produced = wait_until(sub {
	my @m = grep { $_->{key} =~ /^2026-11-20T/ } @{ kcat_consume($broker, 'top-sales-by-city') };
	return @m >= 2 ? \@m : 0;
}, 'the final results on top-sales-by-city');
is(join(',', sort map { decode_json($_->{value})->{group}{city} // '' } @$produced), 'Madrid,Vigo',
	'both cities produced once the window is final');

# ---- reloads that change how the consumer is made ---------------------------
# A new line in the secrets file (as a rotated password is) and a reload: the
# worker makes its consumer again; a reload that changes no Kafka setting
# does not.
# Then kappa.brokers pointing at another cluster: the worker reads from it.
my $secrets = $node->data_dir . '/kappa_secrets';
my $write_secrets = sub {
	my ($rack, $soap) = @_;
	open my $fh, '>', $secrets or die $!;
	print $fh "kafka.client.rack = $rack\n";
	print $fh "soap.password = $soap\n" if $soap;
	close $fh;
	chmod 0600, $secrets;
};
my $reconnects = sub { () = slurp_file($node->logfile) =~ /stream worker 0: Kafka settings changed, reconnecting/g };
$write_secrets->('rack-1');
$node->append_conf('postgresql.conf', qq{kappa.secrets_file = '$secrets'});
$node->reload;
wait_until(sub { $reconnects->() == 1 }, 'the worker to make its consumer again for the secrets file');
# (each reload below that must keep the consumer also sets a new batch size:
# the worker logs that once it has acted on the whole reload)
my $reloaded = sub {
	my ($batch) = @_;
	$node->append_conf('postgresql.conf', "kappa.stream_batch_size = $batch");
	$node->reload;
	wait_until(sub { slurp_file($node->logfile) =~ /stream worker 0: batches of at most $batch messages from now on/ },
		"the worker to act on the reload (batch size $batch)");
};
$reloaded->(777);
is($reconnects->(), 1, 'a reload that changes no Kafka setting keeps the consumer');
$write_secrets->('rack-2');
$node->reload;
wait_until(sub { $reconnects->() == 2 }, 'the worker to make its consumer again for the changed secret');
pass('a changed line in the secrets file makes a new consumer');
$write_secrets->('rack-2', 'soap-secret');
$reloaded->(778);
is($reconnects->(), 2, 'a new SOAP password in the secrets file leaves the Kafka clients alone');

# (the other cluster holds the same topics at the same offsets, as a cluster
# moved with its offsets would: the worker goes on from the offsets stored)
my $other = start_dev_broker(topics => [ 'sales-events:2', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
kcat_produce($other, 'sales-events', \@transactional, partition => 1);
$other->control('commit-marker sales-events 1');
kcat_produce($other, 'sales-events', [ @day, [ 4, sale(4, 'Toledo', '3.00', '2026-11-21T02:00:00Z') ] ], partition => 0);
$node->append_conf('postgresql.conf', "kappa.brokers = '$other->{bootstrap}'");
$node->reload;
wait_until(sub { $reconnects->() == 3 }, 'the worker to reconnect to the other cluster');
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city' AND group_values = '{Toledo}'}) eq '1' },
	'the sale from the other cluster counted');
is($node->safe_psql('shop', q{
SELECT string_agg(group_values[1] || '=' || total, ',' ORDER BY group_values, window_start) FROM kappa.ranking_results
 WHERE ranking = 'top_sales_by_city'}),
	'Madrid=10.00,Madrid=1.00,Sevilla=2.00,Toledo=3.00,Vigo=4.50',
	'kappa.brokers changed by a reload: the stream worker reads the new cluster from the stored offsets');

# A third cluster whose sales-events holds fewer messages than the offsets
# stored (a topic recreated, or a cluster moved without its data), and that
# cannot say where its partitions start: ListOffsets fails (error 29,
# TOPIC_AUTHORIZATION_FAILED, as during a broken ACL change) until cleared.
# The worker says so once per partition, resumes each at its earliest
# offset, and the messages read from there are applied: none is taken for
# one read already because it lies below the position in the old topic.
# A partition with nothing stored (payment-confirmations), whose start
# librdkafka cannot ask either, lost nothing: it is asked again after 1 s,
# 2 s, 4 s, ..., with last_error saying why, and no loss is reported for it.
my $third = start_dev_broker(topics => [ 'sales-events:2', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
kcat_produce($third, 'sales-events', [
	[ 21, sale(21, 'Cuenca', '7.00', '2026-11-21T03:00:00Z') ],
	[ 22, sale(22, 'Soria', '8.00', '2026-11-21T04:00:00Z') ] ], partition => 0);
$third->control('request-errors 2 29 100000');
my $log_from = -s $node->logfile;
my $dead_before = $node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters');
my $warnings = sub { () = substr(slurp_file($node->logfile), $log_from) =~ /does not exist at the broker: resuming at its earliest offset/g };
$node->append_conf('postgresql.conf', "kappa.brokers = '$third->{bootstrap}'");
$node->reload;
wait_until(sub { $warnings->() >= 2 }, 'the worker to report both partitions past the end, their start unknown');
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM kappa.stream_worker_status()
 WHERE last_error ILIKE 'kafka: failed to query logical offset%Topic authorization failed%'}) eq '1' },
	'the worker to say it cannot ask where partitions start');
sleep 2;	# (the worker asks again, and fails again, meanwhile)
$third->control('clear-request-errors 2');
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city' AND group_values[1] IN ('Cuenca', 'Soria')}) eq '2' },
	'the sales of the third cluster counted');
is($node->safe_psql('shop', q{
SELECT string_agg(group_values[1] || '=' || total, ',' ORDER BY group_values, window_start) FROM kappa.ranking_results
 WHERE ranking = 'top_sales_by_city'}),
	'Cuenca=7.00,Madrid=10.00,Madrid=1.00,Sevilla=2.00,Soria=8.00,Toledo=3.00,Vigo=4.50',
	'a partition resumed at an earliest offset the broker could not tell: what it holds is applied');
is($node->safe_psql('shop', q{
SELECT next_offset FROM kappa.stream_offsets WHERE topic = 'sales-events' AND partition = 0}),
	'2', 'partition 0\'s offset stored is the third cluster\'s');
my @lost = substr(slurp_file($node->logfile), $log_from) =~ /WARNING:  pg_kappa stream worker 0: (offset \d+ of [\w-]+\[\d\]) does not exist/g;
is(@lost > 10 ? scalar(@lost) . ' reports' : join(', ', sort @lost), 'offset 1 of sales-events[1], offset 4 of sales-events[0]',
	'one loss reported per partition read past its end, none for a partition that could not be started');
is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters') - $dead_before, 2,
	'and one dead letter each');

done_testing();
