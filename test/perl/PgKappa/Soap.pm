# PgKappa::Soap: what the SOAP poller's tests share.
#
# The test SOAP service (test/soap_server.py, Python's standard library)
# on loopback ports, the requests it received, and small helpers to point a
# node's poller at one of its scenarios and read the poller's status.
package PgKappa::Soap;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

our @EXPORT = qw(start_soap_server write_secrets set_soap_conf soap_status
  soap_stop_polling soap_switch soap_worker_pid make_tls_cert consume_all);

my $srcdir = $ENV{TESTDIR} || '.';

# Debian's python3 (the PATH of the user running the tests may lead to
# another one it cannot read).
my $python = -x '/usr/bin/python3' ? '/usr/bin/python3' : 'python3';

# start_soap_server(username => 'kappa', password => '...', tls => {cert, key})
sub start_soap_server
{
	my %opts = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my $self = bless {
		dir => $dir,
		port => PostgreSQL::Test::Cluster::get_free_port(),
		watch_port => PostgreSQL::Test::Cluster::get_free_port(),
		log => "$dir/requests.log",
		watch_log => "$dir/watch.log",
	}, 'PgKappa::Soap::Server';
	my @cmd = ($python, "$srcdir/test/soap_server.py",
		'--port', $self->{port}, '--watch-port', $self->{watch_port},
		'--fixtures', "$srcdir/test/fixtures",
		'--log', $self->{log}, '--watch-log', $self->{watch_log},
		'--ready-file', "$dir/ready",
		'--username', $opts{username} // 'kappa',
		'--password', $opts{password} // 'secret');
	if ($opts{tls})
	{
		$self->{tls_port} = PostgreSQL::Test::Cluster::get_free_port();
		push @cmd, '--tls-port', $self->{tls_port},
		  '--tls-cert', $opts{tls}{cert}, '--tls-key', $opts{tls}{key};
	}
	$self->{handle} = IPC::Run::start(\@cmd, '>', "$dir/stdout", '2>', "$dir/stderr");
	wait_until(sub { -s "$dir/ready" }, 'test SOAP server ready');
	note "test SOAP server on port $self->{port}";
	return $self;
}

# A self-signed certificate for 127.0.0.1: (cert, key) file names.
sub make_tls_cert
{
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			'openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
			'-keyout', "$dir/key.pem", '-out', "$dir/cert.pem", '-days', '2',
			'-subj', '/CN=127.0.0.1',
			'-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'
		],
		'>', \$out, '2>', \$err) or die "openssl failed: $err";
	return ("$dir/cert.pem", "$dir/key.pem");
}

# The secrets file (0600, owned by the user running the server).
sub write_secrets
{
	my ($file, $content) = @_;
	open my $fh, '>', $file or die "$file: $!";
	print $fh $content;
	close $fh;
	chmod 0600, $file;
	return $file;
}

# ALTER SYSTEM SET each kappa.<name> = value (undef: RESET), then reload.
sub set_soap_conf
{
	my ($node, %settings) = @_;
	for my $name (sort keys %settings)
	{
		my $v = $settings{$name};
		if (defined $v)
		{
			$v =~ s/'/''/g;
			$node->safe_psql('postgres', "ALTER SYSTEM SET kappa.$name = '$v'");
		}
		else
		{
			$node->safe_psql('postgres', "ALTER SYSTEM RESET kappa.$name");
		}
	}
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	return;
}

# The poller's row of kappa.stat_sources, as a hash.
sub soap_status
{
	my ($node) = @_;
	my $row = $node->safe_psql('shop', q{
SELECT coalesce(pid, 0), state, files_seen, rows_ingested, rows_rejected, errors,
       coalesce(last_error, ''), coalesce(last_error_at::text, '')
  FROM kappa.stat_sources WHERE source = 'soap'});
	my %s = (pid => 0, state => '', pages => 0, ingested => 0, rejected => 0, errors => 0,
		last_error => '', last_error_at => '');
	@s{qw(pid state pages ingested rejected errors last_error last_error_at)} = split /\|/, $row, 8
	  if $row ne '';
	return \%s;
}

sub soap_worker_pid
{
	my ($node) = @_;
	return $node->safe_psql('shop',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_kappa soap poller'});
}

# Point the poller nowhere and wait until it idles: nothing of an earlier
# scenario can then land in the status.
sub soap_stop_polling
{
	my ($node) = @_;
	set_soap_conf($node, soap_url => '');
	wait_until(sub { soap_status($node)->{state} eq 'idle (kappa.soap_url is not set)' },
		'poller idle');
	return;
}

# Idle, then point the poller at $url (and other settings); returns the
# status just before the switch.
sub soap_switch
{
	my ($node, $url, %settings) = @_;
	soap_stop_polling($node);
	my $before = soap_status($node);
	set_soap_conf($node, %settings, soap_url => $url);
	return $before;
}

# kcat_consume, tried again if kcat itself fails (shown, not hidden).
sub consume_all
{
	my ($broker, $topic) = @_;
	for my $attempt (1 .. 3)
	{
		my $r = eval { kcat_consume($broker, $topic) };
		return $r if $r;
		diag("kcat attempt $attempt failed: $@");
		sleep 1;
	}
	die "kcat could not read $topic";
}

package PgKappa::Soap::Server;

use strict;
use warnings;
use JSON::PP;

sub url
{
	my ($self, $path, %opts) = @_;
	return $opts{tls}
	  ? "https://127.0.0.1:$self->{tls_port}/$path"
	  : "http://127.0.0.1:$self->{port}/$path";
}

sub _lines
{
	my ($file) = @_;
	open my $fh, '<', $file or return [];
	my @r = map { decode_json($_) } grep { /\S/ } <$fh>;
	close $fh;
	return \@r;
}

# Requests received, oldest first; with $path, only those for that path.
sub requests
{
	my ($self, $path) = @_;
	my $all = _lines($self->{log});
	return $all unless defined $path;
	return [ grep { $_->{path} eq $path } @$all ];
}

# Connections to the watch port (external entities must never get there).
sub watch_hits { return _lines($_[0]->{watch_log}); }

sub stop
{
	my ($self) = @_;
	return unless $self->{handle};
	$self->{handle}->signal('TERM');
	$self->{handle}->finish;
	delete $self->{handle};
	return;
}

sub DESTROY { $_[0]->stop; }

1;
