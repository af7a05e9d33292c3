# A batch takes each remembered row (kappa.stream_rows) as SELECT ... FOR
# UPDATE would: it waits for a transaction that holds the row, then works
# from the row's latest committed version; a row deleted by that transaction
# (as forgetting does) is new to the batch.  Asserted on the rankings' exact
# totals, which say which version the update retracted.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [
	'sales-events:1', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $node = kappa_node('row_locks', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
kappa.row_memory_retention = -1
});

# Changes without a CDC position: each one is applied as the newest.
sub sale
{
	my ($op, $id, $city, $amount) = @_;
	return [ $id, sprintf('{"op":"%s","before":null,"after":{"sale_id":"%d","store_id":"ST-1","seller_id":"S-1","seller_name":"Seller","city":"%s","country":"ES","amount":"%s","currency":"EUR","sold_at":"2026-05-04T10:00:00Z"},"source":{"connector":"csv"},"ts_ms":1}',
		$op, $id, $city, $amount) ];
}
sub city_totals
{
	return $node->safe_psql('shop', q{
SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values[1])
  FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city'});
}
sub applied
{
	return $node->safe_psql('shop', 'SELECT coalesce(sum(messages), 0) FROM kappa.stream_worker_status()');
}
# The stream worker's backend waiting for a row lock.
sub worker_waits
{
	return $node->safe_psql('shop', q{
SELECT count(*) FROM pg_stat_activity
 WHERE backend_type LIKE 'pg_kappa stream%' AND wait_event_type = 'Lock' AND wait_event = 'transactionid'}) eq '1';
}

kcat_produce($broker, 'sales-events', [ sale('c', 1, 'Bilbao', '10.00'), sale('c', 2, 'Vigo', '7.00') ]);
wait_until(sub { applied() eq '2' }, 'the two sales applied');
is(city_totals(), 'Bilbao=10.00/1,Vigo=7.00/1', 'both sales counted');

# 1. Another transaction rewrites the row the next batch needs and holds it:
#    the batch waits, then retracts what that transaction left (Madrid 10),
#    not what it had read before (Bilbao 10).
my $session = $node->background_psql('shop');
$session->query_safe(q{BEGIN});
$session->query_safe(q{
UPDATE kappa.stream_rows
   SET row_data = replace(row_data, '"Bilbao"', '"Madrid"')
 WHERE key = '1'});
kcat_produce($broker, 'sales-events', [ sale('u', 1, 'Bilbao', '25.00') ]);
wait_until(\&worker_waits, 'the batch to wait for the row');
is(applied(), '2', 'nothing applied while the row is held');
$session->query_safe(q{COMMIT});
wait_until(sub { applied() eq '3' }, 'the update applied');
is(city_totals(), 'Bilbao=35.00/2,Madrid=-10.00/-1,Vigo=7.00/1',
	'the update retracted the latest version of the row, the one committed while the batch waited');
like($node->safe_psql('shop', q{SELECT row_data FROM kappa.stream_rows WHERE key = '1'}),
	qr/"amount":"25.00"/, 'and remembered its own');

# 2. Another transaction deletes the row (as forgetting does) while the batch
#    waits for it: to the batch the row is new, nothing is retracted.
$session->query_safe(q{BEGIN});
$session->query_safe(q{DELETE FROM kappa.stream_rows WHERE key = '2'});
kcat_produce($broker, 'sales-events', [ sale('u', 2, 'Vigo', '4.00') ]);
wait_until(\&worker_waits, 'the batch to wait for the deleted row');
$session->query_safe(q{COMMIT});
wait_until(sub { applied() eq '4' }, 'the second update applied');
is(city_totals(), 'Bilbao=35.00/2,Madrid=-10.00/-1,Vigo=11.00/2',
	'a row deleted while the batch waited is new: its old contribution stays');
is($node->safe_psql('shop', q{SELECT string_agg(key, ',' ORDER BY key) FROM kappa.stream_rows}), '1,2',
	'and is remembered again');
$session->quit;

is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters'), '0', 'no dead letters');
done_testing();
