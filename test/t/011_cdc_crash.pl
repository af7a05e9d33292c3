# kill -9 of the whole server while it publishes, then restart: every
# committed change is in the topic; what was sent twice is an exact replay
# (same source.lsn/seq, same content).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use PgKappa::Test;

my $broker = start_dev_broker(topics => ['sales-events:16']);
# (the publisher's own setting: the reorder buffer spills the large
# transaction of part 2 to disk)
my $node = kappa_node('crash', $broker, conf => q{logical_decoding_work_mem = '64kB'});
$node->safe_psql('shop', sales_table_sql());
$node->safe_psql('shop', "SELECT kappa.publish_table('sales')");

sub check_topic_matches_table
{
	my ($label) = @_;
	wait_published($node);
	my $messages = kcat_consume($broker, 'sales-events');
	my ($changes, $mismatched) = check_replays($messages);
	is($mismatched, 0, "$label: replayed messages are identical to the originals");
	diag "$label: " . (@$messages - @$changes) . " replayed messages after the crash";

	# final state per key, applying the unique changes in partition order
	my %state;
	for my $c (@$changes)
	{
		if ($c->{op} eq 'd') { delete $state{ $c->{sale_id} }; }
		else { $state{ $c->{sale_id} } = $c->{amount}; }
	}
	my %table = map { split /\|/ } split /\n/,
	  $node->safe_psql('shop', 'SELECT sale_id, amount FROM sales');
	my @missing = grep { !exists $state{$_} } keys %table;
	my @extra = grep { !exists $table{$_} } keys %state;
	my @wrong = grep { exists $state{$_} && $state{$_} ne $table{$_} } keys %table;
	is(scalar(@missing), 0, "$label: no committed row is missing from the topic");
	is(scalar(@extra), 0, "$label: no row in the topic that the table does not have");
	is(scalar(@wrong), 0, "$label: every row has its committed amount");
	note "$label: " . scalar(keys %table) . " rows, " . scalar(@$changes) . " unique changes";
	return @$messages - @$changes;
}

# 1. Many small transactions, crash in the middle.
my $load = IPC::Run::start(
	[ 'psql', '-X', '-d', $node->connstr('shop'), '-c', q{
DO $$
BEGIN
  FOR i IN 1..200000 LOOP
    INSERT INTO sales VALUES (i, 'ST', 'S-' || (i % 10), 'Seller', 'City', 'ES', i % 1000, 'EUR', now());
    IF i % 5 = 0 THEN UPDATE sales SET amount = amount + 1 WHERE sale_id = i - 3; END IF;
    COMMIT;
  END LOOP;
END $$;
} ], '>', \my $out, '2>', \my $err);
wait_until(sub {
	($node->safe_psql('shop', 'SELECT produced FROM kappa.cdc_status') || 0) > 3000
}, 'publisher in the middle of the load');
crash_node($node);
$load->finish;
$node->start;
my $replayed_small = check_topic_matches_table('small transactions');

# 2. One large transaction (spilled to disk by the reorder buffer), crash
# while it is being produced.
# A slow producer (few messages in flight, long linger) keeps the publisher
# in the middle of the transaction for seconds, not the fraction of a second
# 80 000 rows take at full speed.
my $log_offset = -s $node->logfile;
$node->safe_psql('shop', q{ALTER SYSTEM SET kappa.kafka_options =
  'queue.buffering.max.messages=200; batch.num.messages=100; linger.ms=50'});
$node->reload;
wait_until(sub { slurp_file($node->logfile, $log_offset) =~ /cdc publisher: Kafka settings changed, reconnecting/ },
	'the publisher to take the slow producer');
my $before = $node->safe_psql('shop', 'SELECT produced FROM kappa.cdc_status');
my $spill_dir = $node->data_dir . '/pg_replslot/pg_kappa_cdc';
my $spilled = 0;
$node->safe_psql('shop', q{
INSERT INTO sales SELECT i, 'ST', 'S-1', 'Seller', 'City', 'PT', 7, 'EUR', now()
  FROM generate_series(1000001, 1100000) i;
});
wait_until(sub {
	my $p = ($node->safe_psql('shop', 'SELECT produced FROM kappa.cdc_status') || 0) - $before;
	my @files = glob("$spill_dir/*.spill");
	$spilled ||= @files > 0;
	$p > 10000 && $p < 90000;
}, 'publisher in the middle of the large transaction', 60);
ok($spilled, 'the transaction was spilled to disk by the reorder buffer');
crash_node($node);
$node->start;
my $replayed = check_topic_matches_table('large transaction') - $replayed_small;
# decoding starts the transaction again from its first change: what was
# acknowledged before the kill is sent again
cmp_ok($replayed, '>', 0, "the large transaction was cut in the middle: $replayed of its messages sent again");

$node->stop;
done_testing();
