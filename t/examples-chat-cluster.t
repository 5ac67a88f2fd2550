# examples/10-chat-showcase as its README runs it: `--workers 2 --pubsub
# redis://...` (issue 13). Chat members on both workers hear each other's
# messages exactly once, the member counts are cluster-wide, and the SSE
# activity feed on one worker reports what happens on the other.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(ROOT start_cli stop_cli stderr_of wait_until);
use PAGI::Test::WebSocket qw(ws_connect);
use PAGI::Test::HTTP qw(sse_stream);
use PAGI::Test::Redis;
use JSON::PP ();
use IO::Socket::IP;
use IO::Select;
use Time::HiRes qw(time);

PAGI::Test::Redis::need_redis();
$SIG{PIPE} = 'IGNORE';
my $redis = PAGI::Test::Redis->start;
my $json = JSON::PP->new->canonical;

my $child = start_cli([ ROOT() . '/examples/10-chat-showcase/app.pl', '--no-access-log', '--workers', 2,
    '--pubsub', $redis->url ], timeout => 20);
ok($child->{ready}, 'the chat example starts with --workers 2 --pubsub') or BAIL_OUT(stderr_of($child));
my $port = $child->{port};
# Both workers up and connected to Redis before clients come: a worker that
# is still starting takes no connections, so all would land on the other.
ok(wait_until(sub { my $e = stderr_of($child); (() = $e =~ /pubsub: connected to/g) >= 2 && $e =~ /2 workers ready/ }, 20),
    'both workers are connected to Redis') or diag(stderr_of($child));
unlike(stderr_of($child), qr/per worker/, 'no per-worker warning with --pubsub');

# The worker serving a client: the pagi-server process holding the server
# side of its TCP connection (ss from iproute2, which set-up installs).
sub worker_of {
    my ($ws) = @_;
    return worker_at($ws->{stream}->read_handle->sockport);
}

sub worker_at {
    my ($client_port) = @_;
    my $out = `ss -tnpH state established '( sport = :$port and dport = :$client_port )' 2>/dev/null`;
    return $out =~ /pid=(\d+)/ ? $1 : undef;
}

sub next_json {
    my ($ws) = @_;
    my $f = eval { $ws->next_frame(15)->get } or return { error => "nothing: $@" };
    return $json->decode($f->{payload});
}

# Members join the lobby until both workers hold at least one.
my (@members, %on);
for my $i (1 .. 30) {
    my ($ws) = eval { ws_connect($port, path => "/ws/lobby?name=u$i", timeout => 10)->get };
    ok($ws, "u$i connects") or last;
    my $welcome = next_json($ws);
    is($welcome->{type}, 'welcome', "u$i is welcomed");
    my $pid = worker_of($ws);
    push @members, { ws => $ws, name => "u$i", pid => $pid };
    push @{ $on{ $pid // 'unknown' } }, $members[-1];
    last if keys(%on) >= 2 && !$on{unknown};
}
is(scalar(grep { $_ ne 'unknown' } keys %on), 2, 'members landed on both workers') or diag(explain([ keys %on ]));
my ($a_pid, $b_pid) = sort keys %on;
my ($ada, $bob) = ($on{$a_pid}[0], $on{$b_pid}[0]);

# /api/rooms on a new connection: (the worker that answered, the body).
# The connection stays open until the answer is read, so ss can name it.
sub rooms_via_some_worker {
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5) or return;
    $sock->autoflush(1);
    print {$sock} "GET /api/rooms HTTP/1.1\r\nHost: x\r\n\r\n";
    my ($sel, $buf, $r) = (IO::Select->new($sock), '');
    my $deadline = time + 5;
    until ((($r) = parse_responses($buf)) && defined $r->{status} && !$r->{incomplete}) {
        my $left = $deadline - time;
        return if $left <= 0 || !$sel->can_read($left) || !sysread($sock, $buf, 65536, length $buf);
    }
    return (worker_at($sock->sockport), $r->{body});
}

# Counts settle: each worker writes its own members to Redis shortly
# (debounced) after a join, so both workers must give the whole count
# before the members' messages are checked for it.
my $n = @members;
my %rooms_by_worker;
ok(wait_until(sub {
    my ($pid, $body) = rooms_via_some_worker() or return 0;
    $rooms_by_worker{ $pid // 'unknown' } = $body;
    2 == grep { ($rooms_by_worker{$_} // '') eq qq({"rooms":{"lobby":$n}}) } $a_pid, $b_pid;
}, 10), "the room's member count is cluster-wide ($n), from both workers") or diag(explain(\%rooms_by_worker));

my ($read, $sock) = sse_stream($port, '/activity');
ok($read && $read->(sub { grep { ($_->{event} // '') eq 'rooms' } @_ }, 15), 'the activity feed opens');
# Each member hears every later member join, from either worker (a notice
# from the other worker comes through Redis, so it may trail the welcome).
for my $i (0 .. $#members) {
    my %want = map { ($_->{name} => 1) } @members[ $i + 1 .. $#members ];
    my @other;
    while (%want) {
        my $m = next_json($members[$i]{ws});
        last if $m->{error};
        if (($m->{type} // '') eq 'join') { delete $want{ $m->{name} } } else { push @other, $m }
    }
    ok(!%want && !@other, "$members[$i]{name} heard every later member join") or diag(explain([ sort(keys %want), @other ]));
}

# A message from a member on one worker reaches every member on both, once.
$ada->{ws}->send_text('hello from A');
my $said = { name => $ada->{name}, text => 'hello from A', type => 'message' };
for my $m (@members) {
    is_deeply(next_json($m->{ws}), $said, "$m->{name} (worker " . ($m->{pid} eq $a_pid ? 'A' : 'B') . ') hears it');
}
$bob->{ws}->send_text('and from B');
$said = { name => $bob->{name}, text => 'and from B', type => 'message' };
is_deeply(next_json($_->{ws}), $said, "$_->{name} hears B's message") for @members;

# The feed (on whichever worker took it) saw both messages with the cluster
# count. Their order there is not promised: each worker publishes its
# activity after its own Redis count query, so B's can overtake A's.
ok($read->(sub { 2 <= grep { ($_->{event} // '') eq 'message' } @_ }, 15), 'the activity feed reports both messages');
my @msgs = sort { $a->{name} cmp $b->{name} } map { $json->decode($_->{data}) } grep { ($_->{event} // '') eq 'message' } $read->();
is_deeply(\@msgs, [ sort { $a->{name} cmp $b->{name} }
    { members => $n, name => $ada->{name}, room => 'lobby' },
    { members => $n, name => $bob->{name}, room => 'lobby' },
], 'with who, where, and the cluster-wide member count') or diag(explain(\@msgs));
PAGI::Test::Server::loop()->delay_future(after => 0.5)->get;    # a late duplicate would arrive meanwhile
is($_->{ws}->pending, 0, "$_->{name}: nothing arrived twice") for @members;

# Leaving on one worker is heard on the other, with the count going down.
$bob->{ws}->send_close(1000);
my $left = next_json($ada->{ws});
is_deeply($left, { members => $n - 1, name => $bob->{name}, type => 'leave' }, "B's member leaves: A's member hears it, count $n - 1")
    or diag(explain($left));
$_->{ws}->send_close(1000) for grep { $_ != $bob } @members;
close $sock;
is(stop_cli($child, 20), 0, 'the server stops with status 0');
$redis->stop;
done_testing;
