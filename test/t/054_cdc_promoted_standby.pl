# A failover to an asynchronous standby: the standby misses the primary's
# last transactions, which the primary had already published and the stream
# workers had applied.  Promoted (timeline 2), it has no replication slot;
# kappa.publish_table() makes one and sends its rows again, and it goes on
# selling, all at LSNs below what the old primary published.  Its changes
# name timeline 2, later than the old primary's timeline 1 whatever the
# LSN: the rankings end equal to the new primary's table.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:2', 'payment-confirmations:1' ]);
my $conf = q{
kappa.idle_timeout = '1h'
kappa.default_grace = '3650d'
kappa.window_time_zone = 'UTC'
kappa.stream_batch_ms = 20
kappa.kafka_options = 'session.timeout.ms=6000'
};
my $primary = kappa_node('primary', $broker, conf => $conf);
$primary->safe_psql('shop', sales_table_sql() . q{
CREATE TABLE wal_filler (v int);
SELECT kappa.publish_table('sales');
INSERT INTO sales
SELECT i, 'ST-1', 'S-1', 'Seller', 'City ' || (i % 4), 'ES', i + 0.50, 'EUR',
       timestamptz '2026-11-20 00:00+00' + (i % 24) * interval '1 hour'
  FROM generate_series(1, 40) i;
});
wait_published($primary);

my $table_sql = q{
SELECT coalesce(string_agg(v, ',' ORDER BY v), '') FROM (
  SELECT to_char(sold_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ' ' || city || ' '
         || sum(amount) || '/' || count(*) AS v
    FROM sales GROUP BY to_char(sold_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), city) x
};
my $ranking_sql = q{
SELECT coalesce(string_agg(v, ',' ORDER BY v), '') FROM (
  SELECT to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ' ' || group_values[1] || ' '
         || total || '/' || sale_count AS v
    FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city' AND sale_count > 0) x
};
sub check_ranking
{
	my ($node, $expected, $label) = @_;
	my $actual;
	wait_until(sub { ($actual = $node->safe_psql('shop', $ranking_sql)) eq $expected },
		"$label: the ranking to equal the table", 90);
	is($actual, $expected, "$label: the ranking equals the table");
	return;
}
check_ranking($primary, $primary->safe_psql('shop', $table_sql), 'primary');

# An asynchronous standby, caught up, then cut off (stopped): the primary's
# next transactions never reach it.
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);
# (the workers start once recovery is over: none runs on a standby)
is($standby->safe_psql('shop', q{SELECT string_agg(state, ',') FROM kappa.stream_worker_status()}),
	'not started', 'no stream worker runs on the standby');
is($standby->safe_psql('shop', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pg_kappa%'}),
	'0', 'nor any other pg_kappa worker');
$standby->stop;

# (more WAL first: each switch moves the insert position to the next 16 MB
# segment, so that what the standby writes after its promotion stays below)
for (1 .. 3)
{
	$primary->safe_psql('shop', 'INSERT INTO wal_filler VALUES (1); SELECT pg_switch_wal();');
}
$primary->safe_psql('shop', q{
UPDATE sales SET amount = amount + 100 WHERE sale_id <= 10;
DELETE FROM sales WHERE sale_id BETWEEN 11 AND 15;
});
my $lost_lsn = wait_published($primary);
check_ranking($primary, $primary->safe_psql('shop', $table_sql), 'primary, after changes the standby never got');
$primary->stop;

# The failover: the standby is promoted, publishes its tables again (the
# slot was not in the backup) and takes new changes, to the same sales.
$standby->start;
$standby->promote;
$standby->safe_psql('shop', q{
SELECT kappa.publish_table('sales');
UPDATE sales SET amount = amount + 7 WHERE sale_id <= 5;
UPDATE sales SET city = 'City 9' WHERE sale_id BETWEEN 11 AND 13;
INSERT INTO sales VALUES (41, 'ST-1', 'S-1', 'Seller', 'City 1', 'ES', 41.50, 'EUR', '2026-11-20T05:00:00Z');
});
my $new_lsn = wait_published($standby);
is($standby->safe_psql('shop', q{SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)}),
	'00000002', 'the new primary is on timeline 2');
ok($standby->safe_psql('shop', "SELECT '$new_lsn'::pg_lsn < '$lost_lsn'::pg_lsn") eq 't',
	"it wrote everything below what the old primary published ($new_lsn < $lost_lsn)");
my @tl2 = grep { $_->{value} =~ /"timeline":2,/ } @{ kcat_consume($broker, 'sales-events') };
is(scalar(@tl2), 49, 'the 40 snapshot rows and 9 changes of the new primary name timeline 2');

my $expected = $standby->safe_psql('shop', $table_sql);
check_ranking($standby, $expected, 'new primary');

$standby->stop;
done_testing();
