# PgKappa::Model: an independent model of the rankings' semantics, for the
# TAP tests.  It reads the messages of a partition in order (as kcat
# returns them) and computes what kappa.ranking_results, kappa.late_events
# and kappa.dead_letters must hold, following docs/rankings.md:
#
# - a change envelope applies to every ranking of its topic; an event one
#   ranking cannot read (missing field, bad type) is a dead letter for all;
# - a CDC change at or before the row's last (source.lsn, source.seq) is a
#   replay; a non-CDC row identical to the last one is a re-delivery;
# - stream time is the highest event time seen in the partition, updated
#   before the lateness check; a contribution whose window ended at or
#   before stream time minus grace is late;
# - a row whose counted window became final is frozen for that ranking.
#
# Amounts are handled as integer cents (the test data has two decimals), so
# the expectation is exact.
package PgKappa::Model;

use strict;
use warnings;

use JSON::PP;

# the XS parser when installed: the models read tens of thousands of messages
my $json = eval { require Cpanel::JSON::XS; Cpanel::JSON::XS->new } || JSON::PP->new;
use POSIX ();
use Time::Local qw(timegm);

sub new
{
	my ($class, %opts) = @_;
	return bless {
		rankings => $opts{rankings},    # [{name, group, item, label, window => day|30d, grace_s}]
		rows => {},                     # key -> state
		stream_time => undef,           # epoch seconds (fraction allowed)
		results => {},                  # "ranking|ws|group|item" -> {total_cents, count, label, ws, we}
		late => [],                     # [ranking, offset, reason]
		dead => [],                     # [offset, reason]
		duplicates => 0,
	}, $class;
}

# ISO-8601 with Z or +hh:mm, to epoch seconds (with fraction); undef if not.
sub parse_time
{
	my ($s) = @_;
	return undef unless defined $s && !ref $s;
	my ($y, $mo, $d, $h, $mi, $se, $frac, $zone) =
	  $s =~ /^(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d)(?::(\d\d)(\.\d+)?)?(Z|[+-]\d\d(?::?\d\d)?)$/
	  or return undef;
	my $t = eval { timegm($se // 0, $mi, $h, $d, $mo - 1, $y) };
	return undef unless defined $t;
	$t += $frac if $frac;
	if ($zone ne 'Z')
	{
		my ($sign, $zh, $zm) = $zone =~ /^([+-])(\d\d):?(\d\d)?$/;
		my $off = $zh * 3600 + ($zm // 0) * 60;
		$t += $sign eq '+' ? -$off : $off;
	}
	return $t;
}

sub cents
{
	my ($v) = @_;
	return undef unless defined $v && !ref $v;
	my ($neg, $int, $dec) = "$v" =~ /^(-?)(\d+)(?:\.(\d{1,2}))?$/ or return undef;
	my $c = $int * 100 + ($dec ? ($dec . '0' x (2 - length $dec)) : 0);
	return $neg ? -$c : $c;
}

sub window_of
{
	my ($kind, $t) = @_;
	my $size = $kind eq 'day' ? 86400 : 30 * 86400;
	my $ws = POSIX::floor($t / $size) * $size;
	return ($ws, $ws + $size);
}

# What a row contributes to ranking $r, or (undef, reason).
sub contribution
{
	my ($self, $r, $row) = @_;
	my $t = parse_time($row->{sold_at});
	return (undef, 'time') unless defined $t;
	for my $f (@{ $r->{group} }, $r->{item} ? ($r->{item}) : ())
	{
		return (undef, "field $f") if !defined $row->{$f} || ref $row->{$f};
	}
	my $c = cents($row->{amount});
	return (undef, 'amount') unless defined $c;
	my ($ws, $we) = window_of($r->{window}, $t);
	return ({
		time => $t, ws => $ws, we => $we,
		group => join("\x1f", map { $row->{$_} } @{ $r->{group} }),
		item => $r->{item} ? $row->{ $r->{item} } : '',
		label => $r->{label} ? $row->{ $r->{label} } : undef,
		cents => $c,
	}, undef);
}

sub add
{
	my ($self, $r, $c, $sign) = @_;
	my $k = join('|', $r->{name}, $c->{ws}, $c->{group}, $c->{item});
	my $e = $self->{results}{$k} //= { total => 0, count => 0, ws => $c->{ws}, we => $c->{we},
		group => $c->{group}, item => $c->{item}, ranking => $r->{name} };
	$e->{total} += $sign * $c->{cents};
	$e->{count} += $sign;
	$e->{label} = $c->{label} if $sign > 0 && defined $c->{label};
	delete $self->{results}{$k} if $e->{count} == 0;
	return;
}

sub is_late
{
	my ($self, $r, $c) = @_;
	return defined $self->{stream_time} && $c->{we} <= $self->{stream_time} - $r->{grace_s};
}

sub same
{
	my ($a, $b) = @_;
	return $a->{ws} == $b->{ws} && $a->{group} eq $b->{group} && $a->{item} eq $b->{item}
	  && $a->{cents} == $b->{cents} && ($a->{label} // '') eq ($b->{label} // '');
}

# One message: {offset, key, value} as kcat_consume returns it.
sub apply
{
	my ($self, $m) = @_;
	my $o = $m->{offset};
	my $dead = sub { push @{ $self->{dead} }, [ $o, $_[0] ]; return; };

	return $dead->('no key') if !defined $m->{key} || $m->{key} eq '';
	my $msg = eval { $json->decode($m->{value}) };
	return $dead->('json') unless ref $msg eq 'HASH';
	my $op = $msg->{op};
	return $dead->('op') unless defined $op && !ref $op && $op =~ /^[curdt]$/;
	return $dead->('after') if $op =~ /[cur]/ && ref $msg->{after} ne 'HASH';
	return $dead->('truncate') if $op eq 't';

	my $s = $self->{rows}{ $m->{key} } //= { counted => {}, excluded => {} };
	my ($lsn, $seq);
	if (ref $msg->{source} eq 'HASH' && defined $msg->{source}{lsn} && defined $msg->{source}{seq})
	{
		my ($hi, $lo) = $msg->{source}{lsn} =~ m{^([0-9A-F]+)/([0-9A-F]+)$};
		$lsn = sprintf('%016X', hex($hi) * 2**32 + hex($lo));
		$seq = $msg->{source}{seq};
	}
	my ($raw_after) = $m->{value} =~ /"after":(\{[^{}]*\})/;
	if (defined $lsn && defined $s->{lsn}
		&& ($lsn lt $s->{lsn} || ($lsn eq $s->{lsn} && $seq <= $s->{seq})))
	{
		$self->{duplicates}++;
		return;
	}
	if (!defined $lsn && $op ne 'd' && defined $s->{raw} && !$s->{deleted}
		&& defined $raw_after && $raw_after eq $s->{raw})
	{
		$self->{duplicates}++;
		return;
	}
	my $new = $op eq 'd' ? undef : $msg->{after};

	my (%old, %newc);
	for my $r (@{ $self->{rankings} })
	{
		if ($s->{counted}{ $r->{name} } && $s->{row})
		{
			my ($c) = $self->contribution($r, $s->{row});
			$old{ $r->{name} } = $c if $c;
		}
		if ($new)
		{
			my ($c, $why) = $self->contribution($r, $new);
			return $dead->("$r->{name}: $why") unless $c;
			$newc{ $r->{name} } = $c;
		}
	}
	if ($new)
	{
		my $t = parse_time($new->{sold_at});
		$self->{stream_time} = $t if !defined $self->{stream_time} || $t > $self->{stream_time};
	}
	for my $r (@{ $self->{rankings} })
	{
		my ($oc, $nc) = ($old{ $r->{name} }, $newc{ $r->{name} });
		next unless $oc || $nc;
		if ($s->{excluded}{ $r->{name} })
		{
			push @{ $self->{late} }, [ $r->{name}, $o, 'frozen' ];
			next;
		}
		next if $oc && $nc && same($oc, $nc);
		if ($oc && $self->is_late($r, $oc))
		{
			push @{ $self->{late} }, [ $r->{name}, $o, 'old final' ];
			delete $s->{counted}{ $r->{name} };
			$s->{excluded}{ $r->{name} } = 1;
			next;
		}
		if ($oc)
		{
			$self->add($r, $oc, -1);
			delete $s->{counted}{ $r->{name} };
		}
		if ($nc && $self->is_late($r, $nc))
		{
			push @{ $self->{late} }, [ $r->{name}, $o, 'new final' ];
			next;
		}
		if ($nc)
		{
			$self->add($r, $nc, +1);
			$s->{counted}{ $r->{name} } = 1;
		}
	}
	$s->{row} = $new;
	$s->{raw} = $raw_after;
	$s->{deleted} = !$new;
	($s->{lsn}, $s->{seq}) = ($lsn, $seq) if defined $lsn;
	return;
}

# Results as sorted lines "ranking|window_start|group|item|total|count|final",
# final when the window ended at or before stream time minus grace.
sub result_lines
{
	my ($self) = @_;
	my %grace = map { $_->{name} => $_->{grace_s} } @{ $self->{rankings} };
	my @lines;
	for my $e (values %{ $self->{results} })
	{
		my $final = defined $self->{stream_time} && $e->{we} <= $self->{stream_time} - $grace{ $e->{ranking} };
		push @lines, join('|', $e->{ranking}, $e->{ws}, $e->{group}, $e->{item},
			sprintf('%s%d.%02d', $e->{total} < 0 ? '-' : '', abs($e->{total}) / 100, abs($e->{total}) % 100),
			$e->{count}, $final ? 't' : 'f');
	}
	return [ sort @lines ];
}

# "ranking|ws|group|item|label" of the results that have a label.
sub label_lines
{
	my ($self) = @_;
	return [ sort map { join('|', $_->{ranking}, $_->{ws}, $_->{group}, $_->{item}, $_->{label}) }
		  grep { defined $_->{label} } values %{ $self->{results} } ];
}

1;
