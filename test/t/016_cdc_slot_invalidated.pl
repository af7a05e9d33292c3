# A slot PostgreSQL invalidated: with max_slot_wal_keep_size set, WAL the
# slot still needed was removed while the publisher was off.  The slot
# stays, but can decode nothing again.  The publisher says so, once, in its
# state, its last error and the log, instead of failing on the removed WAL
# after every restart.  Publishing another table meanwhile is refused (it
# would make the slot anew and send that table's rows only).
# kappa.publish_table() again drops the slot, makes
# it anew and sends the published table's rows again, the row changed while
# the slot was lost included, and changes flow from there.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => ['sales-events:1']);
my $node = kappa_node('invalidated', $broker, conf => q{
kappa.stream_enabled = off
});
$node->safe_psql('shop', sales_table_sql() . 'CREATE TABLE churn (id serial PRIMARY KEY, v text);');
$node->safe_psql('shop', "SELECT kappa.publish_table('sales')");
$node->safe_psql('shop', q{
INSERT INTO sales VALUES (1, 'ST', 'S', 'Seller', 'Madrid', 'ES', 1.00, 'EUR', '2026-11-20 10:00+00'),
                         (2, 'ST', 'S', 'Seller', 'Vigo', 'ES', 2.00, 'EUR', '2026-11-20 11:00+00')});
wait_published($node);
is(scalar(@{ kcat_consume($broker, 'sales-events') }), 2, 'the two sales are in the topic');

# The publisher off, its slot inactive; then WAL past max_slot_wal_keep_size.
$node->safe_psql('postgres', 'ALTER SYSTEM SET kappa.cdc_enabled = off');
$node->safe_psql('postgres', "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
$node->reload;
wait_until(sub { $node->safe_psql('shop', q{
SELECT NOT active FROM pg_replication_slots WHERE slot_name = 'pg_kappa_cdc'}) eq 't' },
	'the publisher to let its slot go');
$node->safe_psql('shop', q{UPDATE sales SET amount = 3.00 WHERE sale_id = 2});
wait_until(sub {
	$node->safe_psql('shop', q{
INSERT INTO churn (v) SELECT repeat('x', 100) FROM generate_series(1, 100);
SELECT pg_switch_wal();
CHECKPOINT;
SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pg_kappa_cdc'}) =~ /\nlost$/ },
	'the slot to be invalidated');
pass('PostgreSQL invalidated the slot');

my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', 'ALTER SYSTEM SET kappa.cdc_enabled = on');
$node->reload;
wait_until(sub { $node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') =~ /invalidated/ },
	'the publisher to notice');
is($node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status'),
	'replication slot "pg_kappa_cdc" was invalidated: changes of the published tables are not published',
	'the state says the slot was invalidated');
like($node->safe_psql('shop', 'SELECT last_error FROM kappa.cdc_status'),
	qr/^replication slot "pg_kappa_cdc" was invalidated: PostgreSQL removed WAL it still needed \(max_slot_wal_keep_size\), and the changes in it were never published; call kappa\.publish_table\(\) again/,
	'the last error says what was lost and what to do');
# The publisher looks at its slot again every second meanwhile.
sleep 3;
my $log = slurp_file($node->logfile, $log_offset);
my @warnings = $log =~ /WARNING:  pg_kappa cdc publisher: replication slot "pg_kappa_cdc" was invalidated\n[^\n]*DETAIL:  PostgreSQL removed WAL the slot still needed \(max_slot_wal_keep_size is 1 MB\); the changes in it were never published\.\n[^\n]*HINT:  Call kappa\.publish_table\(\) again/g;
is(scalar(@warnings), 1, 'the log says so once, with the facts and the fix');
unlike($log, qr/has already been removed/, 'the publisher does not try to decode the removed WAL');

# Publishing another table first would make the slot anew with that table's
# rows only: refused, with the way to go on.
my ($cret, $crows, $cerr) = $node->psql('shop', "SELECT kappa.publish_table('churn')");
like($cerr, qr/ERROR:  replication slot "pg_kappa_cdc" was invalidated while tables are published\n[^\n]*DETAIL:  Publishing "churn" now would make the slot anew and send its rows only/,
	'a table not published yet is refused meanwhile');
like($cerr, qr/HINT:  Call kappa\.publish_table\(\) again for one of the published tables first/, 'saying what to do');

my ($ret, $rows, $stderr) = $node->psql('shop', "SELECT kappa.publish_table('sales')");
is($rows, '2', 'publish_table() again sends the rows of the published table again');
like($stderr, qr/NOTICE:  table "sales" is published but replication slot "pg_kappa_cdc" was invalidated/,
	'saying why');
like($stderr, qr/NOTICE:  dropped replication slot "pg_kappa_cdc", which PostgreSQL had invalidated/,
	'and that the old slot was dropped');
wait_until(sub { $node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') eq 'streaming' },
	'the publisher to stream again');
$node->safe_psql('shop', q{
INSERT INTO sales VALUES (3, 'ST', 'S', 'Seller', 'Madrid', 'ES', 4.00, 'EUR', '2026-11-20 12:00+00')});
wait_published($node);
my @changes = map { my $c = parse_change($_->{value}); "$_->{key}:$c->{op}:$c->{amount}" }
	@{ kcat_consume($broker, 'sales-events') }[ 2 .. 4 ];
is(join(',', @changes), '1:r:1.00,2:r:3.00,3:c:4.00',
	'the snapshot, with the change made while the slot was lost, then new changes');
is($node->safe_psql('shop', q{
SELECT wal_status IN ('reserved', 'extended') FROM pg_replication_slots WHERE slot_name = 'pg_kappa_cdc'}),
	't', 'the new slot holds its WAL');

$node->stop;
done_testing();
