# The broker goes away while rows commit: the publisher stops confirming,
# retries, and resumes when the broker is back; nothing is lost.  A change
# too large for Kafka holds the publisher, with backoff and the reason in
# kappa.cdc_status, until the limit is raised; so does a topic the cluster
# says does not exist, until it does.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use PgKappa::Test;

my $broker = start_dev_broker(brokers => 3, topics => ['sales-events:8']);
my $node = kappa_node('outage', $broker);
$node->safe_psql('shop', sales_table_sql());
$node->safe_psql('shop', "SELECT kappa.publish_table('sales')");

my $next = 1;
sub insert_batch
{
	my ($n) = @_;
	my ($lo, $hi) = ($next, $next + $n - 1);
	$node->safe_psql('shop', qq{
INSERT INTO sales SELECT i, 'ST', 'S', 'Seller', 'City', 'ES', i % 100, 'EUR', now()
  FROM generate_series($lo, $hi) i;});
	$next = $hi + 1;
	return;
}

sub topic_state
{
	my ($changes, $mismatched) = check_replays(kcat_consume($broker, 'sales-events'));
	my %ids = map { $_->{sale_id} => 1 } @$changes;
	return (scalar(@$changes), scalar(keys %ids), $mismatched);
}

insert_batch(1000);
wait_published($node);

# 1. A short outage: librdkafka keeps retrying, the slot does not move.
$broker->control('down all');
my $stalled_at = $node->safe_psql('shop', 'SELECT pg_current_wal_lsn()');
for (1 .. 10)
{
	insert_batch(500);
	usleep(400_000);
}
my ($confirmed_past, $in_flight) = split /\|/, $node->safe_psql('shop',
	"SELECT confirmed_lsn > '$stalled_at', in_flight FROM kappa.cdc_status");
is($confirmed_past, 'f', 'slot not confirmed past the outage while the broker is down');
cmp_ok($in_flight, '>', 0, 'messages wait in flight');
$broker->control('up all');
wait_published($node);
my ($changes, $ids, $mismatched) = topic_state();
is($ids, $next - 1, 'short outage: every row reached the topic');
is($mismatched, 0, 'short outage: any replay is an exact copy');

# 2. An outage longer than message.timeout.ms: deliveries fail for good,
# the publisher rewinds to the confirmed position and publishes again with
# backoff.
$node->append_conf('postgresql.conf', "kappa.kafka_options = 'message.timeout.ms=1500'");
$node->reload;
insert_batch(100);
wait_published($node);
$broker->control('down all');
for (1 .. 6)
{
	insert_batch(500);
	usleep(500_000);
}
wait_until(sub {
	$node->safe_psql('shop', 'SELECT retries > 0 FROM kappa.cdc_status') eq 't'
}, 'publisher to notice failed deliveries');
# (last_error is the latest error: the broker's connection errors, routed
# from librdkafka's log, come in between; each retry's failed deliveries
# set it again)
ok(wait_until(sub { $node->safe_psql('shop', 'SELECT last_error FROM kappa.cdc_status') =~ /kafka delivery failed/ },
	'the failed deliveries in kappa.cdc_status'), 'the failure is in kappa.cdc_status');
$broker->control('up all');
wait_published($node);
($changes, $ids, $mismatched) = topic_state();
is($ids, $next - 1, 'long outage: every row reached the topic');
is($mismatched, 0, 'long outage: any replay is an exact copy');
is($node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status'), 'streaming', 'publisher streaming again');

# 3. A change larger than message.max.bytes, which librdkafka refuses at
#    once: the publisher neither skips it nor exits (a restart would only
#    meet it again); it goes back to the slot's position with backoff, says
#    why in kappa.cdc_status, and publishes it once the limit is raised.
$node->append_conf('postgresql.conf', "kappa.kafka_options = 'message.max.bytes=20000'\nkappa.cdc_max_backoff = 2");
$node->reload;
insert_batch(10);
wait_published($node);
my $pid = $node->safe_psql('shop', 'SELECT pid FROM kappa.cdc_status');
my $big = $next++;
$node->safe_psql('shop', qq{
INSERT INTO sales VALUES ($big, 'ST', 'S', repeat('x', 30000), 'City', 'ES', 1, 'EUR', now())});
insert_batch(5);
wait_until(sub {
	$node->safe_psql('shop', 'SELECT last_error FROM kappa.cdc_status') =~ /larger than message\.max\.bytes/
}, 'publisher to say the change is too large');
like($node->safe_psql('shop', 'SELECT last_error FROM kappa.cdc_status'),
	qr{^kafka delivery failed: a change of 30\d{3} bytes with its key \(topic "sales-events", transaction committed at [0-9A-F]+/[0-9A-F]+\) is larger than message\.max\.bytes \(20000\): raise message\.max\.bytes in kappa\.kafka_options},
	'kappa.cdc_status says which change, how large, and what to raise');
sleep 3;    # a few retries
is($node->safe_psql('shop', 'SELECT pid FROM kappa.cdc_status'), $pid, 'the publisher did not exit');
like($node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status'), qr/^retrying in \d+ ms after a Kafka delivery failure$/,
	'it retries with backoff');
my %published = map { $_->{sale_id} => 1 } @{ (check_replays(kcat_consume($broker, 'sales-events')))[0] };
ok(!$published{$big} && !$published{ $big + 1 }, 'neither the change nor what follows it was published');
$node->append_conf('postgresql.conf', "kappa.kafka_options = 'message.max.bytes=100000'");
$node->reload;
wait_published($node);
($changes, $ids, $mismatched) = topic_state();
is($ids, $next - 1, 'with the limit raised, every row reached the topic, the large one too');
is($mismatched, 0, 'any replay is an exact copy');
is($node->safe_psql('shop', 'SELECT pid FROM kappa.cdc_status'), $pid, 'the same publisher all along');

# 3b. The cluster says the topic does not exist: librdkafka refuses the
#    changes at once, as it does a change too large.  The publisher retries
#    with backoff, saying why, until the topic is there (0.1.5; before, it
#    failed, and the postmaster restarted it every few seconds).  The
#    changed options make a new producer, which asks for the topic anew.
$broker->control('topic-error sales-events 3');
$node->append_conf('postgresql.conf',
	"kappa.kafka_options = 'message.max.bytes=100000,topic.metadata.propagation.max.ms=500,topic.metadata.refresh.interval.ms=1000'");
$node->reload;
insert_batch(5);
wait_until(sub {
	$node->safe_psql('shop', 'SELECT last_error FROM kappa.cdc_status') =~ /librdkafka refused a change/
}, 'publisher to say the topic is refused');
like($node->safe_psql('shop', 'SELECT last_error FROM kappa.cdc_status'),
	qr{^kafka delivery failed: librdkafka refused a change for topic "sales-events" \(transaction committed at [0-9A-F]+/[0-9A-F]+\): Local: Unknown topic; publishing again from the last confirmed position$},
	'kappa.cdc_status names the topic and what librdkafka said');
my $retries = $node->safe_psql('shop', 'SELECT retries FROM kappa.cdc_status');
wait_until(sub { $node->safe_psql('shop', 'SELECT retries FROM kappa.cdc_status') > $retries }, 'another retry');
is($node->safe_psql('shop', 'SELECT pid FROM kappa.cdc_status'), $pid, 'the publisher did not exit');
$broker->control('topic-error sales-events 0');
wait_published($node);
($changes, $ids, $mismatched) = topic_state();
is($ids, $next - 1, 'once the topic is there, every row reached the topic');
is($mismatched, 0, 'any replay is an exact copy');
is($node->safe_psql('shop', 'SELECT pid FROM kappa.cdc_status'), $pid, 'the same publisher all along');

# 4. Nothing to publish, and the broker gone: the publisher has nothing to
#    do but wait.  It keeps its producer, whose error events wake it; it
#    used not to serve them while not decoding, so each wait returned at
#    once and it spun on a core, starting to decode thousands of times a
#    second.  What it may spend here is a resource bound, not a timing: a
#    worker that waits uses next to nothing, one that spins a whole core.
sub cpu_seconds
{
	my ($p) = @_;
	open my $fh, '<', "/proc/$p/stat" or die "no process $p: $!";
	my @f = split ' ', (split /\) /, scalar(<$fh>), 2)[1];
	close $fh;
	return ($f[11] + $f[12]) / 100;    # utime + stime, in clock ticks
}
$node->safe_psql('shop', "SELECT kappa.unpublish_table('sales')");
wait_until(sub { $node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') =~ /^waiting for kappa.publish_table/ },
	'the publisher to wait for a table to publish');
$broker->control('down all');
wait_until(sub { $node->safe_psql('shop', 'SELECT last_error FROM kappa.cdc_status') =~ /^kafka: / },
	'the producer to report the broker gone', 30);
my $cpu = cpu_seconds($pid);
sleep 4;
$cpu = cpu_seconds($pid) - $cpu;
cmp_ok($cpu, '<', 1, "waiting with the broker down, the publisher used ${cpu} s of CPU in 4 s");
is($node->safe_psql('shop', 'SELECT pid FROM kappa.cdc_status'), $pid, 'the same publisher');
$broker->control('up all');

$node->stop;
done_testing();
