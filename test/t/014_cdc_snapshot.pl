# Publishing a table that already has rows, while other sessions keep
# writing to it: each pre-existing row arrives exactly once (as "r"), every
# later change follows, and replaying the topic gives the table.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use JSON::PP;
use PgKappa::Test;

my $broker = start_dev_broker(topics => ['sales-events:8']);
my $node = kappa_node('snapshot', $broker);
$node->safe_psql('shop', sales_table_sql());
$node->safe_psql('shop', q{
INSERT INTO sales SELECT i, 'ST', 'S', 'Seller', 'City', 'ES', 10, 'EUR', now()
  FROM generate_series(1, 20000) i;});

# Writers: new rows and updates of existing ones, in small transactions.
my @writers;
for my $w (0 .. 1)
{
	push @writers, IPC::Run::start(
		[ 'psql', '-X', '-d', $node->connstr('shop'), '-c', qq{
DO \$\$
BEGIN
  FOR i IN 1..10000 LOOP
    INSERT INTO sales VALUES (100000 + $w * 10000 + i, 'ST', 'S', 'Seller', 'City', 'PT', 1, 'EUR', now());
    UPDATE sales SET amount = amount + 1 WHERE sale_id = 1 + (i * 7 + $w) % 20000;
    COMMIT;
  END LOOP;
END \$\$;} ], '>', \my $out, '2>', \my $err);
}
wait_until(sub { $node->safe_psql('shop', 'SELECT count(*) > 20300 FROM sales') eq 't' },
	'writers running');
my $snapshot_rows = $node->safe_psql('shop', "SELECT kappa.publish_table('sales')");
my $rows_then = $snapshot_rows;
$_->finish for @writers;
cmp_ok($snapshot_rows, '>', 20300, "publish_table sent $snapshot_rows existing rows");
wait_published($node);

my ($changes, $mismatched) = check_replays(kcat_consume($broker, 'sales-events'));
is($mismatched, 0, 'no inconsistent replays');
my (%r, %first_op, %state);
for my $c (@$changes)
{
	$r{ $c->{sale_id} }++ if $c->{op} eq 'r';
	$first_op{ $c->{sale_id} } //= $c->{op};
	$state{ $c->{sale_id} } = $c->{amount};
}
is(scalar(keys %r), $rows_then, 'as many snapshot rows as publish_table reported');
is(scalar(grep { $r{$_} != 1 } keys %r), 0, 'each snapshot row exactly once');
is(scalar(grep { $first_op{$_} ne 'r' } keys %r), 0, 'no change of a row comes before its snapshot row');
is(scalar(grep { ($first_op{$_} // '') ne 'r' } 1 .. 20000), 0, 'every row there before publishing starts with its snapshot row');
is(scalar(grep { $first_op{$_} ne 'r' && $first_op{$_} ne 'c' } keys %first_op), 0,
	'every key starts with its snapshot row or its insert');
# (the writers were still writing when the snapshot was taken: rows they
# inserted after it reach the topic as changes, not snapshot rows)
cmp_ok(scalar(grep { $first_op{$_} eq 'c' } keys %first_op), '>', 0,
	'rows inserted while publishing are published as inserts');

my %table = map { split /\|/ } split /\n/, $node->safe_psql('shop', 'SELECT sale_id, amount FROM sales');
is(scalar(keys %state), scalar(keys %table), 'topic has every row of the table');
is(scalar(grep { ($state{$_} // '') ne $table{$_} } keys %table), 0,
	'replaying the topic gives the table');

# Snapshot rows are written with the publisher's output settings, not the
# caller's: a value written out through its type's output function (a
# range of timestamps, an interval, a float, a regclass) reads the same in
# the "r" event as in the events decoded later (0.1.5; before, a caller's
# DateStyle or TimeZone changed it).
$node->safe_psql('shop', q{
CREATE TABLE bookings (id int PRIMARY KEY, stay tstzrange, length interval, score float8, rel regclass);
INSERT INTO bookings VALUES (1, '[2026-11-21 10:00+00, 2026-11-22 10:00+00)', '1 day 2 hours', 0.1, 'public.sales');
CREATE SCHEMA other; SET search_path = other, public;
SET TimeZone = 'Europe/Madrid'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'postgres_verbose';
SET extra_float_digits = -3;
SELECT kappa.publish_table('bookings', 'sales-events');
RESET ALL;
UPDATE bookings SET id = 2 WHERE id = 1;});
wait_published($node);
my @bookings = map { JSON::PP::decode_json($_->{value}) } grep { $_->{value} =~ /"table":"bookings"/ }
	@{ kcat_consume($broker, 'sales-events') };
my ($snap) = grep { $_->{op} eq 'r' } @bookings;
my ($later) = grep { $_->{op} eq 'c' } @bookings;
ok($snap && $later, 'the snapshot row and the row written after it');
is(join(' | ', map { $snap->{after}{$_} // 'null' } qw(stay length score rel)),
	join(' | ', map { $later->{after}{$_} // 'null' } qw(stay length score rel)),
	'the same values, written the same way');

$node->stop;
done_testing();
