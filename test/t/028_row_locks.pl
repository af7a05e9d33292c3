# How a batch finds and locks the rows it remembers (kappa.stream_rows).
#
# It takes each row as SELECT ... FOR UPDATE would: it waits for a
# transaction that holds the row, then works from the row's latest committed
# version; a row deleted by that transaction (as forgetting does) is new to
# the batch.  And it finds exactly the rows there are among many: rows to
# update next to, far from and between new ones (one scan of the primary
# key, merged with the batch's keys, and a descent per key once they are
# too far apart), in a database whose text sorts as bytes and in one whose
# text does not (the keys compare as bytes in both: COLLATE "C", 0.1.4).
# Asserted on the rankings' exact totals, which say which version each
# change retracted.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

sub sale { return position_free_change(@_); }

sub scenario
{
	my ($locale, $icu) = @_;
	my $broker = start_dev_broker(topics => [
		'sales-events:1', 'payment-confirmations:1',
		'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
	my $node = kappa_node('row_locks_' . ($locale =~ s/\W/_/gr), $broker,
		shop_locale => $locale, shop_icu => $icu, conf => q{
kappa.idle_timeout = '1h'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
kappa.row_memory_retention = -1
});
	is($node->safe_psql('shop', q{SELECT datcollate || ' ' || datlocprovider::text || ' ' || coalesce(daticulocale, '') FROM pg_database WHERE datname = 'shop'}),
		$icu ? "$locale i $icu" : "$locale c ", "database collation $locale" . ($icu ? ", ICU $icu" : ''));
	is($node->safe_psql('shop', q{SELECT string_agg(k, ',' ORDER BY k) FROM unnest(ARRAY['b', 'B', 'a1', 'a-1']) k}),
		$icu ? 'a-1,a1,b,B' : 'B,a-1,a1,b', 'its text sorts ' . ($icu ? 'not as bytes' : 'as bytes'));

	my $city_totals = sub {
		return $node->safe_psql('shop', q{
SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values[1])
  FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city'});
	};
	my $applied = sub {
		return $node->safe_psql('shop', 'SELECT coalesce(sum(messages), 0) FROM kappa.stream_worker_status()');
	};
	# the stream worker's backend waiting for a row lock
	my $worker_waits = sub {
		return $node->safe_psql('shop', q{
SELECT count(*) FROM pg_stat_activity
 WHERE backend_type LIKE 'pg_kappa stream%' AND wait_event_type = 'Lock' AND wait_event = 'transactionid'}) eq '1';
	};

	kcat_produce($broker, 'sales-events', [ sale('c', 1, 'Bilbao', '10.00'), sale('c', 2, 'Vigo', '7.00') ]);
	wait_until(sub { $applied->() eq '2' }, 'the two sales applied');
	is($city_totals->(), 'Bilbao=10.00/1,Vigo=7.00/1', "$locale: both sales counted");

	# 1. Another transaction rewrites the row the next batch needs and holds
	#    it: the batch waits, then retracts what that transaction left
	#    (Madrid 10), not what it had read before (Bilbao 10).
	my $session = $node->background_psql('shop');
	$session->query_safe(q{BEGIN});
	$session->query_safe(q{
UPDATE kappa.stream_rows
   SET row_data = replace(row_data, '"Bilbao"', '"Madrid"')
 WHERE key = '1'});
	kcat_produce($broker, 'sales-events', [ sale('u', 1, 'Bilbao', '25.00') ]);
	wait_until($worker_waits, 'the batch to wait for the row');
	is($applied->(), '2', "$locale: nothing applied while the row is held");
	$session->query_safe(q{COMMIT});
	wait_until(sub { $applied->() eq '3' }, 'the update applied');
	is($city_totals->(), 'Bilbao=35.00/2,Madrid=-10.00/-1,Vigo=7.00/1',
		"$locale: the update retracted the latest version of the row, the one committed while the batch waited");
	like($node->safe_psql('shop', q{SELECT row_data FROM kappa.stream_rows WHERE key = '1'}),
		qr/"amount":"25.00"/, "$locale: and remembered its own");

	# 2. Another transaction deletes the row (as forgetting does) while the
	#    batch waits for it: to the batch the row is new, nothing is
	#    retracted.
	$session->query_safe(q{BEGIN});
	$session->query_safe(q{DELETE FROM kappa.stream_rows WHERE key = '2'});
	kcat_produce($broker, 'sales-events', [ sale('u', 2, 'Vigo', '4.00') ]);
	wait_until($worker_waits, 'the batch to wait for the deleted row');
	$session->query_safe(q{COMMIT});
	wait_until(sub { $applied->() eq '4' }, 'the second update applied');
	is($city_totals->(), 'Bilbao=35.00/2,Madrid=-10.00/-1,Vigo=11.00/2',
		"$locale: a row deleted while the batch waited is new: its old contribution stays");
	is($node->safe_psql('shop', q{SELECT string_agg(key, ',' ORDER BY key COLLATE "C") FROM kappa.stream_rows}), '1,2',
		"$locale: and is remembered again");
	$session->quit;

	# 3. Among many rows: sales 100..199 in Oviedo, then one stream of
	#    changes to rows next to each other (120, 121), far apart (100, 150,
	#    199: more than a short step of the index between them), a delete
	#    (130), and new sales between the known keys ("1005" sorts between
	#    "100" and "101") and past them ("2" is known, "200".."209" are not).
	#    Rewritten (1.00 as 1.0), 131 and 132 leave a dead version in the index.
	#    Then sixty rows each 20 entries from the next (León 3000, 3020, ...):
	#    keys that need a descent each, as keys in no order do (the scan
	#    gives way to a descent per key part of the way).
	kcat_produce($broker, 'sales-events', [
		(map { sale('c', $_, 'Oviedo', '1.00') } 100 .. 199),
		(map { sale('c', $_, 'León', '1.00') } 3000 .. 4199) ]);
	wait_until(sub { $applied->() eq '1304' }, 'the 1300 sales applied');
	kcat_produce($broker, 'sales-events', [ map { sale('u', $_, 'Oviedo', '1.0') } 131, 132 ]);
	wait_until(sub { $applied->() eq '1306' }, 'the unchanged updates applied');
	is($city_totals->(), 'Bilbao=35.00/2,León=1200.00/1200,Madrid=-10.00/-1,Oviedo=100.00/100,Vigo=11.00/2',
		"$locale: 1300 sales counted");
	kcat_produce($broker, 'sales-events', [
		(map { sale('u', $_, 'Oviedo', '3.00') } 100, 120, 121, 150, 199),
		sale('d', 130),
		sale('u', 131, 'Oviedo', '2.00'),
		sale('c', 1005, 'Gijón', '5.00'),
		(map { sale('c', $_, 'Gijón', '1.00') } 200 .. 209),
		sale('u', 2, 'Vigo', '6.00'),
		(map { sale('u', 3000 + 20 * $_, 'León', '3.00') } 0 .. 59) ]);
	wait_until(sub { $applied->() eq '1385' }, 'the mixed changes applied');
	# Oviedo: 100 + 5 x (3 - 1) - 1 (deleted) + (2 - 1) = 110 over 99 sales;
	# Gijón: 5 + 10 x 1 over 11; Vigo: 11 - 4 + 6 = 13 over 2; León: 1200 +
	# 60 x (3 - 1) over 1200.
	is($city_totals->(), 'Bilbao=35.00/2,Gijón=15.00/11,León=1320.00/1200,Madrid=-10.00/-1,Oviedo=110.00/99,Vigo=13.00/2',
		"$locale: every change found the row it changes, and no new sale found one");
	is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.stream_rows}), '1313',
		"$locale: 2 + 100 + 1200 + 1 + 10 rows remembered, the deleted one kept as deleted");

	is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters'), '0', "$locale: no dead letters");
	$node->stop;
	$broker->stop;
}

scenario('C');
scenario('C.UTF-8', 'en-US');
done_testing();
