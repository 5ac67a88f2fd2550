package PAGI::Test::GroupsCluster;
# Clients of t/apps/groups-cluster.pl for the groups cluster tests: nodes
# (pagi-server processes through PAGI::Test::CLI), WebSocket members that
# know which process (pid) they landed on, SSE members, commands, and waits
# that a message crossed from one node to another. Every wait is bounded.
use strict;
use warnings;

use parent 'Exporter';
use Encode ();
use JSON::PP ();
use PAGI::Test::Server qw(loop wait_for);
use PAGI::Test::CLI qw(ROOT start_cli stop_cli stderr_of);
use PAGI::Test::HTTP qw(open_conn);
use PAGI::Test::WebSocket qw(ws_connect);

our @EXPORT_OK = qw(start_node member cmd cmd_ok group_texts sse_member sse_events until_crossed settle stats_of by_pid);

my $json = JSON::PP->new->canonical;

sub app_file { ROOT() . '/t/apps/groups-cluster.pl' }

# start_node(@args, \%opt) → a started pagi-server child running the app,
# once each of its processes is connected to Redis (dies if not in time;
# opt unconnected => 1: don't wait for that).
sub start_node {
    my (@args) = @_;
    my %opt = ref $args[-1] eq 'HASH' ? %{ pop @args } : ();
    my $child = start_cli([ app_file(), '--no-access-log', @args ], timeout => 20);
    unless ($child->{ready}) {
        my $err = stderr_of($child);
        stop_cli($child);
        die "pagi-server @args did not start:\n$err";
    }
    # Every process (each worker) says when its Redis bridge is connected
    # (workers accept before that, and publish then fails); the master says
    # when all workers are ready (one that is still starting takes no
    # connections, so they would all land on the other).
    return $child if $opt{unconnected};
    my $workers = 0;
    for my $i (0 .. $#args - 1) { $workers = $args[ $i + 1 ] if $args[$i] eq '--workers' }
    my $want = $workers || 1;
    my $ok = PAGI::Test::CLI::wait_until(sub {
        my $err = stderr_of($child);
        (() = $err =~ /pubsub: connected to/g) >= $want && (!$workers || $err =~ /\b$workers workers ready/);
    }, 20);
    die "pagi-server @args: not connected to Redis / not ready in time:\n" . stderr_of($child) unless $ok;
    return $child;
}

# member($port, %query) → {c => client, pid, node, port}: a WebSocket
# connection to /ws (join => 'g1,g2', tag => ...) once its hello arrived.
sub member {
    my ($port, %q) = @_;
    my $qs = join '&', map { "$_=$q{$_}" } sort keys %q;
    my ($c) = ws_connect($port, path => "/ws?$qs", timeout => 10)->get;
    $c->wait_until(sub { grep { $_->{opcode} == 1 && $_->{payload} =~ /\AH:/ } @{ $_[0]->frames } }, 10, 'the hello')->get;
    my ($h) = grep { $_->{opcode} == 1 && $_->{payload} =~ /\AH:/ } @{ $c->frames };
    my $hello = $json->decode(substr($h->{payload}, 2));
    return { c => $c, pid => $hello->{pid}, node => $hello->{node}, port => $port, tag => $q{tag} };
}

sub _replies { grep { $_->{opcode} == 1 && $_->{payload} =~ /\AR:/ } @{ $_[0]{c}->frames } }

# cmd($member, %command) → ($ok, $result_or_error); waits up to 30 s for the answer.
sub cmd {
    my ($m, %command) = @_;
    my $n = () = _replies($m);
    $m->{c}->send_text($json->encode(\%command));
    $m->{c}->wait_until(sub { _replies($m) > $n }, 30, "the answer to $command{op}")->get;
    my $r = (_replies($m))[$n];
    return @{ $json->decode(Encode::decode('UTF-8', substr($r->{payload}, 2))) };
}

# cmd_ok(...) → the result; dies with the error when the command failed.
sub cmd_ok {
    my ($ok, $r) = cmd(@_);
    die "command failed: $r" unless $ok;
    return $r;
}

sub stats_of { cmd_ok($_[0], op => 'stats') }

# The text group messages a WebSocket member got (optionally only those matching $re).
sub group_texts {
    my ($m, $re) = @_;
    return grep { !defined $re || /$re/ }
        map { $_->{payload} } grep { $_->{opcode} == 1 && $_->{payload} !~ /\A[HR]:/ } @{ $m->{c}->frames };
}

# sse_member($port, $groups) → {conn, pid, port}: an SSE stream that joined.
sub sse_member {
    my ($port, $groups) = @_;
    my $conn = open_conn($port);
    $conn->write("GET /sse?join=$groups HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n");
    my $buf = $conn->read_until(qr/:joined \d+\n\n/, 10)->get;
    my ($pid) = $buf =~ /:joined (\d+)\n\n/;
    return { conn => $conn, pid => $pid, port => $port };
}

# The events an SSE member got: [{event, data, id}] in order.
sub sse_events {
    my ($s) = @_;
    my (undef, $body) = split /\r\n\r\n/, $s->{conn}->buffer, 2;
    return grep { exists $_->{data} } PAGI::Test::HTTP::sse_events($body // '');
}

# until_crossed($from, \@targets, $group, $timeout): publishes "probe:N" to
# $group from member $from every 0.2 s until every target (WebSocket or SSE
# member) got at least one probe. True if they did within $timeout (30 s).
# Needed before counting: a node subscribes to a group's Redis channel when
# its first member joins, asynchronously, and a message published before
# the subscription is in place does not reach it.
sub until_crossed {
    my ($from, $targets, $group, $timeout) = @_;
    my $got = sub {
        my ($t) = @_;
        return $t->{c} ? scalar(group_texts($t, qr/\Aprobe:/)) : scalar(grep { $_->{data} =~ /\Aprobe:/ } sse_events($t));
    };
    my $deadline = loop()->time + ($timeout // 30);
    my $n = 0;
    while (loop()->time < $deadline) {
        cmd($from, op => 'pub', group => $group, text => 'probe:' . $n++);
        return 1 if wait_for(sub { !grep { !$got->($_) } @$targets }, 0.2);
    }
    return 0;
}

# Nothing more arrives for a moment (a duplicate would by then).
sub settle { loop()->delay_future(after => $_[0] // 0.5)->get }

# by_pid(@members) → {pid => [members]}.
sub by_pid {
    my %h;
    push @{ $h{ $_->{pid} } }, $_ for @_;
    return \%h;
}

1;
