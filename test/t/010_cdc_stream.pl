# 100 000 inserted sales plus updates and deletes: every committed change
# reaches the topic once, in commit order per key, with exact values; rolled
# back work is absent.  The topic is read back with kcat, and the expected
# messages are computed here from the statements, independently of the
# extension.
use strict;
use warnings;

use JSON::PP;
use POSIX qw(strftime);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => ['sales-events:16']);
my $node = kappa_node('stream', $broker);
$node->safe_psql('shop', sales_table_sql());
$node->safe_psql('shop', "SELECT kappa.publish_table('sales')");

my $N = 100_000;
my $base = 1763683200;    # 2025-11-21T00:00:00Z

# Inserts in ten transactions of 10 000 rows.
for my $chunk (0 .. 9)
{
	my ($lo, $hi) = ($chunk * 10_000 + 1, ($chunk + 1) * 10_000);
	$node->safe_psql('shop', qq{
INSERT INTO sales
SELECT i, 'ST-' || (i % 50), 'S-' || (i % 200), 'Seller ' || (i % 200),
       'City ' || (i % 37), CASE WHEN i % 3 = 0 THEN 'ES' WHEN i % 3 = 1 THEN 'PT' ELSE 'FR' END,
       ((i % 1000) * 100 + i % 100) / 100.0, 'EUR',
       to_timestamp($base + i)
  FROM generate_series($lo, $hi) i;
});
}
# Updates: every 7th sale once, every 700th a second time; deletes: every 13th.
$node->safe_psql('shop', 'UPDATE sales SET amount = amount + 1 WHERE sale_id % 7 = 0');
$node->safe_psql('shop', 'UPDATE sales SET amount = amount + 2, city = \'Moved\' WHERE sale_id % 700 = 0');
$node->safe_psql('shop', 'DELETE FROM sales WHERE sale_id % 13 = 0');
# Rolled back: none of this may appear.
$node->safe_psql('shop', qq{
BEGIN;
INSERT INTO sales SELECT i, 'X', 'X', 'X', 'X', 'XX', 1, 'EUR', now() FROM generate_series(200001, 201000) i;
UPDATE sales SET amount = 0 WHERE sale_id = 1;
ROLLBACK;
});
my $lsn = wait_published($node);
note "published up to $lsn";

# ---- the expectation ------------------------------------------------------
sub after_json
{
	my ($i, $cents, $city) = @_;
	my $country = $i % 3 == 0 ? 'ES' : $i % 3 == 1 ? 'PT' : 'FR';
	return sprintf(
		'{"sale_id":"%d","store_id":"ST-%d","seller_id":"S-%d","seller_name":"Seller %d","city":"%s","country":"%s","amount":"%d.%02d","currency":"EUR","sold_at":"%s"}',
		$i, $i % 50, $i % 200, $i % 200, $city, $country, int($cents / 100), $cents % 100,
		strftime('%Y-%m-%dT%H:%M:%S.000000Z', gmtime($base + $i)));
}

my %expected;    # sale_id -> [ "op after before", ... ] in commit order
my $expected_count = 0;
for my $i (1 .. $N)
{
	my $cents = ($i % 1000) * 100 + $i % 100;
	my $city = 'City ' . ($i % 37);
	my @events = ([ 'c', after_json($i, $cents, $city), 'null' ]);
	if ($i % 7 == 0)
	{
		$cents += 100;
		push @events, [ 'u', after_json($i, $cents, $city), 'null' ];
	}
	if ($i % 700 == 0)
	{
		$cents += 200;
		$city = 'Moved';
		push @events, [ 'u', after_json($i, $cents, $city), 'null' ];
	}
	if ($i % 13 == 0)
	{
		push @events, [ 'd', 'null', qq({"sale_id":"$i"}) ];
	}
	$expected{$i} = [ map { join(' ', @$_) } @events ];
	$expected_count += @events;
}

# ---- what Kafka has -------------------------------------------------------
my $messages = kcat_consume($broker, 'sales-events');
is(scalar(@$messages), $expected_count, "topic holds exactly $expected_count messages");

my (%got, %partition_of, %last_pos);
my ($bad_key, $bad_partition, $bad_order, $bad_shape) = (0, 0, 0, 0);
for my $m (@$messages)
{
	my ($op) = $m->{value} =~ /^\{"op":"(.)"/;
	my ($before, $after) = $m->{value} =~ /"before":(null|\{[^{}]*\}),"after":(null|\{[^{}]*\})/;
	my ($lsn_hi, $lsn_lo, $seq) = $m->{value} =~ /"lsn":"([0-9A-F]+)\/([0-9A-F]+)","seq":(\d+)/;
	if (!defined $op || !defined $after || !defined $seq)
	{
		$bad_shape++;
		next;
	}
	my ($id) = ($after ne 'null' ? $after : $before) =~ /"sale_id":"(\d+)"/;
	$bad_key++ unless defined $id && $m->{key} eq $id;
	$bad_partition++ if exists $partition_of{ $m->{key} } && $partition_of{ $m->{key} } != $m->{partition};
	$partition_of{ $m->{key} } = $m->{partition};

	# within a partition, messages follow commit order: (lsn, seq) ascending
	my $pos = sprintf('%08X%08X%012d', hex($lsn_hi), hex($lsn_lo), $seq);
	$bad_order++ if defined $last_pos{ $m->{partition} } && $pos le $last_pos{ $m->{partition} };
	$last_pos{ $m->{partition} } = $pos;

	push @{ $got{ $m->{key} } }, "$op $after $before";
}
is($bad_shape, 0, 'every message is a change envelope with lsn and seq');
is($bad_key, 0, 'every message is keyed by its sale_id');
is($bad_partition, 0, 'all changes of a key are in one partition');
is($bad_order, 0, 'each partition is in commit order (source.lsn, source.seq)');

my ($missing, $different) = (0, 0);
for my $i (1 .. $N)
{
	if (!$got{$i}) { $missing++; next; }
	$different++ unless join("\n", @{ $got{$i} }) eq join("\n", @{ $expected{$i} });
}
is($missing, 0, 'no sale is missing');
is($different, 0, 'every sale has exactly its committed changes, in order, with exact values');
ok(!grep({ $_ > $N } keys %got), 'nothing of the rolled-back transaction was published');
is_deeply($got{1}, $expected{1}, 'sale 1 (its update was rolled back) is untouched');

# The envelope itself, as DESIGN.md describes it.
my $sample = decode_json($messages->[0]{value});
is_deeply([ sort keys %$sample ], [qw(after before op source ts_ms)], 'envelope fields');
is($sample->{source}{connector}, 'postgres', 'source.connector');
is($sample->{source}{db}, 'shop', 'source.db');
is($sample->{source}{schema}, 'public', 'source.schema');
is($sample->{source}{table}, 'sales', 'source.table');
like($sample->{source}{txid}, qr/^\d+$/, 'source.txid');
like($sample->{source}{ts_ms}, qr/^\d{13}$/, 'source.ts_ms');

# The publisher's own account agrees.
my $status = $node->safe_psql('shop',
	"SELECT state, produced, acknowledged, in_flight, errors FROM kappa.cdc_status");
is($status, "streaming|$expected_count|$expected_count|0|0", 'kappa.cdc_status counts');
# Autovacuum of the new rows may write WAL meanwhile; the publisher confirms
# past it too (nothing of it is published), so the lag comes down.
ok(eval {
	wait_until(sub { $node->safe_psql('shop', 'SELECT lag_bytes < 1000000 FROM kappa.cdc_status') eq 't' },
		'lag under 1 MB');
	1;
}, 'kappa.cdc_status lag comes down to under 1 MB');

# A clean restart replays nothing: the confirmed position is on disk before
# the publisher goes (PostgreSQL 15 does not write it at the shutdown
# checkpoint), even right after the last confirmation.
my $before_restart = scalar(@{ kcat_consume($broker, 'sales-events') });
# (two confirmations in a row: the first saves the slot, the second comes
# within the second the publisher waits between saves)
$node->safe_psql('shop', q{
INSERT INTO sales SELECT i, 'ST', 'S', 'Seller', 'City', 'ES', 1.00, 'EUR', now() FROM generate_series(900001, 900005) i});
wait_published($node);
$node->safe_psql('shop', q{
INSERT INTO sales SELECT i, 'ST', 'S', 'Seller', 'City', 'ES', 1.00, 'EUR', now() FROM generate_series(900006, 900010) i});
wait_published($node);
$node->restart;
$node->safe_psql('shop', q{
INSERT INTO sales VALUES (900011, 'ST', 'S', 'Seller', 'City', 'ES', 1.00, 'EUR', now())});
wait_published($node);
is(scalar(@{ kcat_consume($broker, 'sales-events') }) - $before_restart, 11,
	'after a clean restart, only the new change was published: nothing replayed');

$node->stop;
$broker->stop;
done_testing();
