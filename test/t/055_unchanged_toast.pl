# Unchanged TOASTed values.  An UPDATE under REPLICA IDENTITY DEFAULT does
# not carry a TOASTed value it left unchanged: the publisher writes
# Debezium's "__debezium_unavailable_value" in its place, as Debezium does.
# The stream worker fills such a value in from the row it changed (the
# event's "before", or the row remembered), so that rankings and
# kappa.sales_enriched see the row's real values; where no earlier version
# has it, an event that needs it for a ranking is a dead letter, never
# counted under the marker.  The marker never reaches a result.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP qw(decode_json);
use PgKappa::Test;

use constant MARKER => '__debezium_unavailable_value';

my $broker = start_dev_broker(topics => [
	'sales-events:1', 'sales-hand:1', 'sales-full:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $node = kappa_node('unchanged_toast', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = '3650d'
kappa.window_time_zone = 'UTC'
kappa.stream_batch_ms = 20
});

# seller_name stored out of line and uncompressed: a 3 000-byte name is
# TOASTed, and an update that does not change it leaves it out of the WAL.
$node->safe_psql('shop', sales_table_sql() . q{
ALTER TABLE sales ALTER seller_name SET STORAGE EXTERNAL;
SELECT kappa.publish_table('sales');
SELECT kappa.create_ranking('hand_city', ARRAY['city'], '1 day', calendar => true,
                            source_topic => 'sales-hand');
SELECT kappa.create_ranking('full_city', ARRAY['city'], '1 day', calendar => true,
                            source_topic => 'sales-full', row_memory => false);
});
my $ana = 'Ana ' . ('n' x 3000);
my $eva = 'Eva ' . ('e' x 3000);
$node->safe_psql('shop', qq{
INSERT INTO sales VALUES
  (1, 'ST-1', 'S-1', '$ana', 'Madrid', 'ES', 10.00, 'EUR', '2026-11-20 10:00+00'),
  (2, 'ST-1', 'S-2', 'Bo', 'Lisboa', 'PT', 5.00, 'EUR', '2026-11-20 11:00+00'),
  (4, 'ST-1', 'S-4', '$eva', 'Porto', 'PT', 7.00, 'EUR', '2026-11-20 12:00+00');
});
is($node->safe_psql('shop', q{
SELECT pg_relation_size(reltoastrelid) > 0 FROM pg_class WHERE oid = 'sales'::regclass}), 't',
	'the long seller_names are stored out of line, in the TOAST table');
$node->safe_psql('shop', q{UPDATE sales SET amount = 25.00 WHERE sale_id = 1});
$node->safe_psql('shop', q{UPDATE sales SET city = 'Sevilla' WHERE sale_id = 1});
# a key change: a delete of 4 and a create of 5, which no row memory has
$node->safe_psql('shop', q{UPDATE sales SET sale_id = 5 WHERE sale_id = 4});
wait_published($node);

# What was published: the updates of sale 1 and the create of sale 5 carry
# the marker, not the name (so the rest of this test is about something).
my @published = map { decode_json($_->{value}) } @{ kcat_consume($broker, 'sales-events') };
is(join(',', map { $_->{op} . ':' . $_->{after}{sale_id} . ':' . (length($_->{after}{seller_name}) > 100 ? 'name' : $_->{after}{seller_name}) }
		grep { defined $_->{after} } @published),
	'c:1:name,c:2:Bo,c:4:name,u:1:' . MARKER . ',u:1:' . MARKER . ',c:5:' . MARKER,
	'the publisher wrote the marker for the unchanged TOASTed name');

my $city_sql = q{
SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values[1])
  FROM kappa.ranking_results WHERE ranking = $1 AND sale_count > 0};
sub results
{
	my ($ranking) = @_;
	(my $sql = $city_sql) =~ s/\$1/'$ranking'/;
	return $node->safe_psql('shop', $sql);
}
wait_until(sub { results('top_sales_by_city') eq 'Lisboa=5.00/1,Porto=7.00/1,Sevilla=25.00/1' },
	'the city ranking after the updates');
is(results('top_sales_by_city'), 'Lisboa=5.00/1,Porto=7.00/1,Sevilla=25.00/1',
	'the city ranking counts the updates and the key change exactly');
wait_until(sub { $node->safe_psql('shop', q{
SELECT string_agg(item || '=' || total || '/' || sale_count, ',' ORDER BY item)
  FROM kappa.ranking_results WHERE ranking = 'top_salesman_by_country' AND sale_count > 0})
	  eq 'S-1=25.00/1,S-2=5.00/1,S-4=7.00/1' }, 'the seller ranking after the updates');
is($node->safe_psql('shop', q{
SELECT item_label FROM kappa.ranking_results WHERE ranking = 'top_salesman_by_country' AND item = 'S-1'}),
	$ana, "sale 1's seller keeps the real name as its label, filled in from the row remembered");
is($node->safe_psql('shop', q{
SELECT count(*) FROM kappa.ranking_results
 WHERE $$} . MARKER . q{$$ IN (item, item_label) OR $$} . MARKER . q{$$ = ANY (group_values)}),
	'0', 'the marker is in no result');
is($node->safe_psql('shop', q{
SELECT (sale->>'seller_name') = $$} . $ana . q{$$ AND sale->>'city' = 'Sevilla' AND sale->>'amount' = '25.00'
  FROM kappa.sales_enriched WHERE sale_id = '1'}),
	't', 'kappa.sales_enriched shows sale 1 with its real name and its new city and amount');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.dead_letters}), '0',
	'no dead letter: no ranking of the topic needed a value that was missing');

# Hand-made envelopes.  With row memory: an update fills the city in from
# the row remembered; a create, and an update of a sale never seen, have no
# earlier version and are dead letters.  Without row memory: from "before".
my $lsn = 0x1000;
sub hand
{
	my ($op, $id, $city, $amount, %opt) = @_;
	$lsn += 0x100;
	my $row = sub {
		my ($c, $a) = @_;
		return sprintf('{"sale_id":"%d","store_id":"ST-1","seller_id":"S-9","seller_name":"Seller","city":"%s","country":"ES","amount":"%s","currency":"EUR","sold_at":"2026-11-21T10:00:00Z"}', $id, $c, $a);
	};
	my $before = $opt{before_raw} // ($opt{before} ? $row->(@{ $opt{before} }) : 'null');
	return [ $id, sprintf('{"op":"%s","before":%s,"after":%s,"source":{"connector":"postgres","lsn":"0/%X","seq":0},"ts_ms":1}',
		$op, $before, $row->($city, $amount), $lsn) ];
}
kcat_produce($broker, 'sales-hand', [
	hand('c', 10, 'Bilbao', '3.00'),
	hand('u', 10, MARKER, '4.00'),
	hand('c', 11, MARKER, '1.00'),
	hand('u', 12, MARKER, '1.00'),
	hand('c', 13, 'Vigo', '2.00'),
	# a "before" with the key only (nulls for the rest): the row remembered fills in
	hand('c', 14, 'Leon', '2.00'),
	hand('u', 14, MARKER, '5.00', before_raw => '{"sale_id":"14","store_id":null,"seller_id":null,"seller_name":null,"city":null,"country":null,"amount":null,"currency":null,"sold_at":null}') ]);
kcat_produce($broker, 'sales-full', [
	hand('c', 20, 'Gijon', '2.00'),
	hand('u', 20, MARKER, '6.00', before => [ 'Gijon', '2.00' ]),
	hand('c', 21, MARKER, '1.00') ]);
wait_until(sub { results('hand_city') eq 'Bilbao=4.00/1,Leon=5.00/1,Vigo=2.00/1' }, 'the hand-made ranking');
is(results('hand_city'), 'Bilbao=4.00/1,Leon=5.00/1,Vigo=2.00/1',
	'with row memory: the update is counted in the city remembered, the events with nothing to fill from are not');
wait_until(sub { results('full_city') eq 'Gijon=6.00/1' }, 'the ranking without row memory');
is(results('full_city'), 'Gijon=6.00/1', 'without row memory: the update is counted in the city of "before"');
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.dead_letters}) eq '3' },
	'three dead letters');
my $reason = 'field "city" holds "' . MARKER
  . '", an unchanged TOASTed value that the change does not carry, and no earlier version of the row has it';
is($node->safe_psql('shop', q{
SELECT string_agg(topic || ':' || "offset" || ':' || error, E'\n' ORDER BY topic, "offset") FROM kappa.dead_letters}),
	join("\n", "sales-full:2:ranking \"full_city\": $reason",
		"sales-hand:2:ranking \"hand_city\": $reason",
		"sales-hand:3:ranking \"hand_city\": $reason"),
	'the events with nothing to fill the city from are dead letters, with the reason');
is($node->safe_psql('shop', q{
SELECT (SELECT row_data::jsonb->>'city' FROM kappa.stream_rows WHERE topic = 'sales-hand' AND key = '10')
    || ',' || (SELECT count(*) FROM kappa.stream_rows WHERE topic = 'sales-hand' AND key IN ('11', '12'))}),
	'Bilbao,0', 'the row remembered for sale 10 holds the filled-in city; nothing is remembered of the dead letters');

# The repair docs/rankings.md gives for sales counted under the marker
# before 0.1.5: writing the value anew makes the change carry it.
$node->safe_psql('shop', q{UPDATE sales SET seller_name = seller_name || '' WHERE sale_id = 1});
wait_published($node);
my @again = map { decode_json($_->{value}) } @{ kcat_consume($broker, 'sales-events') };
is($again[-1]{op} . ':' . $again[-1]{after}{sale_id} . ':' . ($again[-1]{after}{seller_name} eq $ana ? 'the name' : $again[-1]{after}{seller_name}),
	'u:1:the name', 'an update that writes the TOASTed value anew publishes it in full');

done_testing();
