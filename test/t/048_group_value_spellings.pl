# Group values, items and labels as JSON can spell them: escapes (\", \\,
# \/, \u0072, a surrogate pair), the same text escaped and not, numbers and
# booleans, text that looks like an array literal.  Each must be counted
# under its text, one group for one text however it was spelled, in the
# rankings with row memory (sales-events) and without (sales-nomem), and
# the results must hold exactly that text.
use strict;
use warnings;
use utf8;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:1', 'sales-nomem:1', 'payment-confirmations:1' ]);
my $node = kappa_node('spellings', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = '3650d'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
});
$node->safe_psql('shop', q{
SELECT kappa.create_ranking('nm_city', ARRAY['city'], '1 day', calendar => true,
                            source_topic => 'sales-nomem', row_memory => false);
SELECT kappa.create_ranking('nm_seller', ARRAY['country'], '30 days', item => 'seller_id',
                            item_label => 'seller_name', source_topic => 'sales-nomem',
                            row_memory => false);
});

# [city, seller_id, seller_name, country] as JSON values, one sale each of 1.00
my @sales = (
	[ '"Madrid"',             '"S-1"',        '"Ana"',                 '"ES"' ],
	[ '"Mad\u0072id"',        '"S-\u0031"',   '"Ana"',                 '"E\u0053"' ],
	[ '"M\u00e1laga"',        '7',            '"Luis \"Lu\" P\u00e9rez"', '"ES"' ],
	[ qq("M\xc3\xa1laga"),    '"7"',          '"Luis \"Lu\" P\u00e9rez"', '"ES"' ],
	[ '"Say \"hi\""',         '"a\\\\b"',     '"x\/y"',                '"PT"' ],
	[ '"back\\\\slash"',      '"a\\\\b"',     '"x/y"',                 '"PT"' ],
	[ '"{a,b}"',              '"{c}"',        'null',                  '"FR"' ],
	[ '28001',                '-1.5',         'true',                  '"FR"' ],
	[ '"28001"',              '"-1.5"',       '"true"',                '"FR"' ],
	[ 'true',                 '"\ud83d\ude00"', '"smile"',             '"IT"' ],
	[ '"\ud83d\ude00 Bar"',   qq("\xf0\x9f\x98\x80"), '"smile"',       '"IT"' ],
);

my (@events, @nomem);
my $id = 0;
for my $s (@sales)
{
	$id++;
	my ($city, $seller, $name, $country) = @$s;
	my $after = qq({"sale_id":"$id","store_id":"ST-1","seller_id":$seller,"seller_name":$name,)
	  . qq("city":$city,"country":$country,"amount":"1.00","currency":"EUR","sold_at":"2026-11-20T10:00:00Z"});
	push @events, [ $id, qq({"op":"c","before":null,"after":$after,"source":{"connector":"test"},"ts_ms":1}) ];
	push @nomem, [ $id, qq({"op":"c","before":null,"after":$after,"source":{"connector":"postgres","lsn":"0/$id","seq":0},"ts_ms":1}) ];
}
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.stream_offsets}) eq '3' },
	'the worker assigned its partitions');
kcat_produce($broker, 'sales-events', \@events);
kcat_produce($broker, 'sales-nomem', \@nomem);
wait_until(sub { $node->safe_psql('shop', q{
SELECT sum(sale_count) FROM kappa.ranking_results WHERE ranking IN ('nm_city', 'top_sales_by_city')}) eq '22' },
	'every sale counted in both city rankings');

# (the expectation, group by group: text as PostgreSQL holds it)
my %city = ('Madrid' => 2, 'Málaga' => 2, 'Say "hi"' => 1, 'back\\slash' => 1,
	'{a,b}' => 1, '28001' => 2, 'true' => 1, "\x{1F600} Bar" => 1);
my @sellers = (
	# country, item, label (the last seen), count
	[ 'ES', 'S-1', 'Ana', 2 ],
	[ 'ES', '7', 'Luis "Lu" Pérez', 2 ],
	[ 'PT', 'a\\b', 'x/y', 2 ],
	[ 'FR', '{c}', '', 1 ],    # (its label is null)
	[ 'FR', '-1.5', 'true', 2 ],
	[ 'IT', "\x{1F600}", 'smile', 2 ],
);

# rows of a query, as characters, in Perl's order
sub rows_of
{
	my ($sql) = @_;
	my $out = $node->safe_psql('shop', $sql);
	utf8::decode($out);
	return join("\n", sort split /\n/, $out);
}

for my $pair ([ 'top_sales_by_city', 'top_salesman_by_country' ], [ 'nm_city', 'nm_seller' ])
{
	my ($c, $s) = @$pair;
	is(rows_of(qq{
SELECT group_values[1] || '|' || array_length(group_values, 1) || '|' || total || '|' || sale_count
  FROM kappa.ranking_results WHERE ranking = '$c' AND item = ''}),
		join("\n", sort map { "$_|1|$city{$_}.00|$city{$_}" } keys %city),
		"$c: one group per text, each holding the text");
	is(rows_of(qq{
SELECT group_values[1] || '|' || item || '|' || coalesce(item_label, '') || '|' || total || '|' || sale_count
  FROM kappa.ranking_results WHERE ranking = '$s'}),
		join("\n", sort map { join('|', @$_[0 .. 2], "$_->[3].00", $_->[3]) } @sellers),
		"$s: one item per text, labels unescaped");
}
is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters'), '0', 'no dead letters');

done_testing();
