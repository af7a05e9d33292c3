# The slot does not hold WAL back: an idle published table while other
# tables churn still lets the confirmed position and restart_lsn advance.
# Unpublishing the last table, or dropping the extension, drops the slot.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => ['sales-events:4']);
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
$node->safe_psql('shop', 'DROP EXTENSION pg_kappa');
wait_until(sub {
	$node->safe_psql('shop', "SELECT count(*) FROM pg_replication_slots") eq '0'
}, 'slot dropped with the extension');
pass('DROP EXTENSION dropped the slot');

$node->stop;
done_testing();
