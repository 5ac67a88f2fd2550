package PAGI::Server::AccessLog;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp ();
use JSON::PP ();
use POSIX ();

=head1 NAME

PAGI::Server::AccessLog - access log line formats of PAGI::Server

=head1 SYNOPSIS

    my $format = PAGI::Server::AccessLog->compile('combined');
    my $line   = $format->(\%entry);   # ends with "\n"

=head1 DESCRIPTION

Turns a format (a preset name or a string of atoms, PAGI-SPEC section 5.4)
into a closure, once, so writing a line costs one call per request.

Presets:

    clf       %h - - [%t] "%m %U%q" %s %ds            (the default)
    common    %h - - [%t] "%r" %s %b
    combined  %h - - [%t] "%r" %s %b "%{Referer}i" "%{User-Agent}i"
    tiny      %m %U%q %s %Dms
    json      one JSON object per line: time, client, method, path, query,
              protocol, status, bytes, duration (seconds), referer, user_agent

Atoms: C<%h> client address (C<unix> without one), C<%l> C<%u> C<->,
C<%t> time (C<10/Feb/2026:12:34:56 +0000>), C<%r> request line, C<%m>
method, C<%U> path, C<%q> C<?query> or nothing, C<%H> protocol, C<%s>
status, C<%b> body bytes (C<-> for none), C<%B> body bytes, C<%d> seconds
with 3 decimals, C<%D> microseconds, C<%T> whole seconds, C<%{Name}i>
request header (C<-> if missing), C<%%> a percent sign.

An entry is a hash: C<client>, C<time> (epoch seconds, fractional),
C<method>, C<path> (raw, still encoded), C<query>, C<protocol>
(C<HTTP/1.1>), C<status>, C<bytes>, C<duration> (seconds) and C<headers>
(the scope's header pairs).

=cut

my %PRESETS = (
    clf      => '%h - - [%t] "%m %U%q" %s %ds',
    common   => '%h - - [%t] "%r" %s %b',
    combined => '%h - - [%t] "%r" %s %b "%{Referer}i" "%{User-Agent}i"',
    tiny     => '%m %U%q %s %Dms',
);

my ($cached_second, $cached_time) = (-1, '');

sub _time {
    my ($t) = @_;
    my $s = int $t;
    if ($s != $cached_second) {
        $cached_second = $s;
        $cached_time = POSIX::strftime('%d/%b/%Y:%H:%M:%S +0000', gmtime $s);
    }
    return $cached_time;
}

sub _header {
    my ($e, $name) = @_;
    $name = lc $name;
    for my $pair (@{ $e->{headers} // [] }) {
        return $pair->[1] if $pair->[0] eq $name;
    }
    return '-';
}

my %ATOMS = (
    h => sub { $_[0]{client} // 'unix' },
    l => sub { '-' },
    u => sub { '-' },
    t => sub { _time($_[0]{time}) },
    r => sub { "$_[0]{method} $_[0]{path}" . (length $_[0]{query} ? "?$_[0]{query}" : '') . " $_[0]{protocol}" },
    m => sub { $_[0]{method} },
    U => sub { $_[0]{path} },
    q => sub { length $_[0]{query} ? "?$_[0]{query}" : '' },
    H => sub { $_[0]{protocol} },
    s => sub { $_[0]{status} // '-' },
    b => sub { $_[0]{bytes} ? $_[0]{bytes} : '-' },
    B => sub { $_[0]{bytes} // 0 },
    d => sub { sprintf '%.3f', $_[0]{duration} },
    D => sub { int($_[0]{duration} * 1_000_000) },
    T => sub { int $_[0]{duration} },
);

=head1 METHODS

=head2 compile

    my $format = PAGI::Server::AccessLog->compile($preset_or_atoms);

Croaks naming an unknown atom.

=cut

sub compile {
    my ($class, $format) = @_;
    return \&_json if $format eq 'json';
    $format = $PRESETS{$format} // $format;
    my @parts;
    my $rest = $format;
    while (length $rest) {
        if ($rest =~ s/\A([^%]+)//) {
            my $text = $1;
            push @parts, sub { $text };
        }
        elsif ($rest =~ s/\A%%//) {
            push @parts, sub { '%' };
        }
        elsif ($rest =~ s/\A%\{([^}]+)\}i//) {
            my $name = $1;
            push @parts, sub { _header($_[0], $name) };
        }
        elsif ($rest =~ s/\A%([A-Za-z])//) {
            my $atom = $ATOMS{$1} or Carp::croak("access_log_format: unknown atom '%$1'");
            push @parts, $atom;
        }
        else {
            Carp::croak("access_log_format: a lone '%' at '" . substr($rest, 0, 10) . "'");
        }
    }
    return sub {
        my ($e) = @_;
        return join('', map { $_->($e) } @parts) . "\n";
    };
}

=head2 is_valid

    PAGI::Server::AccessLog->is_valid($format);   # true, or false with $@ set

=cut

sub is_valid {
    my ($class, $format) = @_;
    return eval { $class->compile($format); 1 } ? 1 : 0;
}

my $JSON = JSON::PP->new->canonical->utf8(0);

sub _json {
    my ($e) = @_;
    my $referer = _header($e, 'referer');
    my $agent   = _header($e, 'user-agent');
    return $JSON->encode({
        time       => _time($e->{time}),
        client     => $e->{client},
        method     => $e->{method},
        path       => $e->{path},
        query      => $e->{query},
        protocol   => $e->{protocol},
        status     => defined $e->{status} ? 0 + $e->{status} : undef,
        bytes      => 0 + ($e->{bytes} // 0),
        duration   => 0 + sprintf('%.6f', $e->{duration}),
        referer    => $referer eq '-' ? undef : $referer,
        user_agent => $agent eq '-' ? undef : $agent,
    }) . "\n";
}

1;
