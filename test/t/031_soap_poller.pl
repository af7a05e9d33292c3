# The SOAP payment poller against the test SOAP service: the shop's
# fixtures give exactly their three payment events (the +01:00 time in UTC,
# the negative refund, page 2 asked for with its token), the watermark is
# stored, an overlapping poll sends nothing twice, many pages arrive whole,
# bad confirmations become dead letters, and faults, HTTP errors and wrong
# credentials are errors in kappa.stat_sources with a growing backoff, the
# password never shown.  Expected messages are written out here, from the
# fixtures and the generator's rules, independently of the extension.
use strict;
use warnings;

use JSON::PP;
use POSIX qw(strftime);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use PgKappa::Test;
use PgKappa::Soap;

my $password = 's3cr3t-Kappa-Pw';
my $wrong_password = 'wr0ng-Kappa-Pw';

my $broker = start_dev_broker(topics => ['payment-confirmations:4']);
my $soap = start_soap_server(username => 'kappa', password => $password);
my $secrets = write_secrets(PostgreSQL::Test::Utils::tempdir() . '/kappa.secrets',
	"# pg_kappa secrets\nsoap.password = $password\n");

my $node = kappa_node('soap', $broker, conf => qq{
kappa.soap_username = 'kappa'
kappa.secrets_file = '$secrets'
kappa.soap_poll_interval = '1h'
kappa.soap_max_backoff = '4s'
kappa.soap_timeout = '5s'
});

wait_until(sub { soap_status($node)->{state} eq 'idle (kappa.soap_url is not set)' },
	'poller idle without kappa.soap_url');
my $pid = soap_status($node)->{pid};
ok($pid > 0, 'the poller runs');
is(soap_worker_pid($node), $pid, 'it shows in pg_stat_activity as "pg_kappa soap poller"');

sub payments
{
	my ($endpoint) = @_;
	my @m = grep { index($_->{value}, qq("endpoint":"$endpoint")) >= 0 }
	  @{ consume_all($broker, 'payment-confirmations') };
	return \@m;
}

# the message without its wall-clock ts_ms; ts_ms checked on its own
sub content
{
	my ($value) = @_;
	(my $c = $value) =~ s/,"ts_ms":(\d+)\}$/}/;
	return $c;
}

sub envelope
{
	my (%f) = @_;
	return sprintf(
		'{"op":"c","before":null,"after":{"payment_id":"%s","sale_id":"%s","status":"%s","amount":"%s","currency":"EUR","confirmed_at":"%s"},"source":{"connector":"soap","endpoint":"%s","page":"%s"}}',
		@f{qw(payment_id sale_id status amount confirmed_at endpoint page)});
}

sub state_of
{
	my ($url) = @_;
	return $node->safe_psql('shop', qq{
SELECT since AT TIME ZONE 'UTC', since_payment_ids, coalesce(page_token, '<null>'),
       last_success_at IS NOT NULL
  FROM kappa.soap_state WHERE endpoint = '$url'});
}

# ---- the fixtures -----------------------------------------------------------
my $url = $soap->url('fixtures');
$node->safe_psql('shop',
	"INSERT INTO kappa.soap_state (endpoint, since) VALUES ('$url', '2026-11-21T10:00:00Z')");
my $t0 = int(time() * 1000);
set_soap_conf($node, soap_url => $url);
wait_until(sub { state_of($url) =~ /^2026-11-21 11:02:00\|/ }, 'first poll of the fixtures');
my $t1 = int(time() * 1000) + 1;

my $msgs = payments($url);
is(scalar(@$msgs), 3, 'the fixtures give exactly 3 payment-confirmations messages');
my %by_payment = map { (decode_json($_->{value})->{after}{payment_id} => $_) } @$msgs;
my %expected = (
	'PAY-000001' => envelope(payment_id => 'PAY-000001', sale_id => '1001', status => 'CONFIRMED',
		amount => '129.90', confirmed_at => '2026-11-21T10:15:09.000000Z', endpoint => $url, page => ''),
	'PAY-000002' => envelope(payment_id => 'PAY-000002', sale_id => '1002', status => 'DECLINED',
		amount => '15.00', confirmed_at => '2026-11-21T09:16:41.250000Z', endpoint => $url, page => ''),
	'PAY-000003' => envelope(payment_id => 'PAY-000003', sale_id => '1003', status => 'REFUNDED',
		amount => '-49.99', confirmed_at => '2026-11-21T11:02:00.000000Z', endpoint => $url,
		page => 'page-2'));
for my $id (sort keys %expected)
{
	is(content($by_payment{$id}{value}), $expected{$id}, "$id: exact envelope");
	my ($sale) = $expected{$id} =~ /"sale_id":"(\d+)"/;
	is($by_payment{$id}{key}, $sale, "$id: keyed by sale_id");
	my ($ts) = $by_payment{$id}{value} =~ /"ts_ms":(\d+)\}$/;
	ok($ts >= $t0 && $ts <= $t1, "$id: ts_ms is the time it was produced");
}

my $reqs = $soap->requests('/fixtures');
is(scalar(@$reqs), 2, 'the service was called twice: one poll, two pages');
my %common = (
	soapaction => '"urn:electrored:payments:v1#GetPaymentConfirmations"',
	content_type => 'text/xml; charset=utf-8',
	username => 'kappa',
	password_ok => JSON::PP::true,
	must_understand => '1',
	password_type => 'http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText',
	since => '2026-11-21T10:00:00Z',
	page_size => 500,
	expect => undef,
	well_formed => JSON::PP::true);
for my $i (0, 1)
{
	my $r = $reqs->[$i];
	is_deeply({ map { ($_ => $r->{$_}) } keys %common }, \%common,
		"request $i: SOAPAction, content type, WS-Security UsernameToken, Since = stored watermark, PageSize");
}
is($reqs->[0]{page_token}, undef, 'the first request has no PageToken');
is_deeply($reqs->[0]{elements}, [qw(Since PageSize)], 'first request body: Since, PageSize');
is($reqs->[1]{page_token}, 'page-2', 'page 2 is asked for with PageToken page-2');
is_deeply($reqs->[1]{elements}, [qw(Since PageToken PageSize)], 'second request body: Since, PageToken, PageSize');

is(state_of($url), '2026-11-21 11:02:00|{PAY-000003}|<null>|t',
	'watermark = latest ConfirmedAt, its payment id kept, paging ended');
my $st = soap_status($node);
is(join(',', @$st{qw(pages ingested rejected errors)}), '2,3,0,0',
	'kappa.stat_sources: 2 pages, 3 rows ingested, none rejected, no error');

# ---- an overlapping poll: Since is inclusive, nothing is sent twice ---------
# (one poll only so far: the interval was an hour; from now on, a second)
set_soap_conf($node, soap_poll_interval => '1s');
wait_until(sub { scalar(@{ $soap->requests('/fixtures') }) >= 5 && soap_status($node)->{pages} >= 5 },
	'three more polls');
$reqs = $soap->requests('/fixtures');
is($reqs->[2]{since}, '2026-11-21T11:02:00Z', 'the next poll asks since the stored watermark');
is($reqs->[2]{page_token}, undef, '... from the first page');
$msgs = payments($url);
is(scalar(@$msgs), 3, 'the overlapping confirmation (PAY-000003) was not sent again');
my %ids = map { (decode_json($_->{value})->{after}{payment_id} => 1) } @$msgs;
is(scalar(keys %ids), scalar(@$msgs), 'no payment_id twice in the topic');

# ---- many pages: 1234 generated confirmations, 100 per page ----------------
my $n = 1234;
my $bench = $soap->url("bench/$n");
soap_switch($node, $bench, soap_page_size => 100);
my $base = 1795219200;    # 2026-11-21T00:00:00Z; confirmation i at + i s + (i % 1000) ms
wait_until(sub { state_of($bench) =~ /^2026-11-21 00:20:33\.233\|\{PAY-0001234\}\|<null>\|t$/ },
	"$n confirmations polled");
$msgs = payments($bench);
is(scalar(@$msgs), $n, "$n messages for $n confirmations over 13 pages");
my @statuses = qw(CONFIRMED DECLINED REFUNDED);
my %want;
for my $i (0 .. $n - 1)
{
	my $cents = ($i * 37) % 100000;
	my $status = $statuses[ $i % 3 ];
	$want{ sprintf('PAY-%07d', $i + 1) } = envelope(
		payment_id => sprintf('PAY-%07d', $i + 1),
		sale_id => 100001 + $i,
		status => $status,
		amount => sprintf('%s%d.%02d', $status eq 'REFUNDED' ? '-' : '', int($cents / 100), $cents % 100),
		confirmed_at => strftime('%Y-%m-%dT%H:%M:%S', gmtime($base + $i)) . sprintf('.%03d000Z', $i % 1000),
		endpoint => $bench,
		page => $i < 100 ? '' : 'o' . (int($i / 100) * 100));
}
my ($wrong, $miskeyed) = (0, 0);
for my $m (@$msgs)
{
	my $id = decode_json($m->{value})->{after}{payment_id};
	$wrong++ unless defined $want{$id} && content($m->{value}) eq delete $want{$id};
	$miskeyed++ unless $m->{key} eq decode_json($m->{value})->{after}{sale_id};
}
is($wrong, 0, 'every message is exactly its confirmation (amounts, UTC times, page tokens)');
is(scalar(keys %want), 0, 'no confirmation is missing');
is($miskeyed, 0, 'every message is keyed by its sale_id');
$reqs = $soap->requests("/bench/$n");
is_deeply([ map { $_->{page_token} // '' } @$reqs[ 0 .. 12 ] ],
	[ '', map { 'o' . ($_ * 100) } 1 .. 12 ], 'pages asked for in order through NextPageToken');
ok(!grep({ $_->{page_size} != 100 } @$reqs), 'PageSize follows kappa.soap_page_size');

# ---- bad confirmations: dead letters, the rest goes on ----------------------
my $bad = $soap->url('bad');
my $before = soap_switch($node, $bad, soap_page_size => undef);
wait_until(sub { state_of($bad) =~ /^2026-11-21 12:00:02\|\{PAY-B3\}\|<null>\|t$/ }, 'bad page polled');
$msgs = payments($bad);
is(scalar(@$msgs), 1, 'the good confirmation of the page is sent');
is(content($msgs->[0]{value}),
	envelope(payment_id => 'PAY-B1', sale_id => '2001', status => 'CONFIRMED', amount => '10.50',
		confirmed_at => '2026-11-21T12:00:00.000000Z', endpoint => $bad, page => ''),
	'... exactly');
is($node->safe_psql('shop', q{
SELECT string_agg(concat_ws(' | ', source, topic, partition, "offset", file, line,
                            convert_from(raw, 'UTF8'), error), E'\n' ORDER BY id)
  FROM kappa.dead_letters}),
	"soap | $bad | 5 | "
	  . '<p:Confirmation xmlns:p="urn:electrored:payments:v1"><p:PaymentId>PAY-B2</p:PaymentId><p:SaleId>2002</p:SaleId><p:Status>CONFIRMED</p:Status><p:Amount currency="EUR">ten</p:Amount><p:ConfirmedAt>2026-11-21T12:00:01Z</p:ConfirmedAt></p:Confirmation>'
	  . ' | invalid Amount "ten": not an xsd:decimal (first page)' . "\n"
	  . "soap | $bad | 6 | "
	  . '<p:Confirmation xmlns:p="urn:electrored:payments:v1"><p:PaymentId>PAY-B3</p:PaymentId><p:Status>CONFIRMED</p:Status><p:Amount currency="EUR">1.00</p:Amount><p:ConfirmedAt>2026-11-21T12:00:02Z</p:ConfirmedAt></p:Confirmation>'
	  . ' | Confirmation has no SaleId (first page)' . "\n"
	  . "soap | $bad | 7 | "
	  . '<p:Confirmation xmlns:p="urn:electrored:payments:v1"><p:SaleId>2004</p:SaleId><p:Status>CONFIRMED</p:Status><p:Amount currency="EUR">2.00</p:Amount><p:ConfirmedAt>2026-11-21T12:00:02Z</p:ConfirmedAt></p:Confirmation>'
	  . ' | Confirmation has no PaymentId (first page)',
	'the three bad confirmations are dead letters: endpoint, line, raw XML, reason');
my $after = soap_status($node);
is($after->{rejected} - $before->{rejected}, 3, 'counted as rejected');
wait_until(sub { scalar(@{ $soap->requests('/bad') }) >= 3 }, 'more polls of the bad page');
wait_until(sub { soap_status($node)->{pages} >= $after->{pages} + 2 }, 'them done');
# (the one without a PaymentId is at the watermark, which is inclusive: each
# poll gets it again; 0.1.5, before which each made it a dead letter again)
is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters'), '3',
	'a later poll does not refuse the same confirmation twice');
is(scalar(@{ payments($bad) }), 1, '... nor send the good one twice');

# ---- a SOAP Fault: no event, the fault string in the status, backoff --------
my $fault = $soap->url('fault');
my $log_offset = -s $node->logfile;
my $count_before = scalar(@{ consume_all($broker, 'payment-confirmations') });
$before = soap_switch($node, $fault);
wait_until(sub { scalar(@{ $soap->requests('/fault') }) >= 5 }, 'five attempts at the fault');
# the server logs a request before the poller has read the answer: wait for
# the poller to be between attempts again
$st = wait_until(sub { my $x = soap_status($node); ($x->{state} // '') =~ /^retrying/ ? $x : undef },
	'the poller to wait for its next attempt');
is($st->{last_error}, 'soap fault: Authentication failed: invalid UsernameToken',
	'kappa.stat_sources.last_error holds the fault string');
ok($st->{errors} - $before->{errors} >= 4, 'each failed poll is counted in errors');
like($st->{state}, qr/^retrying in \d+ ms after an error$/, 'the state says it retries');
is(scalar(@{ consume_all($broker, 'payment-confirmations') }), $count_before, 'no event from a fault');
is($node->safe_psql('shop', "SELECT count(*) FROM kappa.soap_state WHERE endpoint = '$fault' AND last_success_at IS NULL"),
	'1', 'the watermark did not move');
my $log = slurp_file($node->logfile, $log_offset);
my @backoffs = $log =~ /soap fault: Authentication failed: invalid UsernameToken\n.*?retrying in (\d+) ms/sg;
is_deeply([ @backoffs[ 0 .. 3 ] ], [ 1000, 2000, 4000, 4000 ],
	'backoff doubles from 1 s up to kappa.soap_max_backoff (4 s)');
like($log, qr/DETAIL:  Fault code "soapenv:Client", HTTP status 500, from \Q$fault\E\./,
	'the log has the fault code and HTTP status');
$reqs = $soap->requests('/fault');
for my $i (1 .. 3)
{
	my $gap = $reqs->[$i]{t} - $reqs->[ $i - 1 ]{t};
	ok($gap >= $backoffs[ $i - 1 ] / 1000 * 0.9,
		sprintf('attempt %d came after the backoff (%.1f s >= %.1f s)', $i + 1, $gap, $backoffs[ $i - 1 ] / 1000));
}

# ---- an HTTP error without a SOAP Fault -------------------------------------
$before = soap_switch($node, $soap->url('http500'));
wait_until(sub { soap_status($node)->{errors} > $before->{errors} }, 'http 500');
is(soap_status($node)->{last_error}, 'http 500 Internal Server Error from the SOAP service',
	'HTTP status in the status');

# ---- wrong credentials, missing password; the password never shown ---------
write_secrets($secrets, "soap.password = $wrong_password\n");
$log_offset = -s $node->logfile;
$before = soap_switch($node, $url);
wait_until(sub { soap_status($node)->{errors} > $before->{errors} }, 'auth failure');
is(soap_status($node)->{last_error}, 'soap fault: Authentication failed: invalid UsernameToken',
	'wrong password: the service\'s fault');
my $r = $soap->requests('/fixtures')->[-1];
ok(!$r->{password_ok} && $r->{username} eq 'kappa', 'the service got the wrong password');

write_secrets($secrets, "# no password here\n");
$before = soap_status($node);
wait_until(sub { soap_status($node)->{errors} > $before->{errors} }, 'no password');
is(soap_status($node)->{last_error}, 'no password for the SOAP service', 'missing soap.password');

write_secrets($secrets, "soap.password = $password\n");
wait_until(sub { soap_status($node)->{state} eq 'waiting for the next poll' }, 'success again');
like(slurp_file($node->logfile, $log_offset), qr/polling succeeded after \d+ failed attempts/,
	'recovery is logged');

# ---- Kafka away: the page is not recorded until Kafka has it -----------------
my $outage = $soap->url('bench/300');
soap_stop_polling($node);
set_soap_conf($node, kafka_options => 'message.timeout.ms=1500', soap_page_size => 100);
$broker->control('down all');
$before = soap_status($node);
set_soap_conf($node, soap_url => $outage);
wait_until(sub { soap_status($node)->{errors} >= $before->{errors} + 2 }, 'delivery failures');
like(soap_status($node)->{last_error}, qr/^kafka delivery failed: /, 'a failed delivery is the poll\'s error');
is(state_of($outage), '1970-01-01 00:00:00|{}|<null>|f', 'no progress stored while Kafka is away');
ok(!grep({ defined $_->{page_token} } @{ $soap->requests('/bench/300') }),
	'the first page is asked for again, not the next one');
$broker->control('up all');
wait_until(sub { state_of($outage) =~ /^2026-11-21 00:04:59\.299\|\{PAY-0000300\}\|<null>\|t$/ },
	'the poll completes once Kafka is back');
$msgs = payments($outage);
my %seen;
my $differ = 0;
for my $m (@$msgs)
{
	my $id = decode_json($m->{value})->{after}{payment_id};
	$differ++ if exists $seen{$id} && $seen{$id} ne content($m->{value});
	$seen{$id} = content($m->{value});
}
is(scalar(keys %seen), 300, 'every confirmation reached the topic after the outage');
is($differ, 0, 'a confirmation sent twice is the same message (same payment_id, same content)');
set_soap_conf($node, kafka_options => undef, soap_page_size => undef);

my $shown = join("\n",
	slurp_file($node->logfile),
	$node->safe_psql('shop', 'SELECT * FROM kappa.stat_sources'),
	$node->safe_psql('shop', 'SELECT * FROM kappa.soap_state'),
	$node->safe_psql('shop', 'SELECT * FROM kappa.dead_letters'),
	$node->safe_psql('shop', 'SELECT name, setting FROM pg_settings'),
	$node->safe_psql('shop', 'SELECT query FROM pg_stat_activity'),
	map { $_->{value} } @{ consume_all($broker, 'payment-confirmations') });
ok(index($shown, $password) < 0 && index($shown, $wrong_password) < 0,
	'no password in the server log, views, tables, settings or messages');

is(soap_worker_pid($node), $pid, 'the same poller process lived through every error');

$node->stop;
$soap->stop;
$broker->stop;
done_testing();
