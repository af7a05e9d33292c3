# PgKappa::Test: what the TAP tests share.
#
# A dev broker (test/dev-broker, librdkafka's mock cluster on loopback),
# PostgreSQL nodes configured for pg_kappa, and kcat as an independent Kafka
# client to read and write topics.
package PgKappa::Test;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

our @EXPORT = qw(start_dev_broker kappa_node kcat_consume kcat_produce kcat_high_watermark
  wait_until wait_published sales_table_sql crash_node parse_change
  check_replays position_free_change);

my $srcdir = $ENV{TESTDIR} || '.';

# The reference table of the shop (DESIGN.md).
sub sales_table_sql
{
	return q{
CREATE TABLE sales (sale_id bigint PRIMARY KEY, store_id text NOT NULL, seller_id text NOT NULL,
  seller_name text NOT NULL, city text NOT NULL, country char(2) NOT NULL,
  amount numeric(12,2) NOT NULL, currency char(3) NOT NULL DEFAULT 'EUR',
  sold_at timestamptz NOT NULL DEFAULT now());
};
}

# Start a dev broker: start_dev_broker(brokers => 1, topics => ['sales-events:8']).
sub start_dev_broker
{
	my %opts = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my $self = bless {
		dir => $dir,
		bootstrap_file => "$dir/bootstrap",
		control => "$dir/control",
		stdout => "$dir/stdout",
		brokers => $opts{brokers} || 1,
	}, 'PgKappa::Test::DevBroker';

	my @cmd = ("$srcdir/test/dev-broker", '--brokers', $self->{brokers},
		'--bootstrap-file', $self->{bootstrap_file},
		'--control', $self->{control}, '--exit-with-parent');
	push @cmd, '--topic', $_ for @{ $opts{topics} || [] };
	push @cmd, '--partitions', $opts{partitions} if $opts{partitions};

	$self->{handle} = IPC::Run::start(\@cmd, '>', $self->{stdout},
		'2>', "$dir/stderr");
	wait_until(sub { -s $self->{bootstrap_file} }, 'dev broker listening');
	open my $fh, '<', $self->{bootstrap_file} or die $!;
	chomp(my $bs = <$fh>);
	close $fh;
	$self->{bootstrap} = $bs;
	note "dev broker at $bs";
	return $self;
}

# Wait until $cond->() is true, at most $timeout seconds (default: the
# PostgreSQL test suite's own timeout).
sub wait_until
{
	my ($cond, $what, $timeout) = @_;
	$timeout ||= $PostgreSQL::Test::Utils::timeout_default;
	my $deadline = time() + $timeout;
	while (time() < $deadline)
	{
		my $r = $cond->();
		return $r if $r;
		usleep(100_000);
	}
	die "timed out waiting for $what";
}

# A node with pg_kappa preloaded, publishing from database "shop" to $broker.
sub kappa_node
{
	my ($name, $broker, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => 'logical',
		extra => [ '--encoding=UTF8', '--locale=C' ]);
	my $bs = $broker ? $broker->{bootstrap} : '127.0.0.1:9';
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_kappa'
wal_level = logical
max_replication_slots = 10
output_plugin_libraries = 'pgoutput, test_decoding, pg_kappa, wal2json'
kappa.database = 'shop'
kappa.brokers = '$bs'
kappa.worker_restart_interval = 1
log_min_messages = info
});
	$node->append_conf('postgresql.conf', $opts{conf}) if $opts{conf};
	$node->start;
	# shop_locale (with shop_icu, an ICU locale for the database's
	# collation): a database whose text does not sort as bytes.  (glibc's
	# C.UTF-8 sorts by code point, which for UTF-8 is byte order.)
	$node->safe_psql('postgres', 'CREATE DATABASE shop'
		  . ($opts{shop_locale} ? " TEMPLATE template0 LOCALE '$opts{shop_locale}'" : '')
		  . ($opts{shop_icu} ? " LOCALE_PROVIDER icu ICU_LOCALE '$opts{shop_icu}'" : ''));
	$node->safe_psql('shop', 'CREATE EXTENSION pg_kappa') unless $opts{no_extension};
	return $node;
}

# Wait until the CDC publisher has confirmed (all acknowledged by Kafka)
# everything up to $lsn (default: the current WAL insert position).
sub wait_published
{
	my ($node, $lsn) = @_;
	$lsn ||= $node->safe_psql('shop', 'SELECT pg_current_wal_lsn()');
	wait_until(
		sub {
			$node->safe_psql('shop',
				"SELECT coalesce(confirmed_lsn >= '$lsn', false) FROM kappa.cdc_status"
			) eq 't';
		},
		"publisher to confirm $lsn");
	return $lsn;
}

# Simulate a machine crash: SIGKILL the postmaster and all its children at
# once (a backend in a loop would otherwise outlive the postmaster).
sub crash_node
{
	my ($node) = @_;
	my $pm = $node->{_pid} || do {
		open my $fh, '<', $node->data_dir . '/postmaster.pid' or die $!;
		my $p = <$fh>;
		chomp $p;
		$p;
	};
	my @children = split /\s+/, `pgrep -P $pm`;
	kill 'KILL', $pm, grep { /^\d+$/ } @children;
	PgKappa::Test::wait_until(sub { !kill(0, $pm) }, 'postmaster gone');
	$node->{_pid} = undef;
	return;
}

# The parts of a change envelope the tests look at, without a JSON parser
# (fast on 100 000 messages): op, key fields, lsn, seq, before, after.
sub parse_change
{
	my ($value) = @_;
	my %c;
	($c{op}) = $value =~ /^\{"op":"(.)"/;
	($c{before}, $c{after}) = $value =~ /"before":(null|\{[^{}]*\}),"after":(null|\{[^{}]*\})/;
	($c{lsn}, $c{seq}) = $value =~ /"lsn":"([0-9A-F]+\/[0-9A-F]+)","seq":(\d+)/;
	my $row = defined $c{after} && $c{after} ne 'null' ? $c{after} : $c{before} // '';
	($c{sale_id}) = $row =~ /"sale_id":"(\d+)"/;
	($c{amount}) = ($c{after} // '') =~ /"amount":"([-0-9.]+)"/;
	my ($lsn_hi, $lsn_lo) = split m{/}, $c{lsn} // '0/0';
	$c{pos} = sprintf('%08X%08X%012d', hex($lsn_hi), hex($lsn_lo), $c{seq} // 0);
	# the value without the wall-clock ts_ms at the end: equal for replays
	($c{content} = $value) =~ s/,"ts_ms":\d+\}$/}/;
	return \%c;
}

# Remove replays (same source.lsn/seq) from a message list.  Returns the
# unique changes and the number of replays that were not identical copies.
sub check_replays
{
	my ($messages) = @_;
	my (%seen, @unique);
	my $mismatched = 0;
	for my $m (@$messages)
	{
		my $c = parse_change($m->{value});
		$c->{key} = $m->{key};
		$c->{partition} = $m->{partition};
		if (exists $seen{ $c->{pos} })
		{
			$mismatched++ if $seen{ $c->{pos} } ne $c->{content};
			next;
		}
		$seen{ $c->{pos} } = $c->{content};
		push @unique, $c;
	}
	return (\@unique, $mismatched);
}

# Every message of a topic, read with kcat from the beginning to the end:
# a list of { partition, offset, key, value } in partition/offset order.
sub kcat_consume
{
	my ($broker, $topic) = @_;
	my ($out, $err) = ('', '');
	# key and payload may hold anything but the separators we choose
	my $sep = "\x1e";
	IPC::Run::run(
		[
			'kcat', '-C', '-b', $broker->{bootstrap}, '-t', $topic,
			'-o', 'beginning', '-e', '-q', '-f', "%p\t%o\t%k\t%s$sep"
		],
		'>', \$out, '2>', \$err)
	  or die "kcat failed: $err";
	my @messages;
	for my $rec (split /$sep/, $out)
	{
		next if $rec eq '';
		$rec =~ s/^\n//;
		my ($p, $o, $k, $v) = split /\t/, $rec, 4;
		push @messages, { partition => $p, offset => $o, key => $k, value => $v };
	}
	@messages = sort { $a->{partition} <=> $b->{partition} or $a->{offset} <=> $b->{offset} } @messages;
	return \@messages;
}

# The high watermark of a partition (the offset the next record gets), as
# kcat reads it from the broker.
sub kcat_high_watermark
{
	my ($broker, $topic, $partition) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'kcat', '-Q', '-b', $broker->{bootstrap}, '-t', "$topic:$partition:-1" ],
		'>', \$out, '2>', \$err)
	  or die "kcat -Q failed: $err";
	$out =~ /\[\Q$partition\E\] offset (-?\d+)/ or die "kcat -Q said: $out$err";
	return $1;
}

# Produce key/value pairs with kcat: kcat_produce($broker, $topic, [[k, v], ...]).
sub kcat_produce
{
	my ($broker, $topic, $pairs, %opts) = @_;
	my $in = join('', map { "$_->[0]\x1f$_->[1]\n" } @$pairs);
	my ($out, $err) = ('', '');
	# (partition => N: all to that partition, whatever their keys)
	IPC::Run::run([ 'kcat', '-P', '-b', $broker->{bootstrap}, '-t', $topic, '-K', "\x1f",
			(defined $opts{partition} ? ('-p', $opts{partition}) : ()) ],
		'<', \$in, '>', \$out, '2>', \$err)
	  or die "kcat -P failed: $err";
	return;
}

# A change without a CDC position (as the CSV inbox sends them: each one is
# applied as the newest), as [key, value] for kcat_produce:
# position_free_change('c' | 'u' | 'd', $id, $city, $amount).  A delete
# carries the key only.
sub position_free_change
{
	my ($op, $id, $city, $amount) = @_;
	return [ $id, qq({"op":"d","before":{"sale_id":"$id"},"after":null,"source":{"connector":"csv"},"ts_ms":1}) ]
	  if $op eq 'd';
	return [ $id, sprintf('{"op":"%s","before":null,"after":{"sale_id":"%s","store_id":"ST-1","seller_id":"S-1","seller_name":"Seller","city":"%s","country":"ES","amount":"%s","currency":"EUR","sold_at":"2026-05-04T10:00:00Z"},"source":{"connector":"csv"},"ts_ms":1}',
		$op, $id, $city, $amount) ];
}

package PgKappa::Test::DevBroker;

use strict;
use warnings;
use PgKappa::Test ();

# Send a command to the control FIFO and wait for its acknowledgement.
sub control
{
	my ($self, $cmd) = @_;
	my $before = -s $self->{stdout} || 0;
	open my $fh, '>', $self->{control} or die "cannot open control FIFO: $!";
	print $fh "$cmd\n";
	close $fh;
	PgKappa::Test::wait_until(
		sub {
			open my $in, '<', $self->{stdout} or return 0;
			local $/;
			my $all = <$in>;
			return index(substr($all, $before), "ok $cmd") >= 0;
		},
		"dev broker to do '$cmd'");
	return;
}

sub bootstrap { return $_[0]->{bootstrap}; }

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
