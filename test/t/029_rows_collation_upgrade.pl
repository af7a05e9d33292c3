# The library runs ahead of the schema: a 0.1.3 install in a database whose
# collation is not C (kappa.stream_rows' keys in the database's collation)
# under the current library.  The stream worker must wait, say why and how
# to fix it, and apply nothing; after ALTER EXTENSION pg_kappa UPDATE (0.1.4:
# the keys COLLATE "C"; 0.1.5: positions name their cluster) it applies the
# same events, each once.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

sub sale { return position_free_change('c', @_); }

my $broker = start_dev_broker(topics => [
	'sales-events:1', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $node = kappa_node('rows_collation', $broker, shop_locale => 'C.UTF-8', shop_icu => 'en-US', no_extension => 1, conf => q{
kappa.idle_timeout = '1h'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
# (after the group's last member left, the dev broker was seen to answer the
# next JoinGroup only when the session timeout, 45 s by default, had passed)
kappa.kafka_options = 'session.timeout.ms=6000'
});
$node->safe_psql('shop', q{CREATE EXTENSION pg_kappa VERSION '0.1.3'});
is($node->safe_psql('shop', q{
SELECT a.attcollation::regcollation FROM pg_attribute a
 WHERE a.attrelid = 'kappa.stream_rows'::regclass AND a.attname = 'key'}),
	'"default"', '0.1.3: the keys in the database collation (ICU en-US)');

my $city_totals = sub {
	return $node->safe_psql('shop', q{
SELECT coalesce(string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values[1]), '')
  FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city'});
};

my $log_offset = -s $node->logfile;
my $library = $node->safe_psql('shop', q{SELECT default_version FROM pg_available_extensions WHERE name = 'pg_kappa'});
kcat_produce($broker, 'sales-events',
	[ sale('b-1', 'Bilbao', '10.00'), sale('B-2', 'Vigo', '7.00'), sale('a-1', 'Bilbao', '1.50') ]);
$node->wait_for_log(qr/WARNING:  stream worker 0 waits: pg_kappa's SQL objects are version 0.1.3, its library $library/, $log_offset);
like(slurp_file($node->logfile, $log_offset),
	qr/WARNING:  stream worker 0 waits: pg_kappa's SQL objects are version 0.1.3, its library $library\n.*HINT:  Run ALTER EXTENSION pg_kappa UPDATE in database "shop"\./,
	'the worker waits for the update and says how to make it');
is($node->safe_psql('shop', q{SELECT state FROM kappa.stream_worker_status()}),
	"waiting for ALTER EXTENSION pg_kappa UPDATE (SQL objects 0.1.3, library $library)",
	'its state says what it waits for');
# (it asks again every 5 s; it warns once)
sleep 6;
is((() = slurp_file($node->logfile, $log_offset) =~ /WARNING:  stream worker 0 waits/g), 1, 'the WARNING is given once');
is($city_totals->(), '', 'nothing counted');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.stream_rows}), '0', 'nothing remembered');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.stream_offsets WHERE topic = 'sales-events' AND next_offset > 0}),
	'0', 'no offset stored past the start');

$node->safe_psql('shop', q{ALTER EXTENSION pg_kappa UPDATE});
is($node->safe_psql('shop', q{SELECT e.extversion = a.default_version FROM pg_extension e
	JOIN pg_available_extensions a ON a.name = e.extname WHERE e.extname = 'pg_kappa'}), 't', 'updated to the current version');
wait_until(sub { $city_totals->() eq 'Bilbao=11.50/2,Vigo=7.00/1' }, 'the three sales applied after the update');
is($city_totals->(), 'Bilbao=11.50/2,Vigo=7.00/1', 'each sale counted once');
# (keys whose orders differ: en-US puts case after letters, bytes put
# capitals first)
is($node->safe_psql('shop', q{SELECT string_agg(key, ',' ORDER BY key) FROM kappa.stream_rows}), 'B-2,a-1,b-1',
	'remembered, in byte order');
is($node->safe_psql('shop', q{SELECT string_agg(key, ',' ORDER BY key COLLATE "default") FROM kappa.stream_rows}),
	'a-1,b-1,B-2', 'which is not the database collation\'s order');
is($node->safe_psql('shop', q{SELECT next_offset FROM kappa.stream_offsets WHERE topic = 'sales-events'}),
	'3', 'the offset stored after the three');

$node->stop;
done_testing();
