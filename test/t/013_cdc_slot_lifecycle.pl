# The slot does not hold WAL back: an idle published table while other
# tables churn still lets the confirmed position and restart_lsn advance.
# Unpublishing or dropping the last table, or dropping the extension, drops
# the slot.
# A slot lost while tables are published is reported, and made anew by
# publishing again.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => ['sales-events:4', 'refund-events:1']);
my $node = kappa_node('slot', $broker);
$node->safe_psql('shop', sales_table_sql() . 'CREATE TABLE churn (id serial PRIMARY KEY, v text);');
$node->safe_psql('shop', "SELECT kappa.publish_table('sales')");
wait_published($node);

my ($confirmed0, $restart0) = split /\|/, $node->safe_psql('shop',
	"SELECT confirmed_flush_lsn, restart_lsn FROM pg_replication_slots WHERE slot_name = 'pg_kappa_cdc'");
for my $round (1 .. 5)
{
	$node->safe_psql('shop', "INSERT INTO churn (v) SELECT repeat('x', 200) FROM generate_series(1, 2000)");
	$node->safe_psql('shop', 'CHECKPOINT');
}
my $target = $node->safe_psql('shop', 'SELECT pg_current_wal_lsn()');
wait_until(sub {
	$node->safe_psql('shop', qq{
SELECT confirmed_flush_lsn >= '$target' AND restart_lsn > '$restart0'
  FROM pg_replication_slots WHERE slot_name = 'pg_kappa_cdc'}) eq 't'
}, 'slot to advance over unpublished churn');
pass('confirmed_flush_lsn and restart_lsn advance while the published table is idle');
is($node->safe_psql('shop', 'SELECT produced FROM kappa.cdc_status'), '0', 'nothing was produced for the other table');
is(scalar(@{ kcat_consume($broker, 'sales-events') }), 0, 'topic is empty');

# Unpublishing the last table drops the slot.
$node->safe_psql('shop', "SELECT kappa.unpublish_table('sales')");
wait_until(sub {
	$node->safe_psql('shop', "SELECT count(*) FROM pg_replication_slots") eq '0'
}, 'slot dropped after the last table was unpublished');
pass('unpublishing the last table dropped the slot');

# Publishing again creates it; DROP EXTENSION drops it.
$node->safe_psql('shop', "SELECT kappa.publish_table('sales')");
is($node->safe_psql('shop', "SELECT count(*) FROM pg_replication_slots"), '1', 'slot created again');
wait_until(sub { $node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') eq 'streaming' },
	'publisher streaming');

# The slot lost while the table stays published (as after restoring a dump,
# or a failover: slots are not carried): the publisher says so instead of
# waiting as if nothing were published, and publish_table() again makes the
# slot anew and sends the table's rows again.
$node->safe_psql('shop', q{
INSERT INTO sales VALUES (1, 'ST', 'S', 'Seller', 'Madrid', 'ES', 1.00, 'EUR', now()),
                         (2, 'ST', 'S', 'Seller', 'Vigo', 'ES', 2.00, 'EUR', now());
CREATE TABLE refunds (refund_id int PRIMARY KEY, sale_id bigint);
INSERT INTO refunds VALUES (1, 1), (2, 2), (3, 2);});
$node->safe_psql('shop', q{SELECT kappa.publish_table('refunds', 'refund-events')});
wait_published($node);
$node->append_conf('postgresql.conf', 'kappa.cdc_enabled = off');
$node->reload;
wait_until(sub { $node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') =~ /^disabled/ }, 'publisher off');
$node->safe_psql('shop', "SELECT pg_drop_replication_slot('pg_kappa_cdc')");
$node->append_conf('postgresql.conf', 'kappa.cdc_enabled = on');
$node->reload;
wait_until(sub { $node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') =~ /is missing/ },
	'publisher to notice the missing slot');
is($node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status'),
	'replication slot "pg_kappa_cdc" is missing: changes of the published tables are not published',
	'the state says the slot is missing');
like($node->safe_psql('shop', 'SELECT last_error FROM kappa.cdc_status'),
	qr/^replication slot "pg_kappa_cdc" is missing while tables are published; call kappa\.publish_table\(\) again/,
	'last_error says what to do');
my $before = scalar(@{ kcat_consume($broker, 'sales-events') });
my $refunds_before = scalar(@{ kcat_consume($broker, 'refund-events') });
my ($ret, $rows, $stderr) = $node->psql('shop', "SELECT kappa.publish_table('sales')");
is($rows, '5', 'publish_table() of one table sends the rows of both published tables again');
like($stderr, qr/NOTICE:  table "sales" is published but replication slot "pg_kappa_cdc" is missing/,
	'and says why');
wait_until(sub { $node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') eq 'streaming' },
	'publisher streaming again');
wait_published($node);
is(scalar(@{ kcat_consume($broker, 'sales-events') }) - $before, 2, 'the snapshot of the two sales is in their topic');
is(scalar(@{ kcat_consume($broker, 'refund-events') }) - $refunds_before, 3, 'and that of the three refunds in theirs');
is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.published_tables'), '2', 'each still published once');
$node->safe_psql('shop', q{SELECT kappa.unpublish_table('refunds')});
$node->safe_psql('shop', 'DROP EXTENSION pg_kappa');
wait_until(sub {
	$node->safe_psql('shop', "SELECT count(*) FROM pg_replication_slots") eq '0'
}, 'slot dropped with the extension');
pass('DROP EXTENSION dropped the slot');

# Dropping the last published table (rather than unpublishing it) drops the
# slot too, while the publisher runs.
$node->safe_psql('shop', 'CREATE EXTENSION pg_kappa');
$node->safe_psql('shop', 'CREATE TABLE lonely (id int PRIMARY KEY)');
$node->safe_psql('shop', "SELECT kappa.publish_table('lonely')");
wait_until(sub { $node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') eq 'streaming' },
	'publisher streaming the new table');
$node->safe_psql('shop', 'DROP TABLE lonely');
wait_until(sub {
	$node->safe_psql('shop', "SELECT count(*) FROM pg_replication_slots") eq '0'
}, 'slot dropped with the last published table');
pass('DROP TABLE of the last published table dropped the slot');

# The last table unpublished while Kafka is away (deliveries failing): the
# changes committed while it was published still reach the topic, and only
# then is the slot dropped (0.1.5; before, the slot was dropped at the next
# retry and those changes were lost).
$node->append_conf('postgresql.conf', "kappa.kafka_options = 'message.timeout.ms=1500'");
$node->reload;
$node->safe_psql('shop', 'CREATE TABLE late (id int PRIMARY KEY, v text)');
$node->safe_psql('shop', "SELECT kappa.publish_table('late', 'refund-events')");
wait_until(sub { $node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') eq 'streaming' },
	'publisher streaming the late table');
$broker->control('down all');
$node->safe_psql('shop', "INSERT INTO late VALUES (1, 'a'), (2, 'b')");
$node->safe_psql('shop', "SELECT kappa.unpublish_table('late')");
# the old code dropped the slot at the retry after the first failure: wait
# for two more, not for a time
my $retries = wait_until(sub { my $n = $node->safe_psql('shop', 'SELECT retries FROM kappa.cdc_status'); $n > 0 ? $n : undef },
	'a delivery of the late table to fail');
wait_until(sub { $node->safe_psql('shop', 'SELECT retries FROM kappa.cdc_status') >= $retries + 2 },
	'two more attempts while Kafka is away', 60);
is($node->safe_psql('shop', "SELECT count(*) FROM pg_replication_slots"), '1',
	'the slot is kept while the changes before the unpublish are not delivered');
$broker->control('up all');
my $late = sub { join(',', sort map { $_->{key} } grep { $_->{value} =~ /"table":"late"/ }
	@{ kcat_consume($broker, 'refund-events') }) };
wait_until(sub { $late->() eq '1,2' }, 'the late table\'s changes in the topic');
is($late->(), '1,2', 'both inserts published once Kafka is back');
wait_until(sub {
	$node->safe_psql('shop', "SELECT count(*) FROM pg_replication_slots") eq '0'
}, 'slot dropped once they were confirmed');
pass('then the slot was dropped');

$node->stop;
done_testing();
