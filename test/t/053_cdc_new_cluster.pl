# A new cluster publishing into the topics an old one published to: the
# shop's database restored from pg_dump into a new cluster, whose WAL
# starts lower than what the old cluster published.  Its changes carry its
# own source.system_id, so they are not taken for replays of the old
# cluster's changes, with row memory (kappa.stream_rows, per sale) and
# without (kappa.stream_offsets, per partition); replays of its own
# changes still change nothing.  Then the comparison rule itself, on
# hand-made envelopes: a later timeline of the same cluster (a promoted
# standby) is later whatever its LSN, an earlier one is a replay, another
# cluster is new, and envelopes without a system_id (before 0.1.5,
# Debezium) compare by LSN as before.  Bad values are dead letters.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:2', 'sales-full:2', 'sales-hand:1' ]);
my $old = kappa_node('old_cluster', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = '3650d'
kappa.window_time_zone = 'UTC'
kappa.stream_batch_ms = 20
});
(my $full_sql = sales_table_sql()) =~ s/CREATE TABLE sales /CREATE TABLE sales2 /;
$old->safe_psql('shop', sales_table_sql() . $full_sql . q{
ALTER TABLE sales2 REPLICA IDENTITY FULL;
CREATE TABLE wal_filler (v int);
SELECT kappa.create_ranking('full_city', ARRAY['city'], '1 day', calendar => true,
                            source_topic => 'sales-full', row_memory => false);
SELECT kappa.create_ranking('hand_city', ARRAY['city'], '1 day', calendar => true,
                            source_topic => 'sales-hand');
SELECT kappa.publish_table('sales', 'sales-events');
SELECT kappa.publish_table('sales2', 'sales-full');
});

# The old cluster has written a lot of WAL before the shop's sales: each
# switch moves the insert position to the next 16 MB segment.
for (1 .. 6)
{
	$old->safe_psql('shop', 'INSERT INTO wal_filler VALUES (1); SELECT pg_switch_wal();');
}

sub load_sql
{
	my ($table, $from, $to) = @_;
	return qq{
INSERT INTO $table
SELECT i, 'ST-1', 'S-' || (i % 3), 'Seller', 'City ' || (i % 4), 'ES', (i % 50) + 0.25, 'EUR',
       timestamptz '2026-11-20 00:00+00' + (i % 48) * interval '1 hour'
  FROM generate_series($from, $to) i;
};
}
$old->safe_psql('shop', load_sql('sales', 1, 60) . load_sql('sales2', 1, 60) . q{
UPDATE sales SET amount = amount + 1 WHERE sale_id % 5 = 0;
UPDATE sales2 SET amount = amount + 1 WHERE sale_id % 5 = 0;
DELETE FROM sales WHERE sale_id % 7 = 0;
DELETE FROM sales2 WHERE sale_id % 7 = 0;
});
my $old_lsn = wait_published($old);

# Totals per day and city, as "day city total/count" lines.
my $table_sql = q{
SELECT coalesce(string_agg(v, ',' ORDER BY v), '') FROM (
  SELECT to_char(sold_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ' ' || city || ' '
         || sum(amount) || '/' || count(*) AS v
    FROM %s GROUP BY to_char(sold_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), city) x
};
sub ranking_sql
{
	return sprintf(q{
SELECT coalesce(string_agg(v, ',' ORDER BY v), '') FROM (
  SELECT to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ' ' || group_values[1] || ' '
         || total || '/' || sale_count AS v
    FROM kappa.ranking_results WHERE ranking = '%s' AND sale_count > 0) x
}, $_[0]);
}
sub check_ranking
{
	my ($ranking, $expected, $label) = @_;
	my $actual;
	wait_until(sub { ($actual = $old->safe_psql('shop', ranking_sql($ranking))) eq $expected },
		"$label: $ranking to equal the tables", 60);
	is($actual, $expected, "$label: $ranking equals what the tables say");
	return;
}
my $old_sales = $old->safe_psql('shop', sprintf($table_sql, 'sales'));
my $old_sales2 = $old->safe_psql('shop', sprintf($table_sql, 'sales2'));
check_ranking('top_sales_by_city', $old_sales, 'old cluster');
check_ranking('full_city', $old_sales2, 'old cluster');
my $old_system_id = $old->safe_psql('shop',
	q{SELECT system_identifier::numeric + CASE WHEN system_identifier < 0 THEN 18446744073709551616 ELSE 0 END FROM pg_control_system()});
is($old->safe_psql('shop',
	qq{SELECT count(*) FILTER (WHERE system_id IS NULL OR timeline IS DISTINCT FROM 1) || ' '
	        || count(DISTINCT system_id::numeric + CASE WHEN system_id < 0 THEN 18446744073709551616 ELSE 0 END)
	        || ' ' || bool_and(system_id::numeric + CASE WHEN system_id < 0 THEN 18446744073709551616 ELSE 0 END = $old_system_id)
	     FROM kappa.stream_rows WHERE topic = 'sales-events'}),
	'0 1 true', 'row memory stores the old cluster\'s system identifier and timeline with each position');

# 1. The shop's sales restored from pg_dump into a new cluster, which
# publishes them (a snapshot) to the same topics, and goes on selling.
# sales2 starts empty there: rankings without row memory would count a
# snapshot of rows they counted already (rankings.md).
my $new = kappa_node('new_cluster', $broker, conf => q{
kappa.stream_enabled = off
});
my $dump = PostgreSQL::Test::Utils::tempdir() . '/sales.sql';
PostgreSQL::Test::Utils::system_or_bail('pg_dump', '-d', $old->connstr('shop'), '-t', 'sales', '-f', $dump);
PostgreSQL::Test::Utils::system_or_bail('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
	'-d', $new->connstr('shop'), '-f', $dump);
$new->safe_psql('shop', $full_sql . q{
ALTER TABLE sales2 REPLICA IDENTITY FULL;
SELECT kappa.publish_table('sales', 'sales-events');
SELECT kappa.publish_table('sales2', 'sales-full');
} . load_sql('sales', 1001, 1040) . load_sql('sales2', 1001, 1040) . q{
UPDATE sales SET amount = amount * 3 WHERE sale_id % 4 = 0;
UPDATE sales SET city = 'City 9', sold_at = sold_at + interval '1 day' WHERE sale_id % 9 = 0;
DELETE FROM sales WHERE sale_id % 11 = 0;
UPDATE sales2 SET amount = amount * 3 WHERE sale_id % 4 = 0;
DELETE FROM sales2 WHERE sale_id % 11 = 0;
});
my $new_lsn = wait_published($new);
my $new_system_id = $new->safe_psql('shop',
	q{SELECT system_identifier::numeric + CASE WHEN system_identifier < 0 THEN 18446744073709551616 ELSE 0 END FROM pg_control_system()});
isnt($new_system_id, $old_system_id, 'the new cluster has a system identifier of its own');
ok($old->safe_psql('shop', "SELECT '$new_lsn'::pg_lsn < '$old_lsn'::pg_lsn") eq 't',
	"the new cluster wrote all of it at positions below the old one's ($new_lsn < $old_lsn)");

my $new_sales = $new->safe_psql('shop', sprintf($table_sql, 'sales'));
isnt($new_sales, $old_sales, 'the new cluster\'s changes change the totals');
check_ranking('top_sales_by_city', $new_sales, 'new cluster, row memory');
# without row memory: the old cluster's sales2 and the new one's
$new->safe_psql('shop', $full_sql =~ s/sales2/old_sales2/r);
$new->safe_psql('shop', $old->safe_psql('shop', q{
SELECT 'INSERT INTO old_sales2 VALUES ' || string_agg(format('(%s,%L,%L,%L,%L,%L,%s,%L,%L)',
         sale_id, store_id, seller_id, seller_name, city, country, amount, currency, sold_at), ',')
  FROM sales2}));
my $both_sales2 = $new->safe_psql('shop',
	sprintf($table_sql, '(SELECT * FROM sales2 UNION ALL SELECT * FROM old_sales2) s'));
check_ranking('full_city', $both_sales2, 'new cluster, no row memory');
is($old->safe_psql('shop', qq{
SELECT count(*) FROM kappa.stream_offsets
 WHERE topic = 'sales-full' AND position_timeline = 1
   AND position_system_id::numeric + CASE WHEN position_system_id < 0 THEN 18446744073709551616 ELSE 0 END = $new_system_id}),
	'2', 'both partitions of the topic without row memory now hold a position of the new cluster');

# 2. The new cluster's messages produced again, as its publisher replaying
# after a crash would: replays, nothing changes.
my $dups_before = $old->safe_psql('shop', 'SELECT sum(duplicates) FROM kappa.stream_worker_status()');
my $replayed = 0;
for my $topic ('sales-events', 'sales-full')
{
	my @mine = grep { $_->{value} =~ /"system_id":"$new_system_id"/ } @{ kcat_consume($broker, $topic) };
	for my $p (0, 1)
	{
		my @pairs = map { [ $_->{key}, $_->{value} ] } grep { $_->{partition} == $p } @mine;
		kcat_produce($broker, $topic, \@pairs, partition => $p) if @pairs;
		$replayed += @pairs;
	}
}
cmp_ok($replayed, '>', 100, "$replayed messages of the new cluster produced again");
wait_until(sub {
	$old->safe_psql('shop', 'SELECT sum(duplicates) FROM kappa.stream_worker_status()') == $dups_before + $replayed
}, 'the replays to be recognised');
check_ranking('top_sales_by_city', $new_sales, 'after the replays');
check_ranking('full_city', $both_sales2, 'after the replays');
is($old->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters'), '0', 'no dead letters');

# 3. The rule on hand-made envelopes, one sale on one partition.
sub hand
{
	my ($amount, $source) = @_;
	return [ '{"sale_id":"77"}', sprintf('{"op":"u","before":null,"after":{"sale_id":"77","store_id":"ST-1","seller_id":"S-1","seller_name":"Seller","city":"Hand","country":"ES","amount":"%s","currency":"EUR","sold_at":"2026-11-20T10:00:00Z"},"source":{"connector":"postgres",%s},"ts_ms":1}', $amount, $source) ];
}
my @steps = (
	[ '10.00', '"system_id":"7000000000000000001","timeline":1,"lsn":"0/9000","seq":0', '10.00', 'first change' ],
	[ '20.00', '"system_id":"7000000000000000001","timeline":2,"lsn":"0/5000","seq":0', '20.00', 'a later timeline at a lower LSN: applied' ],
	[ '30.00', '"system_id":"7000000000000000001","timeline":1,"lsn":"0/F000","seq":0', '20.00', 'the earlier timeline at a higher LSN: a replay' ],
	[ '40.00', '"system_id":"7000000000000000001","timeline":2,"lsn":"0/5000","seq":0', '20.00', 'the same position again: a replay' ],
	[ '45.00', '"system_id":"7000000000000000001","timeline":2,"lsn":"0/5000","seq":1', '45.00', 'the next change of that transaction: applied' ],
	[ '50.00', '"system_id":"18446744073709551615","timeline":1,"lsn":"0/1000","seq":0', '50.00', 'another cluster at a lower LSN: applied' ],
	[ '60.00', '"lsn":"0/FFF","seq":0', '50.00', 'no system_id, a lower LSN: a replay' ],
	[ '70.00', '"lsn":"0/2000","seq":0', '70.00', 'no system_id, a higher LSN: applied' ],
	[ '80.00', '"system_id":"7000000000000000001","lsn":"0/1000","seq":0', '70.00', 'a side without a system_id compares by LSN alone' ],
);
for my $s (@steps)
{
	my $dups = $old->safe_psql('shop', 'SELECT sum(duplicates) FROM kappa.stream_worker_status()');
	my $applied = $old->safe_psql('shop', q{SELECT events_applied FROM kappa.ranking_state WHERE ranking = 'hand_city'});
	kcat_produce($broker, 'sales-hand', [ hand($s->[0], $s->[1]) ]);
	wait_until(sub {
		$old->safe_psql('shop', 'SELECT sum(duplicates) FROM kappa.stream_worker_status()') > $dups
		  || $old->safe_psql('shop', q{SELECT events_applied FROM kappa.ranking_state WHERE ranking = 'hand_city'}) > $applied
	}, "the event of step '$s->[3]' to be consumed");
	is($old->safe_psql('shop', q{SELECT total FROM kappa.ranking_results WHERE ranking = 'hand_city' AND sale_count > 0}),
		$s->[2], $s->[3]);
}
is($old->safe_psql('shop', q{SELECT coalesce(system_id::text, 'none') || ' ' || coalesce(timeline::text, 'none') || ' ' || lsn FROM kappa.stream_rows WHERE topic = 'sales-hand'}),
	'none none 0/2000', 'the row remembers the position of the change applied last, which named no cluster');

kcat_produce($broker, 'sales-hand', [
	hand('90.00', '"system_id":"cluster-1","timeline":1,"lsn":"0/F0000","seq":0'),
	hand('90.00', '"system_id":"18446744073709551616","timeline":1,"lsn":"0/F0000","seq":0'),
	hand('90.00', '"system_id":"7000000000000000001","timeline":0,"lsn":"0/F0000","seq":0'),
	hand('90.00', '"system_id":"7000000000000000001","timeline":"x","lsn":"0/F0000","seq":0') ]);
wait_until(sub { $old->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters') eq '4' }, 'four dead letters');
is($old->safe_psql('shop', q{SELECT string_agg(error, E'\n' ORDER BY "offset") FROM kappa.dead_letters}),
	join("\n", ('"source.system_id" is not a system identifier (digits, as a string)') x 2,
		('"source.timeline" is not a timeline (a positive integer)') x 2),
	'a system_id or timeline that is not one is a dead letter, with the reason');
is($old->safe_psql('shop', q{SELECT total FROM kappa.ranking_results WHERE ranking = 'hand_city' AND sale_count > 0}),
	'70.00', 'and changes nothing');

$new->stop;
$old->stop;
done_testing();
