# The CSV inbox: the shop's fixtures give exactly what test/fixtures/README.md
# says; headers in any order, BOM, quotes and line breaks; values byte for
# byte what the CDC publisher writes for the same rows; the same file twice;
# unreadable files; files still being written; paths outside the inbox; a
# crash in the middle of a big file.  Expectations are written here, the
# topic is read back with kcat and SHA-256 is computed with Digest::SHA.
use strict;
use warnings;

use Digest::SHA qw(sha256_hex);
use File::Copy qw(copy);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $fixtures = ($ENV{TESTDIR} || '.') . '/test/fixtures';
my $broker = start_dev_broker(topics => [ 'sales-events:8', 'cdc-check:1' ]);
my $inbox = PostgreSQL::Test::Utils::tempdir();
my $outside = PostgreSQL::Test::Utils::tempdir();
my $node = kappa_node('csv', $broker, conf => qq{
kappa.csv_inbox = '$inbox'
kappa.csv_poll_interval = 100
kappa.csv_stable_ms = 300
});

sub slurp
{
	my ($path) = @_;
	open my $fh, '<:raw', $path or die "$path: $!";
	local $/;
	return scalar <$fh>;
}

# Write a file the way well-behaved writers do: a dot-file renamed into place.
sub drop_file
{
	my ($name, $content) = @_;
	open my $fh, '>:raw', "$inbox/.$name.tmp" or die $!;
	print $fh $content;
	close $fh;
	rename("$inbox/.$name.tmp", "$inbox/$name") or die $!;
	return sha256_hex($content);
}

# Wait until the worker is done with the $n-th appearance of $name.
sub wait_taken
{
	my ($name, $n) = @_;
	$n ||= 1;
	wait_until(
		sub {
			!-e "$inbox/$name"
			  && $node->safe_psql('shop',
				"SELECT count(*) FROM kappa.csv_files WHERE name = '$name' AND state <> 'processing'"
			  ) >= $n;
		},
		"the worker to take $name");
	return;
}

# The csv envelopes of the topic: [{ key, value, after, file, line, sha256, content }].
sub csv_events
{
	my @events;
	for my $m (@{ kcat_consume($broker, 'sales-events') })
	{
		next unless $m->{value} =~ /"connector":"csv"/;
		my %e = (key => $m->{key}, value => $m->{value}, partition => $m->{partition});
		($e{after}) = $m->{value} =~ /"after":(\{.*?\}),"source"/;
		($e{file}, $e{line}, $e{sha256}) =
		  $m->{value} =~ /"source":\{"connector":"csv","file":"([^"]*)","line":(\d+),"sha256":"([0-9a-f]{64})"\}/;
		($e{content} = $m->{value}) =~ s/,"ts_ms":\d+\}$/}/;
		push @events, \%e;
	}
	return \@events;
}

sub after_json
{
	my ($id, $store, $seller, $name, $city, $country, $amount, $currency, $sold_at) = @_;
	return qq({"sale_id":"$id","store_id":"$store","seller_id":"$seller","seller_name":"$name",)
	  . qq("city":"$city","country":"$country","amount":"$amount","currency":"$currency","sold_at":"$sold_at"});
}

sub stat_sources
{
	return $node->safe_psql('shop',
		"SELECT files_seen, rows_ingested, rows_rejected FROM kappa.stat_sources WHERE source = 'csv'");
}

# ---- 1. the good fixture: exactly 4 events -------------------------------
my $good = 'sales_20261121101500.csv';
my $good_bytes = slurp("$fixtures/$good");
my $good_sha = sha256_hex($good_bytes);
copy("$fixtures/$good", "$inbox/$good") or die $!;    # written in place: the stable rule applies
wait_taken($good);

my %expected_after = (
	2001 => after_json(2001, 'MAD-01', 'S-17', 'Ana Ruiz', 'Madrid', 'ES', '129.90', 'EUR', '2026-11-21T10:14:58.000000Z'),
	2002 => after_json(2002, 'BCN-02', 'S-22', 'Puig, Jordi', 'Barcelona', 'ES', '15.00', 'EUR', '2026-11-21T10:14:59.500000Z'),
	2003 => after_json(2003, 'LIS-01', 'S-31', "Jo\xc3\xa3o S\xc3\xa1", 'Lisboa', 'PT', '249.00', 'EUR', '2026-11-21T10:15:00.000000Z'),
	2004 => after_json(2004, 'MAD-01', 'S-17', 'Ana Ruiz', 'Madrid', 'ES', '9.99', 'EUR', '2026-11-21T10:15:01.000000Z'),
);
my %expected_line = (2001 => 2, 2002 => 3, 2003 => 4, 2004 => 5);

my $events = csv_events();
is(scalar(@$events), 4, 'good fixture: exactly 4 events');
for my $e (@$events)
{
	my $id = $e->{key};
	like($e->{value},
		qr/^\{"op":"c","before":null,"after":\Q$expected_after{$id}\E,"source":\{"connector":"csv","file":"$good","line":$expected_line{$id},"sha256":"$good_sha"\},"ts_ms":\d{13}\}$/,
		"good fixture: sale $id is exactly the expected envelope");
}
is_deeply([ sort map { $_->{key} } @$events ], [ 2001 .. 2004 ], 'good fixture: keyed by sale_id');
ok(-f "$inbox/processed/$good", 'good fixture: moved to processed/');
is($node->safe_psql('shop',
	"SELECT state, sha256, size, rows_ingested, rows_rejected, attempts, moved_to FROM kappa.csv_files WHERE name = '$good'"),
	"processed|$good_sha|" . length($good_bytes) . "|4|0|1|processed/$good",
	'good fixture: ledger row');
is(stat_sources(), '1|4|0', 'good fixture: kappa.stat_sources counts');

# ---- 2. the bad fixture: 1 event, 4 dead letters --------------------------
my $bad = 'sales_20261121102000_bad.csv';
my $bad_bytes = slurp("$fixtures/$bad");
my $bad_sha = drop_file($bad, $bad_bytes);
wait_taken($bad);

my @bad_events = grep { $_->{file} eq $bad } @{ csv_events() };
is(scalar(@bad_events), 1, 'bad fixture: exactly 1 event');
is($bad_events[0]{key}, '3001', 'bad fixture: the event is sale 3001');
is($bad_events[0]{after},
	after_json(3001, 'MAD-02', 'S-40', 'Line\r\nBreak', 'Madrid', 'ES', '1.00', 'EUR', '2026-11-21T10:20:00.000000Z'),
	'bad fixture: 3001 keeps its quoted CRLF');
is($bad_events[0]{line}, 2, 'bad fixture: 3001 starts on line 2');
is($bad_events[0]{sha256}, $bad_sha, 'bad fixture: sha256');

my @raw = split /\n/, $bad_bytes;    # lines still end in \r
my @dead = split /\n/, $node->safe_psql('shop',
	"SELECT line, encode(raw, 'hex'), error FROM kappa.dead_letters WHERE source = 'csv' AND file = '$bad' ORDER BY line");
is(scalar(@dead), 4, 'bad fixture: 4 dead letters');
my @expected_dead = (
	[ 4, $raw[3] =~ s/\r$//r, qr/^invalid input syntax for type numeric: "abc" \(column "amount"\)$/ ],
	[ 5, $raw[4] =~ s/\r$//r, qr/^missing data for column "country": the row has 5 fields, the header 9$/ ],
	[ 6, $raw[5] =~ s/\r$//r, qr/^invalid input syntax for type timestamp with time zone: "yesterday-ish" \(column "sold_at"\)$/ ],
	[ 7, "$raw[6]\n", qr/^unterminated quoted field at the end of the file$/ ],
);
for my $i (0 .. 3)
{
	my ($line, $hex, $error) = split /\|/, $dead[$i] // '', 3;
	my ($want_line, $want_raw, $want_error) = @{ $expected_dead[$i] };
	is($line, $want_line, "bad fixture: dead letter on line $want_line");
	is($hex, unpack('H*', $want_raw), "bad fixture: line $want_line keeps the raw record");
	like($error, $want_error, "bad fixture: line $want_line has its reason");
}
ok(-f "$inbox/processed/$bad", 'bad fixture: moved to processed/ (not retried)');
is($node->safe_psql('shop',
	"SELECT state, rows_ingested, rows_rejected FROM kappa.csv_files WHERE name = '$bad'"),
	'processed|1|4', 'bad fixture: ledger row');
is(stat_sources(), '2|5|4', 'bad fixture: kappa.stat_sources counts');

# ---- 3. RFC 4180 and the header: BOM, any order, case, extra columns, no
# currency column, doubled quotes, LF inside quotes, mixed line ends, no
# final line end; types with the table's typmods ----------------------------
my $edge = 'sales_20261121103000_edge.csv';
my $edge_bytes = "\xEF\xBB\xBF Note , SOLD_AT,amount,Sale_ID,city,country,seller_name,seller_id,store_id\r\n"
  . qq{"has ""quotes""",2026-11-21T11:00:00.123456+01:00,12.345,5001,Porto,PT,"Ana ""Ani"" Lopes",S-1,POR-01\r\n}
  . qq{x,2026-11-21 11:00:01,1e3,5002,"Multi\nLine City",E,Bob,S-2,POR-01\n}
  . qq{y,2026-11-21T11:00:02Z,12345678901.00,5003,Porto,PT,Bob,S-2,POR-01\r\n}
  . qq{z,2026-11-21T11:00:03Z,1.00,5004,Porto,ESP,Bob,S-2,POR-01\r\n}
  . qq{w,now,1.00,5005,Porto,PT,Bob,S-2,POR-01\r\n}
  . qq{v,2026-11-21T11:00:05Z,1.00,5006,Porto,PT,,S-2,POR-01\r\n}
  . qq{u,2026-11-21T11:00:06Z,1.00,5007,Porto,PT,"",S-2,POR-01};
my $edge_sha = drop_file($edge, $edge_bytes);
wait_taken($edge);

my %edge_after = (
	5001 => [ 2, after_json(5001, 'POR-01', 'S-1', 'Ana \"Ani\" Lopes', 'Porto', 'PT', '12.35', 'EUR', '2026-11-21T10:00:00.123456Z') ],
	5002 => [ 3, after_json(5002, 'POR-01', 'S-2', 'Bob', 'Multi\nLine City', 'E ', '1000.00', 'EUR', '2026-11-21T11:00:01.000000Z') ],
	5007 => [ 9, after_json(5007, 'POR-01', 'S-2', '', 'Porto', 'PT', '1.00', 'EUR', '2026-11-21T11:00:06.000000Z') ],
);
my @edge_events = grep { $_->{file} eq $edge } @{ csv_events() };
is_deeply([ sort map { $_->{key} } @edge_events ], [ 5001, 5002, 5007 ], 'edge file: the three valid rows are sent');
for my $e (@edge_events)
{
	is($e->{after}, $edge_after{ $e->{key} }[1], "edge file: sale $e->{key} values");
	is($e->{line}, $edge_after{ $e->{key} }[0], "edge file: sale $e->{key} line");
	is($e->{sha256}, $edge_sha, "edge file: sale $e->{key} sha256");
}
is($node->safe_psql('shop',
	"SELECT string_agg(line || ': ' || error, E'\\n' ORDER BY line) FROM kappa.dead_letters WHERE file = '$edge'"),
	join("\n",
		'5: numeric field overflow (column "amount")',
		'6: value too long for type character(2) (column "country")',
		'7: relative time "now" is not accepted (column "sold_at"): a file must give the same events whenever it is read',
		'8: null value in column "seller_name" violates not-null constraint'),
	'edge file: refused rows and their reasons');

# An unclosed quote followed by more than 1 MB: the record is refused from
# its first line and reading resumes on the next line (bounded memory).
my $long = 'sales_20261121103500_longquote.csv';
my $long_first = '40001,ST,S,"Open quote,City,ES,1.00,EUR,2026-11-21T10:35:00Z';
my $long_bytes = "sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at\n$long_first\n";
$long_bytes .= "$_,ST-1,S-1,Seller,City,ES,1.00,EUR,2026-11-21T10:35:00Z\n" for 40002 .. 65001;
cmp_ok(length($long_bytes), '>', 1024 * 1024 + 100_000, 'long quote file: more than 1 MB after the quote');
drop_file($long, $long_bytes);
wait_taken($long);
is($node->safe_psql('shop',
	"SELECT line, raw = convert_to('$long_first', 'UTF8'), error FROM kappa.dead_letters WHERE file = '$long'"),
	'2|t|record longer than 1 MB (an unclosed quote?): its first line is refused and reading resumes on the next line',
	'long quote file: the record is refused from its first line');
my @long_events = grep { $_->{file} eq $long } @{ csv_events() };
is(scalar(@long_events), 25_000, 'long quote file: every following row is sent');
is(scalar(grep { $_->{line} != $_->{key} - 39999 } @long_events), 0, 'long quote file: with its own line number');
is($node->safe_psql('shop', "SELECT rows_ingested, rows_rejected FROM kappa.csv_files WHERE name = '$long'"),
	'25000|1', 'long quote file: ledger counts');

# A record of 1.5 MB whose quotes close, right after the header: refused
# for its size too.  Before, a record of 1 to 2 MB was read or refused
# depending on where in the file it started.
my $wide = 'sales_20261121103600_wide.csv';
my $wide_first = '40101,ST,S,"' . ('w' x 1_500_000) . '",City,ES,1.00,EUR,2026-11-21T10:36:00Z';
drop_file($wide, "sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at\n$wide_first\n"
	. "40102,ST-1,S-1,Seller,City,ES,1.00,EUR,2026-11-21T10:36:00Z\n");
wait_taken($wide);
is($node->safe_psql('shop',
	"SELECT line || '|' || octet_length(raw) || '|' || error FROM kappa.dead_letters WHERE file = '$wide'"),
	'2|' . length($wide_first) . '|record longer than 1 MB (an unclosed quote?): its first line is refused and reading resumes on the next line',
	'wide record: refused for its size, wherever it starts');
is($node->safe_psql('shop', "SELECT rows_ingested, rows_rejected FROM kappa.csv_files WHERE name = '$wide'"),
	'1|1', 'wide record: the row after it is sent');

# ---- 4. byte for byte what the CDC publisher writes for the same rows ----
$node->safe_psql('shop', sales_table_sql());
$node->safe_psql('shop', "SELECT kappa.publish_table('sales', 'cdc-check')");
$node->safe_psql('shop', q{
SET TimeZone = 'UTC';
INSERT INTO sales VALUES
 (2001, 'MAD-01', 'S-17', 'Ana Ruiz', 'Madrid', 'ES', '129.90', 'EUR', '2026-11-21T10:14:58Z'),
 (2002, 'BCN-02', 'S-22', 'Puig, Jordi', 'Barcelona', 'ES', '15.00', 'EUR', '2026-11-21T10:14:59.500Z'),
 (2003, 'LIS-01', 'S-31', 'João Sá', 'Lisboa', 'PT', '249.00', 'EUR', '2026-11-21T10:15:00+00:00'),
 (2004, 'MAD-01', 'S-17', 'Ana Ruiz', 'Madrid', 'ES', '9.99', 'EUR', '2026-11-21 10:15:01+00'),
 (3001, 'MAD-02', 'S-40', E'Line\r\nBreak', 'Madrid', 'ES', '1.00', 'EUR', '2026-11-21T10:20:00Z'),
 (5001, 'POR-01', 'S-1', 'Ana "Ani" Lopes', 'Porto', 'PT', '12.345', DEFAULT, '2026-11-21T11:00:00.123456+01:00'),
 (5002, 'POR-01', 'S-2', 'Bob', E'Multi\nLine City', 'E', '1e3', DEFAULT, '2026-11-21 11:00:01'),
 (5007, 'POR-01', 'S-2', '', 'Porto', 'PT', '1.00', DEFAULT, '2026-11-21T11:00:06Z');
});
wait_published($node);
my %cdc_after;
for my $m (@{ kcat_consume($broker, 'cdc-check') })
{
	my ($after) = $m->{value} =~ /"after":(\{.*?\}),"source"/;
	$cdc_after{ $m->{key} } = $after;
}
my %csv_after = map { $_->{key} => $_->{after} } @{ csv_events() };
is(scalar(keys %cdc_after), 8, 'CDC published the 8 rows');
for my $id (sort keys %cdc_after)
{
	is($csv_after{$id}, $cdc_after{$id}, "sale $id: CSV and CDC envelopes have the same \"after\"");
}

# ---- 5. the same file twice ----------------------------------------------
drop_file($good, $good_bytes);    # same name, same content
wait_taken($good, 2);
drop_file('sales_20261121101500_copy.csv', $good_bytes);    # another name
wait_taken('sales_20261121101500_copy.csv');
my $first_id = $node->safe_psql('shop', "SELECT id FROM kappa.csv_files WHERE name = '$good' AND state = 'processed'");
is($node->safe_psql('shop',
	"SELECT name, state, duplicate_of = $first_id, rows_ingested, moved_to FROM kappa.csv_files WHERE sha256 = '$good_sha' ORDER BY id"),
	join("\n",
		"$good|processed||4|processed/$good",
		"$good|duplicate|t|0|processed/$good.1",
		"sales_20261121101500_copy.csv|duplicate|t|0|processed/sales_20261121101500_copy.csv"),
	'same content again: recorded as duplicates of the first');
ok(-f "$inbox/processed/$good.1", 'same name again: moved beside the first, not over it');
is(scalar(grep { $_->{sha256} eq $good_sha } @{ csv_events() }), 4, 'same content again: still exactly 4 events');
is(stat_sources(), '7|25009|10', 'duplicates: counted as files, no rows');

# A name of 255 bytes, the most a file system takes, dropped twice: the
# second copy's destination "<name>.1" is too long, and the worker used to
# fail that move at every restart, holding up every file after it.  It is
# now cut before the suffix.
my $maxname = 'sales_' . ('x' x 245) . '.csv';
my $maxname_bytes = "sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at\n"
	. "5501,MAD-01,S-17,Ana,Madrid,ES,1.00,EUR,2026-11-21T10:20:00Z\n";
for my $n (1, 2)
{
	open my $lf, '>:raw', "$inbox/.long.tmp" or die $!;
	print $lf $maxname_bytes;
	close $lf;
	rename("$inbox/.long.tmp", "$inbox/$maxname") or die $!;
	wait_taken($maxname, $n);
}
my $maxname_1 = substr($maxname, 0, 253) . '.1';
is($node->safe_psql('shop', "SELECT state || ' ' || moved_to FROM kappa.csv_files WHERE name = '$maxname' ORDER BY id"),
	"processed processed/$maxname\nduplicate processed/$maxname_1", 'a 255-byte name twice: the second copy cut to fit');
ok(-f "$inbox/processed/$maxname" && -f "$inbox/processed/$maxname_1", 'both copies are in processed/');
is(stat_sources(), '9|25010|10', 'counted once, as two files');

# ---- 6. files that cannot be read go to failed/ with a reason ------------
my $latin1 = 'sales_20261121104000_latin1.csv';
drop_file($latin1, "sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at\n"
	. "6001,LIS-01,S-31,Jo\xe3o,Lisboa,PT,1.00,EUR,2026-11-21T10:40:00Z\n");
my $nocols = 'sales_20261121104100_nocols.csv';
drop_file($nocols, "sale_id,store_id,seller_id,seller_name,city,country,currency\n6101,A,B,C,D,ES,EUR\n");
wait_taken($latin1);
wait_taken($nocols);
ok(-f "$inbox/failed/$latin1", 'not UTF-8: moved to failed/');
is(slurp("$inbox/failed/$latin1.reason"), "the file is not UTF-8: invalid byte sequence on line 2\n",
	'not UTF-8: the reason file says where');
is(slurp("$inbox/failed/$nocols.reason"),
	"the header (line 1) lacks the required column(s) amount, sold_at\n",
	'missing columns: the reason file names them');
is($node->safe_psql('shop',
	"SELECT name, state, error FROM kappa.csv_files WHERE state = 'failed' ORDER BY id"),
	"$latin1|failed|the file is not UTF-8: invalid byte sequence on line 2\n"
	  . "$nocols|failed|the header (line 1) lacks the required column(s) amount, sold_at",
	'unreadable files: failed in the ledger');
is($node->safe_psql('shop', "SELECT last_error FROM kappa.stat_sources WHERE source = 'csv'"),
	"$nocols: the header (line 1) lacks the required column(s) amount, sold_at",
	'unreadable files: last_error in kappa.stat_sources');
ok(!grep({ $_->{key} eq '6001' || $_->{key} eq '6101' } @{ csv_events() }), 'unreadable files: no events');
# A failed file moved back into the inbox by hand is read again, not taken
# for a move a crash interrupted (which would put it back into failed/
# without a look).
rename("$inbox/failed/$nocols", "$inbox/$nocols") or die $!;
wait_taken($nocols, 2);
is($node->safe_psql('shop', "SELECT count(*) || ' ' || bool_and(moved_at IS NOT NULL) FROM kappa.csv_files WHERE name = '$nocols' AND state = 'failed'"),
	'2 true', 'a failed file put back: read again, a second failed row, both moves recorded');
# The same after a crash between a move and the commit recording it (played
# here by forgetting that the first file's move was recorded, then a restart
# of the worker): the worker finds the move done before it looks at the
# inbox, so the file put back later is read again too.
$node->safe_psql('shop', "UPDATE kappa.csv_files SET moved_at = NULL WHERE name = '$latin1'");
my $csv_pid = $node->safe_psql('shop', "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_kappa csv inbox'");
my $log_at = -s $node->logfile;
$node->safe_psql('shop', "SELECT pg_terminate_backend($csv_pid)");
wait_until(sub { substr(slurp_file($node->logfile), $log_at) =~ /LOG:  pg_kappa csv inbox: 1 file moves interrupted by a restart were found done/ },
	'the restarted worker to find the move done');
is($node->safe_psql('shop', "SELECT moved_at IS NOT NULL FROM kappa.csv_files WHERE name = '$latin1'"), 't',
	'the move is recorded as done');
rename("$inbox/failed/$latin1", "$inbox/$latin1") or die $!;
wait_taken($latin1, 2);
is($node->safe_psql('shop', "SELECT count(*) || ' ' || bool_and(moved_at IS NOT NULL) FROM kappa.csv_files WHERE name = '$latin1' AND state = 'failed'"),
	'2 true', 'put back after that restart: read again, a second failed row');
ok(-f "$inbox/failed/$latin1" && -f "$inbox/failed/$latin1.reason", 'and back in failed/ with its reason');

# ---- 7. a file still being written is left alone ------------------------
# Its modification time is in the future, as for a file written to right
# now: it is not taken, while a file dropped after it is.
my $partial = 'sales_20261121105000_partial.csv';
my $partial_bytes = "sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at\n"
  . "7001,MAD-01,S-17,Ana Ruiz,Madrid,ES,1.00,EUR,2026-11-21T10:50:00Z\n";
open my $pfh, '>:raw', "$inbox/$partial" or die $!;
print $pfh substr($partial_bytes, 0, 90);
close $pfh;
utime(time(), time() + 3600, "$inbox/$partial");
drop_file('sales_20261121105100_next.csv', $partial_bytes =~ s/7001/7101/r);
wait_taken('sales_20261121105100_next.csv');
ok(-f "$inbox/$partial", 'file being written: still in the inbox');
is($node->safe_psql('shop', "SELECT count(*) FROM kappa.csv_files WHERE name = '$partial'"), '0',
	'file being written: not taken');
open $pfh, '>:raw', "$inbox/$partial" or die $!;
print $pfh $partial_bytes;
close $pfh;
wait_taken($partial);
is($node->safe_psql('shop', "SELECT state, rows_ingested FROM kappa.csv_files WHERE name = '$partial'"),
	'processed|1', 'file being written: taken once complete');

# ---- 8. nothing outside the inbox is read through it --------------------
my $secret = "sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at\n"
  . "9001,X,X,Secret,X,ES,1.00,EUR,2026-11-21T10:00:00Z\n";
open my $sfh, '>:raw', "$outside/sales_secret.csv" or die $!;
print $sfh $secret;
close $sfh;
symlink("$outside/sales_secret.csv", "$inbox/sales_20261121106000_link.csv") or die $!;
mkdir("$inbox/sales_20261121106100_dir.csv") or die $!;
copy("$outside/sales_secret.csv", "$inbox/sales_20261121106100_dir.csv/sales_inner.csv") or die $!;
link("$outside/sales_secret.csv", "$inbox/sales_20261121106200_hardlink.csv") or die $!;
# a name in Latin-1 ("\xe4"): not valid UTF-8, so neither text for the ledger nor JSON
my $latin1_name = "sales_20261121106300_\xe4.csv";
copy("$outside/sales_secret.csv", "$inbox/$latin1_name") or die $!;
drop_file('sales_20261121106900_sentinel.csv', $partial_bytes =~ s/7001/7901/r);
wait_taken('sales_20261121106900_sentinel.csv');
ok(-l "$inbox/sales_20261121106000_link.csv", 'symbolic link: left in the inbox');
ok(-d "$inbox/sales_20261121106100_dir.csv", 'directory: left alone');
ok(-f "$inbox/sales_20261121106200_hardlink.csv", 'hard link: left in the inbox');
is(slurp("$outside/sales_secret.csv"), $secret, 'the file outside is untouched');
is($node->safe_psql('shop', "SELECT count(*) FROM kappa.csv_files WHERE name ~ '(link|dir|inner)'"), '0',
	'links and directories: not in the ledger');
ok(!grep({ $_->{key} eq '9001' } @{ csv_events() }), 'nothing of the file outside was sent');
my $log = slurp($node->logfile);
like($log, qr/ignoring "sales_20261121106000_link.csv": a symbolic link/, 'symbolic link: logged');
like($log, qr/ignoring "sales_20261121106100_dir.csv": a directory/, 'directory: logged');
like($log, qr/ignoring "sales_20261121106200_hardlink.csv": a file with more than one hard link/,
	'hard link: logged');
ok(-f "$inbox/$latin1_name", 'a name that is not UTF-8: left in the inbox');
is($node->safe_psql('shop', "SELECT count(*) FROM kappa.csv_files WHERE name LIKE 'sales_20261121106300%'"), '0',
	'... not in the ledger');
like($log, qr/ignoring a file whose name is not valid UTF-8\n.*DETAIL:  Rename it/, '... logged, without the name');

# processed/ writable by others (as when a store made it before the worker
# did): nothing is taken, the reason is shown; back to 0700, the file is taken.
chmod 0777, "$inbox/processed" or die $!;
drop_file('sales_20261121106950_waits.csv', $partial_bytes =~ s/7001/7951/r);
wait_until(sub { $node->safe_psql('shop', "SELECT last_error FROM kappa.stat_sources WHERE source = 'csv'")
	=~ /processed" is not a directory of the server's own/ }, 'the worker to refuse processed/');
ok(-e "$inbox/sales_20261121106950_waits.csv", 'processed/ writable by others: the file waits in the inbox');
chmod 0700, "$inbox/processed" or die $!;
wait_taken('sales_20261121106950_waits.csv');
pass('processed/ the server\'s own again: the file is taken');

# A file the server may not read (a store's umask): reported, and taken
# once its permissions are fixed, with no change to its content (0.1.5;
# before, a chmod went unnoticed until the worker restarted).
my $locked = 'sales_20261121106960_locked.csv';
open my $lfh, '>:raw', "$inbox/.$locked.tmp" or die $!;
print $lfh $partial_bytes =~ s/7001/7961/r;
close $lfh;
chmod 0000, "$inbox/.$locked.tmp" or die $!;
rename("$inbox/.$locked.tmp", "$inbox/$locked") or die $!;
wait_until(sub { $node->safe_psql('shop', "SELECT last_error FROM kappa.stat_sources WHERE source = 'csv'")
	=~ /could not open file "\Q$locked\E" of the inbox: Permission denied/ }, 'the worker to report the unreadable file');
sleep 1;
ok(-e "$inbox/$locked", 'the file stays in the inbox');
chmod 0640, "$inbox/$locked" or die $!;
wait_taken($locked);
is($node->safe_psql('shop', "SELECT state FROM kappa.csv_files WHERE name = '$locked'"), 'processed',
	'readable again: processed');

# A move by link and unlink (file systems without RENAME_NOREPLACE) cut
# short between the two: the file is in processed/ and, as a second link,
# in the inbox, where a file with two links is ignored.  At start-up the
# inbox name goes and the move is recorded (0.1.5; before, the name stayed
# in the inbox for ever).
$node->safe_psql('shop', "UPDATE kappa.csv_files SET moved_at = NULL WHERE name = '$locked'");
link("$inbox/processed/$locked", "$inbox/$locked") or die $!;
$node->restart;
wait_until(sub { !-e "$inbox/$locked" }, 'the second link to go from the inbox');
is($node->safe_psql('shop', "SELECT count(*) || '|' || bool_and(moved_at IS NOT NULL) FROM kappa.csv_files WHERE name = '$locked'"),
	'1|true', 'the move recorded, the file not read again');
ok(-e "$inbox/processed/$locked", 'and the file in processed/');

# A role without privileges neither sees nor sets the inbox path.
$node->safe_psql('shop', 'CREATE ROLE shopper LOGIN');
my ($ret, $out, $err) = $node->psql('shop', 'SHOW kappa.csv_inbox', extra_params => [ '-U', 'shopper' ]);
isnt($ret, 0, 'non-superuser: SHOW kappa.csv_inbox fails');
like($err, qr/must be superuser or have privileges of pg_read_all_settings to examine "kappa.csv_inbox"/,
	'non-superuser: SHOW says why');
($ret, $out, $err) = $node->psql('shop', "SELECT current_setting('kappa.csv_inbox')", extra_params => [ '-U', 'shopper' ]);
like($err, qr/must be superuser or have privileges of pg_read_all_settings to examine "kappa.csv_inbox"/,
	'non-superuser: current_setting() fails');
is($node->safe_psql('shop', "SELECT count(*) FROM pg_settings WHERE name = 'kappa.csv_inbox'",
	extra_params => [ '-U', 'shopper' ]), '0', 'non-superuser: not in pg_settings');
($ret, $out, $err) = $node->psql('shop', "ALTER SYSTEM SET kappa.csv_inbox = '/etc'", extra_params => [ '-U', 'shopper' ]);
like($err, qr/permission denied to set parameter "kappa.csv_inbox"|must be superuser to execute ALTER SYSTEM/,
	'non-superuser: ALTER SYSTEM fails');
($ret, $out, $err) = $node->psql('shop', 'SELECT count(*) FROM kappa.csv_files', extra_params => [ '-U', 'shopper' ]);
like($err, qr/permission denied for (schema kappa|table csv_files)/, 'non-superuser: the ledger is not readable');

# ---- 9. a crash in the middle of a big file --------------------------------
# A slow producer (few messages in flight, long linger) keeps the worker in
# the middle of the file long enough to kill the server there.  (With a
# consumer property too, pg_kappa's default for it: the options serve every
# client, and each takes only what concerns it; checked at the end.)
$node->safe_psql('shop', q{ALTER SYSTEM SET kappa.kafka_options =
  'queue.buffering.max.messages=200; batch.num.messages=100; linger.ms=50; fetch.wait.max.ms=100'});
$node->reload;
my $big = 'sales_20261121110000_big.csv';
my ($first, $n) = (100_001, 20_000);
my $big_bytes = "sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at\r\n";
my %big_expected;
for my $i ($first .. $first + $n - 1)
{
	my $amount = $i % 1000 == 0 ? 'bad' : sprintf('%d.%02d', $i % 500, $i % 100);
	my $sec = $i % 60;
	$big_bytes .= sprintf("%d,ST-%d,S-%d,\"Seller, %d\",City %d,ES,%s,EUR,2026-11-21T12:%02d:%02dZ\r\n",
		$i, $i % 50, $i % 200, $i % 200, $i % 37, $amount, int($i / 60) % 60, $sec);
	$big_expected{$i} = after_json($i, 'ST-' . ($i % 50), 'S-' . ($i % 200), 'Seller, ' . ($i % 200),
		'City ' . ($i % 37), 'ES', $amount, 'EUR', sprintf('2026-11-21T12:%02d:%02d.000000Z', int($i / 60) % 60, $sec))
	  unless $amount eq 'bad';
}
my $big_sha = drop_file($big, $big_bytes);
wait_until(
	sub {
		my $state = $node->safe_psql('shop', "SELECT state FROM kappa.stat_sources WHERE source = 'csv'");
		$state =~ /^reading \Q$big\E: line \d+, \d+ rows sent, (\d+) acknowledged/ && $1 >= 2000;
	},
	'the worker in the middle of the big file', 120);
is($node->safe_psql('shop', "SELECT state FROM kappa.csv_files WHERE name = '$big'"), 'processing',
	'crash: the big file is in the middle of processing');
crash_node($node);
$node->start;
wait_taken($big);

my @big_events = grep { $_->{file} eq $big } @{ csv_events() };
my (%by_line, %ids);
my ($mismatched, $wrong) = (0, 0);
for my $e (@big_events)
{
	$mismatched++ if exists $by_line{ $e->{line} } && $by_line{ $e->{line} } ne $e->{content};
	$by_line{ $e->{line} } = $e->{content};
	$ids{ $e->{key} } = 1;
	$wrong++ unless defined $big_expected{ $e->{key} } && $e->{after} eq $big_expected{ $e->{key} }
	  && $e->{sha256} eq $big_sha && $e->{line} == $e->{key} - $first + 2;
}
my $valid = scalar(keys %big_expected);
is(scalar(keys %ids), $valid, "crash: every valid row of the big file ($valid) is in the topic");
is($wrong, 0, 'crash: every event has its exact values, line and sha256');
is($mismatched, 0, 'crash: rows sent twice are identical replays (same file, line, sha256, content)');
cmp_ok(scalar(@big_events), '>', $valid, 'crash: some rows were sent twice (acknowledged before the crash)');
note 'crash: ' . (@big_events - $valid) . ' replayed rows';
is($node->safe_psql('shop',
	"SELECT state, rows_ingested, rows_rejected, attempts FROM kappa.csv_files WHERE name = '$big'"),
	"processed|$valid|20|2", 'crash: the file is processed exactly once in the ledger (second attempt)');
is($node->safe_psql('shop', "SELECT count(*), count(DISTINCT line) FROM kappa.dead_letters WHERE file = '$big'"),
	'20|20', 'crash: its dead letters are stored once');
ok(-f "$inbox/processed/$big", 'crash: the file is in processed/');

# kappa.kafka_options serves producers and consumers alike: each property
# went only to the clients it concerns (librdkafka logs a CONFWARN for a
# property of the other kind)
unlike(slurp_file($node->logfile), qr/CONFWARN/, 'no Kafka client was given a property it ignores');

$node->stop;
$broker->stop;
done_testing();
