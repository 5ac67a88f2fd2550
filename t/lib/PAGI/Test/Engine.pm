package PAGI::Test::Engine;
# Helpers for tests that drive PAGI::Server::Native directly: a started
# engine on 127.0.0.1 port 0, an event pump that waits on the notifier, and
# blocking clients with timeouts. No IO::Async: the engine has its own thread.
use strict;
use warnings;

use parent 'Exporter';
use IO::Socket::IP;
use IO::Select;
use Time::HiRes qw(time);
use PAGI::Server::Native qw(:events);
use PAGI::Test::Server qw(parse_responses);

our @EXPORT_OK = qw(new_listener started_engine pump_until take count_kind client read_until
                    read_response get_request);

sub new_listener {
    my $listener = IO::Socket::IP->new(
        LocalHost => '127.0.0.1', LocalPort => 0, Listen => 128, ReuseAddr => 1,
    ) or die "bind: $@";
    return $listener;
}

# started_engine(%engine_options) → { engine, listener, port, select, events => [] }
# The engine is built by `new` inside $build (default: plain new) so a caller
# can wrap it, e.g. in `local $ENV{...}`.
sub started_engine {
    my (%options) = @_;
    my $build = delete $options{build} // sub { PAGI::Server::Native->new(@_) };
    my $listener = new_listener();
    my $engine = $build->(%options);
    $engine->listen_fd($listener);
    $engine->start;
    open my $wake, '<&', $engine->fd or die "dup: $!";
    return { engine => $engine, listener => $listener, port => $listener->sockport,
             select => IO::Select->new($wake), wake => $wake, events => [] };
}

# Drains events (waiting on the notifier) into $s->{events} until $cond
# holds for the accumulated list or $timeout (default 5 s) passes.
sub pump_until {
    my ($s, $cond, $timeout) = @_;
    my $deadline = time + ($timeout // 5);
    while (1) {
        push @{ $s->{events} }, @{ $s->{engine}->drain_events(256) };
        return 1 if $cond->($s->{events});
        my $left = $deadline - time;
        return 0 if $left <= 0;
        $s->{select}->can_read($left < 0.1 ? $left : 0.1);
    }
}

# Removes and returns the pumped events of $kind (and $id when given).
sub take {
    my ($s, $kind, $id) = @_;
    my (@hit, @keep);
    for my $ev (@{ $s->{events} }) {
        if ($ev->[0] == $kind && (!defined $id || $ev->[1] == $id)) { push @hit, $ev }
        else { push @keep, $ev }
    }
    $s->{events} = \@keep;
    return @hit;
}

sub count_kind {
    my ($events, $kind) = @_;
    return scalar grep { $_->[0] == $kind } @$events;
}

sub client {
    my ($port) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5)
        or die "connect: $@";
    $sock->autoflush(1);
    return $sock;
}

# Reads until $done->($buf), EOF/error, or $timeout (default 5 s); returns the
# bytes. In list context also whether the peer closed (EOF or reset).
sub read_until {
    my ($sock, $done, $timeout) = @_;
    my $sel = IO::Select->new($sock);
    my $deadline = time + ($timeout // 5);
    my ($buf, $closed) = ('', 0);
    while (!$done->($buf)) {
        my $left = $deadline - time;
        last if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread $sock, $buf, 65536, length $buf;
        unless ($n) { $closed = 1; last }
    }
    return wantarray ? ($buf, $closed) : $buf;
}

sub _complete {
    my ($r) = parse_responses($_[0]);
    return $r && !$r->{garbage} && !$r->{incomplete} ? $r : undef;
}

# One complete response from $sock (parsed as by parse_responses), or undef.
sub read_response {
    my ($sock, $timeout) = @_;
    return _complete(scalar read_until($sock, \&_complete, $timeout));
}

sub get_request {
    my ($path, @extra) = @_;
    return "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n" . join('', map { "$_\r\n" } @extra) . "\r\n";
}

1;
