# The SOAP poller against a misbehaving or hostile service: slow answers
# (timeout; SIGTERM in the middle of a transfer), truncated XML, oversized
# responses (with and without Content-Length), billion laughs, external
# entities to a file and to a watched port, redirects, a page token that
# never changes, and TLS (verification on by default, kappa.soap_ca_file
# for a private CA).  Each is an error in kappa.stat_sources; nothing is
# produced, nothing outside is read or contacted, and the worker stays up.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;
use PgKappa::Soap;

my ($cert, $key) = make_tls_cert();
my $broker = start_dev_broker(topics => ['payment-confirmations:2']);
my $soap = start_soap_server(username => 'kappa', password => 'h0stile-Test-Pw',
	tls => { cert => $cert, key => $key });
my $secrets = write_secrets(PostgreSQL::Test::Utils::tempdir() . '/kappa.secrets',
	"soap.password = h0stile-Test-Pw\n");

my $node = kappa_node('soap_hostile', $broker, conf => qq{
kappa.soap_username = 'kappa'
kappa.secrets_file = '$secrets'
kappa.soap_poll_interval = '1s'
kappa.soap_max_backoff = '2s'
kappa.soap_timeout = '1s'
kappa.soap_max_response_size = '1MB'
});
wait_until(sub { soap_status($node)->{state} eq 'idle (kappa.soap_url is not set)' }, 'poller idle');
my $pid = soap_status($node)->{pid};

# Point the poller at a scenario and return the error it records.
sub error_of
{
	my ($path, %settings) = @_;
	my $before = soap_switch($node, $soap->url($path), %settings);
	wait_until(sub { soap_status($node)->{errors} > $before->{errors} }, "an error from /$path");
	return soap_status($node)->{last_error};
}

sub vm_kb
{
	my ($pid, $field) = @_;
	open my $fh, '<', "/proc/$pid/status" or return -1;
	my ($kb) = map { /^$field:\s+(\d+)/ ? $1 : () } <$fh>;
	close $fh;
	return $kb;
}

# ---- slow service: the timeout ----------------------------------------------
is(error_of('slow?delay=4'), 'timeout after 1000 ms waiting for the SOAP service',
	'an answer slower than kappa.soap_timeout is a timeout');

# ---- truncated and oversized responses ---------------------------------------
is(error_of('truncated'), 'could not parse the SOAP response', 'truncated XML is a parse error');
like(slurp_file($node->logfile), qr/could not parse the SOAP response\n.*DETAIL:  Line \d+: [^\n]+\.\n/,
	'... with libxml2\'s reason and the line in the log');
# libxml2 reports bytes invalid in the declared encoding without a parser
# context, which would go to stderr and leave only "Premature end of data"
my $badbytes_offset = -s $node->logfile;
is(error_of('badbytes'), 'could not parse the SOAP response', 'bytes invalid in the declared encoding are a parse error');
like(slurp_file($node->logfile, $badbytes_offset),
	qr/could not parse the SOAP response\n.*DETAIL:  input conversion failed due to input error, bytes 0x81 0xFF 0x82 0x3C\.\n/,
	'... with libxml2\'s reason, the bytes it could not convert');
unlike(slurp_file($node->logfile, $badbytes_offset), qr/^(encoding|I\/O) error :/m,
	'and nothing of libxml2\'s on stderr');
is(error_of('oversized?kb=2048'), 'SOAP response larger than kappa.soap_max_response_size (1024 kB)',
	'a response with a Content-Length above the limit is refused');
is(error_of('chunked?kb=2048'), 'SOAP response larger than kappa.soap_max_response_size (1024 kB)',
	'a chunked response (no Content-Length) is cut at the limit');

# ---- entity expansion and external entities ----------------------------------
my $passwd_line = do { open my $fh, '<', '/etc/passwd' or die $!; my $l = <$fh>; chomp $l; $l };
my $log_offset = -s $node->logfile;
my $anon_before = vm_kb($pid, 'RssAnon');
is(error_of('billion'), 'SOAP response has a document type declaration',
	'billion laughs: refused at the DOCTYPE');
my $anon_after = vm_kb($pid, 'RssAnon');
ok($anon_after - $anon_before < 50_000,
	"no entity expansion: private memory grew by @{[ $anon_after - $anon_before ]} kB (limit 50 MB)");
is(soap_worker_pid($node), $pid, '... and the worker is alive');
# Every one of these is stopped where its DOCTYPE starts (soap_xml.c stops
# the parser in the internalSubset callback), before any entity or DTD is
# declared; the parser's options (no entity substitution, no network, no
# DTD loading) are a second layer these documents do not reach, and without
# a DOCTYPE no entity can be declared for them to be tested on.
for my $path (qw(xxe-file xxe-http xxe-param xxe-dtd))
{
	is(error_of($path), 'SOAP response has a document type declaration', "$path: refused");
}
is(scalar(@{ $soap->watch_hits }), 0, 'no request ever reached the watched port');
my $everything = join("\n",
	slurp_file($node->logfile, $log_offset),
	$node->safe_psql('shop', 'SELECT * FROM kappa.stat_sources'),
	$node->safe_psql('shop', q{SELECT convert_from(raw, 'UTF8') || error FROM kappa.dead_letters}),
	map { $_->{value} } @{ consume_all($broker, 'payment-confirmations') });
ok(index($everything, $passwd_line) < 0,
	'no /etc/passwd content in the log, the status, dead letters or the topic');
is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters'), '0', 'no dead letters');

# ---- redirects are not followed; a page token that never changes -------------
is(error_of('redirect'), 'http 302 Found from the SOAP service', 'a redirect is an error');
is(scalar(@{ $soap->requests('/fixtures') }), 0, '... not followed');
is(error_of('loop'), 'the SOAP service returned the page token it was asked for',
	'a page token that never changes stops the poll');
is($node->safe_psql('shop',
	"SELECT page_token FROM kappa.soap_state WHERE endpoint = '" . $soap->url('loop') . "'"),
	'again', 'the last good page token is kept');
is(error_of('cycle'), 'the SOAP service returned a page token it was asked for earlier in this poll',
	'page tokens that go round (a, b, a) stop the poll');
like($node->safe_psql('shop',
	"SELECT page_token FROM kappa.soap_state WHERE endpoint = '" . $soap->url('cycle') . "'"),
	qr/^[ab]$/, 'a token of the cycle is kept: the next poll goes on from it and stops again');
# The attempts that go on from that token know the tokens asked before:
# they stop before sending a page of the cycle again (0.1.5; before, every
# other attempt sent page a's confirmation once more).
my $cycle_requests = scalar(@{ $soap->requests('/cycle') });
wait_until(sub { scalar(@{ $soap->requests('/cycle') }) >= $cycle_requests + 3 }, 'more attempts of /cycle');
my $cycle_url = $soap->url('cycle');
is(join(',', sort map { $_->{key} } grep { index($_->{value}, $cycle_url) >= 0 }
	@{ consume_all($broker, 'payment-confirmations') }), '3001,3002',
	'each confirmation of the cycle\'s pages sent once');

# Tokens that are new each time for a page that is not (t1, t2, ... each
# with the one confirmation of the first page): the poll stops at the
# second page, and the attempts after the backoff, going on from the stored
# token, know the confirmations sent before and stop without sending it
# again (0.1.5; before, each attempt sent it 10 000 times, the page limit).
is(error_of('repeat'),
	'the SOAP service returned a page whose confirmations it had all returned earlier in this poll',
	'a page of nothing new stops the poll');
my $repeat_requests = scalar(@{ $soap->requests('/repeat') });
wait_until(sub { scalar(@{ $soap->requests('/repeat') }) >= $repeat_requests + 3 }, 'more attempts of /repeat');
my $repeat_url = $soap->url('repeat');
is(join(',', map { $_->{key} } grep { index($_->{value}, $repeat_url) >= 0 }
	@{ consume_all($broker, 'payment-confirmations') }), '5001',
	'its confirmation sent once');

# ---- a ConfirmedAt far in the future does not move the watermark -------------
my $future = $soap->url('future');
$log_offset = -s $node->logfile;
soap_switch($node, $future, soap_max_backoff => '2s');
wait_until(sub { $node->safe_psql('shop',
	"SELECT last_success_at IS NOT NULL FROM kappa.soap_state WHERE endpoint = '$future'") eq 't' },
	'a poll of /future');
# (and one dated two hours ahead, within the 24 hours accepted: it is sent,
# but the watermark stays at the newest confirmation not ahead of this
# server's clock; 0.1.5, before which it moved two hours ahead, then to
# this server's clock, and the confirmations of the times between were
# never asked for)
is($node->safe_psql('shop', "SELECT (since = '2026-11-21 12:00:00+00') || ' ' || since_payment_ids::text FROM kappa.soap_state WHERE endpoint = '$future'"),
	'true {PAY-F1}', 'the watermark is the newest real confirmation: not 2099, not two hours ahead, not the clock');
is($node->safe_psql('shop', "SELECT line || ' | ' || error FROM kappa.dead_letters WHERE file = '$future'"),
	'5 | ConfirmedAt 2099-01-01 00:00:00+00 is more than 24 hours ahead of this server\'s clock (first page)',
	'the confirmation from 2099 is a dead letter that says why');
my $polls = scalar(@{ $soap->requests('/future') });
wait_until(sub { scalar(@{ $soap->requests('/future') }) >= $polls + 2 }, 'two more polls of /future');
is($node->safe_psql('shop', "SELECT count(*) FROM kappa.dead_letters WHERE file = '$future'"), '1',
	'each poll gets it again (the watermark stays below it), but it is a dead letter once');
my @sent = grep { index($_->{value}, $future) >= 0 } @{ consume_all($broker, 'payment-confirmations') };
is(join(',', grep { $_ ne '4003' } map { $_->{key} } @sent), '4001', 'the one of a sane time is sent, once');
ok((grep { $_->{key} eq '4003' } @sent) >= 2,
	'the one two hours ahead is sent by every poll until the clock reaches it');
is($node->safe_psql('shop', "SELECT (since = '2026-11-21 12:00:00+00') || ' ' || since_payment_ids::text FROM kappa.soap_state WHERE endpoint = '$future'"),
	'true {PAY-F1}', 'and the watermark stays there');

# ---- the password does not cross the network over plain http ---------------
# (192.0.2.1 is a documentation address: nothing answers there.  The test
# server's own URLs are on 127.0.0.1, whose traffic stays on this machine.)
my $remote = 'http://192.0.2.1:9/pay';
my $seen_before = soap_switch($node, $remote);
wait_until(sub { soap_status($node)->{errors} > $seen_before->{errors} }, 'an error from a plain http URL to another machine');
is(soap_status($node)->{last_error}, 'refusing to send the SOAP password over plain http',
	'a plain http URL to another machine is refused while a user name is set');
# a host name that only begins like a loopback address is a name DNS may
# point anywhere (before 0.1.5's fix it counted as this machine)
$seen_before = soap_switch($node, 'http://127.0.0.1.example.invalid:9/pay');
wait_until(sub { soap_status($node)->{errors} > $seen_before->{errors} }, 'an error from a plain http URL to a "127." host name');
is(soap_status($node)->{last_error}, 'refusing to send the SOAP password over plain http',
	'a host name beginning with "127." is not this machine');
$seen_before = soap_switch($node, $remote);
wait_until(sub { soap_status($node)->{errors} > $seen_before->{errors} }, 'an error from the remote URL again');
$seen_before = soap_status($node);
set_soap_conf($node, soap_allow_plain_http => 'on');
wait_until(sub { soap_status($node)->{errors} > $seen_before->{errors} }, 'a poll of it once allowed');
isnt(soap_status($node)->{last_error}, 'refusing to send the SOAP password over plain http',
	'kappa.soap_allow_plain_http = on lets it be tried');
set_soap_conf($node, soap_allow_plain_http => undef);

# ---- TLS ---------------------------------------------------------------------
my $https = $soap->url('fixtures', tls => 1);
my $before = soap_switch($node, $https);
wait_until(sub { soap_status($node)->{errors} > $before->{errors} }, 'TLS error');
is(soap_status($node)->{last_error}, 'could not establish a verified TLS connection to the SOAP service',
	'verification is on by default: a certificate from an unknown CA is refused');
is(scalar(@{ $soap->requests('/fixtures') }), 0, 'no request was sent over it');
set_soap_conf($node, soap_ca_file => $cert);
wait_until(sub {
	$node->safe_psql('shop', "SELECT since = '2026-11-21T11:02:00Z' FROM kappa.soap_state WHERE endpoint = '$https'") eq 't'
}, 'polled over TLS with kappa.soap_ca_file');
my @over_tls = grep { index($_->{value}, $https) >= 0 } @{ consume_all($broker, 'payment-confirmations') };
is(scalar(@over_tls), 3, 'with the CA in kappa.soap_ca_file the fixtures arrive over TLS');
ok((grep { $_->{tls} } @{ $soap->requests('/fixtures') }) >= 2, 'the requests came over TLS');
is(soap_worker_pid($node), $pid, 'the same poller process lived through every error');

# ---- SIGTERM during a slow transfer ------------------------------------------
my $slow = 'slow?delay=60';
soap_switch($node, $soap->url($slow), soap_timeout => '120s');
wait_until(sub { scalar(@{ $soap->requests("/$slow") }) > 0 }, 'a slow transfer under way');
ok(soap_status($node)->{state} =~ /^polling/, 'the poller waits for the answer');
$node->safe_psql('shop', "SELECT pg_terminate_backend($pid)");
# not a timing test: a poller that waits for the transfer is there for 60 s;
# the bound is far from both
wait_until(sub { soap_worker_pid($node) ne $pid }, 'poller gone after SIGTERM', 40);
pass('SIGTERM ends the poller while the service takes 60 s to answer');
my $newpid = wait_until(sub { my $p = soap_worker_pid($node); $p ne '' && $p ne $pid ? $p : 0 },
	'poller restarted');
ok($newpid, 'the postmaster started a new poller');
is($node->safe_psql('shop', 'SELECT 1'), '1', 'the server kept running');

$node->stop;
$soap->stop;
$broker->stop;
done_testing();
