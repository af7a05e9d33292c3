# Rankings without row memory: a REPLICA IDENTITY FULL table published to a
# topic of its own, whose rankings undo updates and deletes from the
# event's "before" row and recognise replays by the partition's CDC
# position.  Inserts, updates (amount, city, day) and deletes in many
# transactions, kill -9 of the server in the middle, more changes after the
# restart: the rankings equal what the table says, computed here in SQL
# from the table.  Replays produced again with kcat into their partition
# change nothing; events without a position or without "before" are dead
# letters.  Nothing is written to kappa.stream_rows.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-full:8', 'sales-events:1' ]);
my $node = kappa_node('nomemory', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = '3650d'
kappa.stream_batch_ms = 50
kappa.stream_batch_size = 2000
});
$node->safe_psql('shop', sales_table_sql() . 'ALTER TABLE sales REPLICA IDENTITY FULL;');
$node->safe_psql('shop', q{
SELECT kappa.create_ranking('city_day', ARRAY['city'], '1 day', calendar => true,
                            source_topic => 'sales-full', row_memory => false);
SELECT kappa.create_ranking('seller_month', ARRAY['country'], '30 days', item => 'seller_id',
                            item_label => 'seller_name', source_topic => 'sales-full',
                            row_memory => false);
SELECT kappa.publish_table('sales', 'sales-full');
});

# Changes in one transaction each: inserts, amount changes, moves to another
# city and day, deletes.
sub load_sql
{
	my ($from, $to) = @_;
	return qq{
DO \$\$
BEGIN
  FOR i IN $from..$to LOOP
    INSERT INTO sales VALUES (i, 'ST-' || (i % 4), 'S-' || (i % 5), 'Seller ' || (i % 5),
                              'City ' || (i % 6), (ARRAY['ES','PT','FR'])[i % 3 + 1],
                              (i % 500) + 0.25, 'EUR',
                              timestamptz '2026-11-20 00:00+00' + (i % 72) * interval '1 hour');
    IF i % 3 = 0 THEN UPDATE sales SET amount = amount + 1.10 WHERE sale_id = i - 2; END IF;
    IF i % 7 = 0 THEN
      UPDATE sales SET city = 'City 9', sold_at = sold_at + interval '25 hours' WHERE sale_id = i - 5;
    END IF;
    IF i % 11 = 0 THEN DELETE FROM sales WHERE sale_id = i - 4; END IF;
    COMMIT;
  END LOOP;
END \$\$;
};
}

my $expected_sql = q{
SELECT coalesce(string_agg(v, ',' ORDER BY v), '') FROM (
  SELECT 'city_day ' || city || ' ' || to_char(sold_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ' '
         || sum(amount) || '/' || count(*) AS v
    FROM sales GROUP BY city, to_char(sold_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')
  UNION ALL
  SELECT 'seller_month ' || country || ' ' || seller_id || ' '
         || to_char(to_timestamp(floor(extract(epoch FROM sold_at) / 2592000) * 2592000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')
         || ' ' || sum(amount) || '/' || count(*)
    FROM sales GROUP BY country, seller_id, floor(extract(epoch FROM sold_at) / 2592000)) x
};
my $actual_sql = q{
SELECT coalesce(string_agg(v, ',' ORDER BY v), '') FROM (
  SELECT ranking || ' ' || array_to_string(group_values, ' ')
         || CASE WHEN item <> '' THEN ' ' || item ELSE '' END || ' '
         || to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ' ' || total || '/' || sale_count AS v
    FROM kappa.ranking_results
   WHERE ranking IN ('city_day', 'seller_month')) x
};

sub check_results
{
	my ($label) = @_;
	my $expected = $node->safe_psql('shop', $expected_sql);
	my $actual;
	wait_until(sub { ($actual = $node->safe_psql('shop', $actual_sql)) eq $expected },
		"$label: rankings to equal the table", 120);
	is($actual, $expected, "$label: both rankings equal what the table says");
	return;
}

# 1. A load, and kill -9 of the whole server while it is being consumed.
my $load = IPC::Run::start([ 'psql', '-X', '-d', $node->connstr('shop'), '-c', load_sql(1, 40000) ],
	'>', \my $out, '2>', \my $err);
wait_until(sub {
	($node->safe_psql('shop',
		q{SELECT coalesce(sum(events_applied), 0) FROM kappa.stat_rankings WHERE ranking = 'city_day'}) || 0) > 3000
}, 'the stream worker in the middle of the load');
# The workers' commits held (a batch ends with its offsets' UPDATE, which
# waits for this lock): what they committed stays what is read here until
# the kill, and the topic already holds more.
my $locker = $node->background_psql('shop', on_error_stop => 1);
$locker->query_safe('BEGIN; LOCK TABLE kappa.stream_offsets IN SHARE MODE;');
my $committed = $node->safe_psql('shop',
	q{SELECT coalesce(sum(next_offset) FILTER (WHERE next_offset > 0), 0) FROM kappa.stream_offsets WHERE topic = 'sales-full'});
my $in_topic = scalar(@{ kcat_consume($broker, 'sales-full') });
ok($committed < $in_topic, "killed with $committed of the $in_topic messages then in the topic applied");
crash_node($node);
$load->finish;
$node->start;

# 2. More changes after the restart, to rows from before the crash too.
$node->safe_psql('shop', load_sql(40001, 43000));
$node->safe_psql('shop', q{
UPDATE sales SET amount = amount * 2 WHERE sale_id % 13 = 0;
DELETE FROM sales WHERE sale_id % 17 = 0;
});
check_results('after kill -9 and more changes');

is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.stream_rows WHERE topic = 'sales-full'}),
	'0', 'no row memory written for the topic');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.dead_letters}), '0', 'no dead letters so far');
is($node->safe_psql('shop',
	q{SELECT count(*) || ' ' || count(*) FILTER (WHERE position_lsn IS NULL OR position_seq IS NULL) FROM kappa.stream_offsets WHERE topic = 'sales-full'}),
	'8 0', 'each of the 8 partitions stores its latest CDC position');

# 3. The last 200 messages of partition 3 produced again, as a publisher
# replaying after a crash would: recognised, nothing changes.
my @p3 = grep { $_->{partition} == 3 } @{ kcat_consume($broker, 'sales-full') };
my @again = @p3[ -200 .. -1 ];
my $dups_before = $node->safe_psql('shop', 'SELECT sum(duplicates) FROM kappa.stream_worker_status()');
sub produce_to_partition
{
	my ($partition, $pairs) = @_;
	my $in = join('', map { "$_->[0]\x1f$_->[1]\n" } @$pairs);
	my ($o, $e) = ('', '');
	IPC::Run::run([ 'kcat', '-P', '-b', $broker->bootstrap, '-t', 'sales-full', '-p', $partition,
			'-K', "\x1f" ], '<', \$in, '>', \$o, '2>', \$e)
	  or die "kcat -P failed: $e";
	return;
}
produce_to_partition(3, [ map { [ $_->{key}, $_->{value} ] } @again ]);
wait_until(sub {
	$node->safe_psql('shop', 'SELECT sum(duplicates) FROM kappa.stream_worker_status()') == $dups_before + 200
}, 'the replayed messages to be consumed');
check_results('after 200 replayed messages');

# 4. An event without a CDC position, and an update without "before": dead
# letters with the reason; the rankings do not change.
my $row = q{{"sale_id":"900001","store_id":"ST","seller_id":"S-1","seller_name":"Seller 1","city":"City 1","country":"ES","amount":"5.00","currency":"EUR","sold_at":"2026-11-20T10:00:00Z"}};
produce_to_partition(3, [
	[ '{"sale_id":900001}', qq({"op":"c","before":null,"after":$row,"source":{"connector":"test"},"ts_ms":1}) ],
	[ '{"sale_id":900001}', qq({"op":"u","before":null,"after":$row,"source":{"connector":"postgres","lsn":"FFFFFFFF/FFFFFF00","seq":0,"txid":1},"ts_ms":1}) ] ]);
wait_until(sub { $node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters') eq '2' },
	'two dead letters');
is($node->safe_psql('shop', q{SELECT string_agg(partition || ':' || error, E'\n' ORDER BY "offset") FROM kappa.dead_letters}),
	qq{3:the rankings of this topic have no row memory, so an event needs source.lsn and source.seq (a CDC change) for replays to be recognised\n}
	  . qq{3:an update or delete needs the old row in "before" when the rankings of the topic have no row memory (publish the table with REPLICA IDENTITY FULL)},
	'dead letters say why');
check_results('after the dead letters');

$node->stop;
done_testing();
