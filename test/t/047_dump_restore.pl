# pg_dump of a database with pg_kappa, restored into a new cluster: what the
# dump keeps (rankings made with kappa.create_ranking, the CSV ledger) comes
# back as it was, and what it does not (windows, results, offsets) is
# rebuilt from the topics, to the same results.  Before 0.1.5 pg_dump
# warned of the CSV ledger's reference to itself each time, the next
# ranking made after the restore took a restored one's id, and a restored
# ranking had no state row, so its counters stayed empty.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [
	'sales-events:1', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $conf = q{
kappa.idle_timeout = '1h'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
};
my $old = kappa_node('dumped', $broker, conf => $conf);
$old->safe_psql('shop', q{
SELECT kappa.create_ranking('by_store', ARRAY['store_id'], '1 day');
SELECT kappa.create_ranking('by_seller', ARRAY['country'], '1 day', item => 'seller_id');
});

# A CSV ledger whose first row refers to the second (a copy found to be a
# duplicate of content processed later, under a later id); both rows then
# updated, so the first is stored, and dumped, before the second.
$old->safe_psql('shop', q{
INSERT INTO kappa.csv_files (name, sha256, size, state) VALUES
    ('sales_b.csv', repeat('b', 64), 10, 'processing'),
    ('sales_a.csv', repeat('b', 64), 10, 'processing');
UPDATE kappa.csv_files SET state = 'duplicate', duplicate_of = 2, finished_at = '2026-11-21 10:01+00' WHERE id = 1;
UPDATE kappa.csv_files SET state = 'processed', finished_at = '2026-11-21 10:00+00' WHERE id = 2;
});

sub sale
{
	my ($id, $store, $seller, $amount, $at) = @_;
	return [ $id, sprintf('{"op":"c","before":null,"after":{"sale_id":"%s","store_id":"%s","seller_id":"%s","seller_name":"S","city":"Madrid","country":"ES","amount":"%s","currency":"EUR","sold_at":"%s"},"source":{"connector":"test"},"ts_ms":1}',
		$id, $store, $seller, $amount, $at) ];
}
kcat_produce($broker, 'sales-events', [
	sale('1', 'ST-1', 'S-1', '10.00', '2026-11-20T10:00:00Z'),
	sale('2', 'ST-2', 'S-1', '2.50', '2026-11-20T11:00:00Z'),
	sale('3', 'ST-1', 'S-2', '7.25', '2026-11-20T12:00:00Z'),
	sale('4', 'ST-2', 'S-2', '1.00', '2026-11-21T09:00:00Z'),
]);

my $applied = q{SELECT string_agg(ranking || '=' || coalesce(events_applied::text, 'none'), ' ' ORDER BY ranking)
  FROM kappa.stat_rankings};
my $everywhere = 'by_seller=4 by_store=4 top_sales_by_city=4 top_salesman_by_country=4';
wait_until(sub { $old->safe_psql('shop', $applied) eq $everywhere }, 'the four sales applied');
my $results = q{SELECT string_agg(concat_ws(' ', ranking, window_start, group_values, item, total, sale_count), E'\n'
                          ORDER BY ranking, window_start, group_values, item)
  FROM kappa.ranking_results};
my $before = $old->safe_psql('shop', $results);
like($before, qr/by_store 2026-11-20 00:00:00\+00 \{ST-1\}  17.25 2/, 'the results before the dump');

my $dump = $old->basedir . '/shop.dump';
my ($out, $err) = ('', '');
ok(IPC::Run::run([ 'pg_dump', '-Fc', '-f', $dump, '-d', $old->connstr('shop') ], '>', \$out, '2>', \$err),
	'pg_dump');
is($err, '', 'pg_dump has nothing to warn about');
$old->stop;

my $new = kappa_node('restored', $broker, conf => $conf, no_extension => 1);
($out, $err) = ('', '');
ok(IPC::Run::run([ 'pg_restore', '--single-transaction', '-d', $new->connstr('shop'), $dump ],
		'>', \$out, '2>', \$err), 'pg_restore in one transaction');
is($err, '', 'without errors or warnings');

is($new->safe_psql('shop', q{SELECT string_agg(id || ' ' || name, ', ' ORDER BY id) FROM kappa.rankings}),
	'1 top_sales_by_city, 2 top_salesman_by_country, 3 by_store, 4 by_seller',
	'the rankings restored with their ids');
is($new->safe_psql('shop', q{SELECT id FROM kappa.create_ranking('after_restore', ARRAY['city'], '1 day')}),
	'5', 'a ranking made after the restore takes the next id');
is($new->safe_psql('shop', q{SELECT string_agg(concat_ws(' ', id, state, duplicate_of), ', ' ORDER BY id) FROM kappa.csv_files}),
	'1 duplicate 2, 2 processed', 'the CSV ledger restored');
is($new->safe_psql('shop', q{SELECT nextval('kappa.csv_files_id_seq')}), '3', 'and where its ids are');

# The windows are rebuilt from the topic: the same results, and every
# ranking's counters, the restored ones' too.
wait_until(sub { $new->safe_psql('shop', $applied) eq "after_restore=4 $everywhere" },
	'the four sales applied again, in every ranking');
is($new->safe_psql('shop', "$results WHERE ranking <> 'after_restore'"), $before,
	'the same results as before the dump');
is($new->safe_psql('shop', q{SELECT count(*) FROM kappa.ranking_state}), '5', 'one state row per ranking');

$new->stop;
done_testing();
