# PAGI::Simple on the server's groups extension (issue 13): under
# PAGI::Server an app without a pubsub backend switches $app->pubsub to
# PAGI::Simple::PubSub::Server, and its WebSocket rooms, route broadcasts
# and SSE channels become engine groups (the hub's published/delivered
# counters move; the in-memory hub stays empty): exactly-once delivery,
# exclude self, leave on close, counts, Perl subscribers and JSON messages.
# The same app without the extension (PAGI::Test::Client, and PAGI::Server
# behind a wrapper that deletes it) still runs on the in-memory hub. Last, a
# redis-server of this file's own and bin/pagi-server --workers 2 --pubsub:
# a room broadcast and an SSE publish reach clients on both workers, and the
# cluster count sees every member (skipped without redis-server, failed
# under CI=true).
use strict;
use warnings;
use v5.36;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn);
use PAGI::Test::WebSocket qw(ws_connect);
use PAGI::Test::Simple qw(client request);
use PAGI::Test::CLI qw(free_port start_cli stop_cli stderr_of wait_until);
use PAGI::Simple;
use PAGI::Simple::PubSub;
use File::Temp ();
use IO::Select;
use IO::Socket::IP;
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time);

local $SIG{ALRM} = sub { die "simple-groups.t: timed out\n" };
alarm 240;
$SIG{PIPE} = 'IGNORE';

my $loop = loop();
my $CI = ($ENV{CI} // '') eq 'true';

# The app under test, also written to a file for pagi-server (so both are one text).
my $APP_SOURCE = <<'APP';
use PAGI::Simple;
use Future::AsyncAwait;
my $app = PAGI::Simple->new(name => 'groups');
$app->websocket('/room/:name' => sub ($ws) {
    my $room = $ws->param('name');
    $ws->join($room);
    $ws->send("R:joined $$ " . $ws->room_count($room));
    $ws->on(message => sub ($data) {
        return $ws->send('R:reached ' . $ws->broadcast($room, $1)) if $data =~ /\Aothers (.*)\z/s;
        return $ws->send('R:reached ' . $ws->broadcast_all($room, $1)) if $data =~ /\Aall (.*)\z/s;
        return $ws->send('R:route ' . $ws->broadcast($1)) if $data =~ /\Aroute (.*)\z/s;
        return $ws->send('R:json ' . $ws->broadcast_all($room, { said => 'hi', n => [1, 2] })) if $data eq 'json';
        if ($data eq 'leave') { $ws->leave($room); return $ws->send('R:left ' . join(',', @{ $ws->rooms })) }
        if ($data eq 'count') {
            return $ws->room_cluster_count($room)->then(sub ($n) { $ws->send("R:count $$ " . $ws->room_count($room) . " $n") });
        }
    });
});
$app->sse('/feed/:channel' => sub ($sse) {
    my $channel = $sse->param('channel');
    $sse->subscribe($channel);
    $sse->comment("subscribed $$ " . $sse->channel_count($channel));
    $sse->publish_others($channel, 'a newcomer', event => 'hello') if ($sse->query_param('greet') // '') eq '1';
});
$app->post('/sse/:channel' => sub ($c) {
    $c->text('n=' . $c->app->sse_publish($c->param('channel'), $c->req->body, event => 'news', id => 5));
});
$app->post('/room/:name' => sub ($c) { $c->text('n=' . $c->app->pubsub->room_send($c->param('name'), $c->req->body)) });
$app->get('/count/:name' => async sub ($c) {
    my $name = $c->param('name');
    my $cluster = await $c->app->pubsub->room_cluster_count($name);
    await $c->text(join ' ', $c->app->pubsub->room_count($name), $cluster, scalar @{ $c->app->pubsub->room_members($name) });
});
$app;
APP

sub make_app { my $app = eval $APP_SOURCE or die $@; $app }

# --- WebSocket client helpers ---------------------------------------------------

sub ws ($port, $path) {
    my ($c) = ws_connect($port, path => $path)->get;
    $c->wait_until(sub { replies($c) >= 1 }, 10, 'the join reply')->get;
    return $c;
}
sub texts ($c)    { map { $_->{payload} } grep { $_->{opcode} == 1 } @{ $c->frames } }
sub replies ($c)  { grep { /\AR:/ } texts($c) }
sub messages ($c) { grep { !/\AR:/ } texts($c) }
# Sends a command and returns its reply (without the R:).
sub cmd ($c, $text) {
    my $n = () = replies($c);
    $c->send_text($text);
    $c->wait_until(sub { replies($c) > $n }, 10, "the reply to '$text'")->get;
    return substr((replies($c))[$n], 2);
}
sub wait_messages ($c, $n) {
    $c->wait_until(sub { messages($c) >= $n }, 10, "$n message(s)")->get;
    return [ messages($c) ];
}
# A moment for anything more (a duplicate) to arrive.
sub settle { $loop->delay_future(after => 0.3)->get }

sub sse_open ($port, $path) {
    my $c = open_conn($port);
    $c->write("GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n");
    $c->read_until(qr/:subscribed \d+ \d+\n\n/, 10)->get;
    return $c;
}
sub sse_events ($c) {
    my (undef, $body) = split /\r\n\r\n/, $c->buffer, 2;
    return [ map { my $e = $_; join ' ', map { "$_=$e->{$_}" } grep { defined $e->{$_} } qw(event id data) }
        grep { defined $_->{data} } PAGI::Test::HTTP::sse_events($body // '') ];
}
sub wait_sse ($c, $n) {
    $c->read_until(sub { @{ sse_events($c) } >= $n }, 10)->get;
    return sse_events($c);
}

# --- on PAGI::Server: the engine does the fan-out ----------------------------------

PAGI::Simple::PubSub->reset;
my $memory = PAGI::Simple::PubSub->instance;
my $app = make_app();
my @early;
# Subscribed before the first request: made on the in-memory hub, moved over at the switch.
$app->pubsub->subscribe('room:lobby', sub ($m, $ch) { push @early, ref $m ? JSON::PP->new->canonical->encode($m) : $m });
my @warnings;
local $SIG{__WARN__} = sub { push @warnings, @_; warn @_ };
my ($server, $port) = start_server(app => $app->to_app);
my $hub = $server->groups;
sub stats () { my $s = $hub->stats; return { map { $_ => $s->{$_} } qw(published delivered) } }

subtest 'rooms are engine groups' => sub {
    my $a = ws($port, '/room/lobby');
    isa_ok($app->pubsub, 'PAGI::Simple::PubSub::Server', '$app->pubsub after the first request');
    is($app->pubsub->hub, $hub, 'on the server hub');
    # The room's counts include the Perl subscriber of room:lobby above (as the in-memory hub's do).
    like((replies($a))[0], qr/\AR:joined $$ 2\z/, 'the join is in place when the handler counts (it and the Perl subscriber)');
    my $b = ws($port, '/room/lobby');
    my $c = ws($port, '/room/lobby');
    my $k = ws($port, '/room/kitchen');
    is($hub->count('room:lobby'), 3, 'the hub counts three members of room:lobby');
    is($hub->count('ws-route:/room/:name'), 4, 'and four of the route group');
    my @ids = @{ $app->pubsub->room_members('lobby') };
    is(scalar(grep { /\Aws$$\.\d+\z/ } @ids[0 .. 2]) . ' ' . $ids[3], '3 sub1', 'room_members: the WebSocket ids in joining order, then the Perl subscriber');

    my $before = stats();
    is(cmd($a, 'others hello'), 'reached 3', 'broadcast returns the local receivers (2 members, 1 Perl subscriber), without the sender');
    my $after = stats();
    is($after->{published} - $before->{published}, 1, 'one publish went through the engine');
    is($after->{delivered} - $before->{delivered}, 2, 'which wrote it to two members');
    is_deeply(wait_messages($_, 1), ['hello'], 'a member gets it') for $b, $c;
    is(cmd($b, 'all everyone'), 'reached 4', 'broadcast_all counts the sender');
    is(cmd($k, 'route to the route'), 'route 3', 'a route broadcast reaches the other clients of the route');
    is(cmd($c, 'json'), 'json 4', 'a reference is broadcast');
    my $json = '{"n":[1,2],"said":"hi"}';
    my %want = (a => [ 'everyone', 'to the route', $json ], b => [ 'hello', 'everyone', 'to the route', $json ]);
    $want{c} = $want{b};
    my %ws = (a => $a, b => $b, c => $c);
    wait_messages($ws{$_}, scalar @{ $want{$_} }) for sort keys %ws;
    settle();
    is_deeply([ messages($ws{$_}) ], $want{$_}, "$_: each message exactly once, a reference as JSON") for sort keys %ws;
    is_deeply([ messages($k) ], [], 'another room heard nothing (and the route broadcast skipped its sender)');
    is_deeply(\@early, [ 'hello', 'everyone', $json ],
        'a Perl subscriber of room:lobby (subscribed before the first request) hears the room, with the structure back');

    my $r = request($port, POST => '/room/lobby', body => 'from http');
    is($r->{body}, 'n=4', 'room_send from an HTTP route: 3 members and the Perl subscriber');
    push @{ $want{$_} }, 'from http' for qw(a b);
    for (sort keys %ws) { is(wait_messages($ws{$_}, scalar @{ $want{$_} })->[-1], 'from http', "$_ gets it") }
    ok(wait_for(sub { $early[-1] eq 'from http' }, 10), 'and the Perl subscriber');

    my @mine;
    my $id = $app->pubsub->subscribe('room:lobby', sub ($m, $ch) { push @mine, $m });
    is($app->pubsub->room_send('lobby', 'not for you', exclude => $id), 4, 'exclude a Perl subscriber: 3 members and the other subscriber');
    is($app->pubsub->room_send('lobby', 'for all'), 5, 'then all five');
    ok(wait_for(sub { @mine >= 1 && $early[-1] eq 'for all' }, 10), 'both published');
    settle();
    is_deeply(\@mine, ['for all'], 'the excluded subscriber missed only the one message');
    is_deeply([ @early[-2, -1] ], [ 'not for you', 'for all' ], 'the other got both');
    $app->pubsub->unsubscribe('room:lobby', $id);
    push @{ $want{$_} }, 'not for you', 'for all' for qw(a b);

    my ($excluded) = @{ $app->pubsub->room_members('lobby') };
    is($app->pubsub->room_send('lobby', 'but one', exclude => $excluded), 3, 'exclude a WebSocket member by its id');
    wait_messages($ws{$_}, scalar @{ $want{$_} }) for sort keys %ws;
    settle();
    is(scalar(grep { $_ eq 'but one' } map { messages($_) } $a, $b, $c), 2, 'two of the three members got it');

    is(request($port, GET => '/count/lobby')->{body}, '4 4 4', 'room_count, room_cluster_count (no Redis: local), room_members');
    is(cmd($b, 'leave'), 'left ', 'leave');
    is(scalar @{ $app->pubsub->room_members('lobby') }, 3, 'room_members without it');
    is($hub->count('room:lobby'), 2, 'the engine group lost the member');
    $a->send_close(1000, '');
    $a->wait_eof(10)->get;
    ok(wait_for(sub { $hub->count('room:lobby') == 1 }, 10), 'a closed connection leaves its rooms');
    is(request($port, GET => '/count/lobby')->{body}, '2 2 2', 'the counts follow (one member, one Perl subscriber)');
    $_->send_close(1000, '') for $b, $c, $k;
    $_->wait_eof(10)->get for $b, $c, $k;
    ok(wait_for(sub { $hub->count('ws-route:/room/:name') == 0 }, 10), 'and its route group');
    is_deeply($memory->channels, [], 'the in-memory hub stayed empty');
    ok(!$memory->has_channel('room:lobby') && !$memory->has_channel('ws-route:/room/:name'), 'no rooms or routes in it either');
};

subtest 'SSE channels are engine groups' => sub {
    my $s1 = sse_open($port, '/feed/news');
    my $s2 = sse_open($port, '/feed/news');
    like($s2->buffer, qr/:subscribed $$ 2\n/, 'channel_count sees both streams');
    is($hub->count('sse:news'), 2, 'the hub has two members of sse:news');
    my $before = stats();
    my $r = request($port, POST => '/sse/news', body => "two\nlines");
    is($r->{body}, 'n=2', 'sse_publish returns the local streams reached');
    is(stats()->{published} - $before->{published}, 1, 'one engine publish');
    is(stats()->{delivered} - $before->{delivered}, 2, 'written to both streams');
    is_deeply(wait_sse($_, 1), ["event=news id=5 data=two\nlines"], 'each stream gets the event with its fields') for $s1, $s2;
    my $s3 = sse_open($port, '/feed/news?greet=1');
    is_deeply(wait_sse($_, 2)->[1], 'event=hello data=a newcomer', 'publish_others reaches the others') for $s1, $s2;
    settle();
    is_deeply(sse_events($s3), [], 'but not the publisher');
    is_deeply(sse_events($s1), [ "event=news id=5 data=two\nlines", 'event=hello data=a newcomer' ], 'exactly once each');
    $_->close for $s1, $s2, $s3;
    ok(wait_for(sub { $hub->count('sse:news') == 0 }, 10), 'closed streams leave the channel');
    ok(!$memory->has_channel('sse:news'), 'the in-memory hub has no SSE channel');
};

is_deeply([ grep { /failed/ } @warnings ], [], 'no failures warned');
stop_server($server);

# --- the backend on its own: failures are warned about -------------------------------

subtest 'PAGI::Simple::PubSub::Server: a failed publish is warned about' => sub {
    package FailingHub {
        sub new { bless { subs => {} }, shift }
        sub publish { Future->fail("groups.publish: redis unavailable: connection refused\n", 'pagi') }
        sub subscribe { 'h1' }
        sub unsubscribe { 1 }
        sub count { 2 }
        sub node { 'n' }
    }
    require PAGI::Simple::PubSub::Server;
    my $backend = PAGI::Simple::PubSub::Server->new(hub => FailingHub->new);
    my @w;
    local $SIG{__WARN__} = sub { push @w, @_ };
    is($backend->room_send('lobby', 'x'), 2, 'room_send still returns the local members');
    like(join('', @w), qr/PubSub::Server: publish to 'room:lobby' failed: groups\.publish: redis unavailable: connection refused/,
        'and the failure is warned about, naming the group');
    ok(!eval { PAGI::Simple::PubSub::Server->new(hub => {}) }, 'new needs a hub');
};

# --- without the extension: the in-memory hub ---------------------------------------

subtest 'without the groups extension: PAGI::Test::Client' => sub {
    PAGI::Simple::PubSub->reset;
    my $mem = PAGI::Simple::PubSub->instance;
    my $plain = make_app();
    my $client = client($plain);
    my $a = $client->websocket('/room/lobby');
    is($a->receive, "R:joined $$ 1", 'joined');
    my $b = $client->websocket('/room/lobby');
    is($b->receive, "R:joined $$ 2", 'room_count from the in-memory hub');
    is($plain->pubsub, $mem, '$app->pubsub is the in-memory hub');
    is(scalar @{ $mem->room_members('lobby') }, 2, 'which holds the room');
    $a->send_text('others hi');
    is($a->receive, 'R:reached 1', 'broadcast returns the count');
    is($b->receive, 'hi', 'delivered');
    $b->send_text('json');
    is(join('|', sort map { $_->receive } $a, $b, $b), 'R:json 2|{"n":[1,2],"said":"hi"}|{"n":[1,2],"said":"hi"}', 'a reference goes as JSON here too');
    my $s = $client->sse('/feed/news');
    is($client->post('/sse/news', body => 'x')->content, 'n=1', 'sse_publish');
    is_deeply([ @{ $s->next_event }{qw(event id data)} ], [ 'news', 5, 'x' ], 'reaches the stream');
    is($client->get('/count/lobby')->content, '2 2 2', 'the counts (room_cluster_count: a done Future)');
    $_->close for $a, $b, $s;
    $client->stop;
    ok(!$mem->has_channel('room:lobby'), 'closing left the room');
};

subtest 'without the groups extension: PAGI::Server behind a wrapper that deletes it' => sub {
    PAGI::Simple::PubSub->reset;
    my $mem = PAGI::Simple::PubSub->instance;
    my $plain = make_app();
    my $inner = $plain->to_app;
    my ($srv, $p) = start_server(app => sub ($scope, @rest) {
        delete $scope->{extensions}{groups} if $scope->{extensions};
        return $inner->($scope, @rest);
    });
    my $before = $srv->groups->stats->{published};
    my $a = ws($p, '/room/lobby');
    my $b = ws($p, '/room/lobby');
    is(cmd($a, 'others hi'), 'reached 1', 'broadcast');
    is_deeply(wait_messages($b, 1), ['hi'], 'delivered');
    is(scalar @{ $mem->room_members('lobby') }, 2, 'the in-memory hub holds the room');
    is($srv->groups->stats->{published}, $before, 'nothing went through the engine groups');
    $_->send_close(1000, '') for $a, $b;
    $_->wait_eof(10)->get for $a, $b;
    ok(wait_for(sub { !$mem->has_channel('room:lobby') }, 10), 'closing left the room');
    stop_server($srv);
};

# --- two workers on Redis ------------------------------------------------------------

my $REDIS_SERVER = '/usr/bin/redis-server';
my $dir = File::Temp->newdir;
my ($redis_pid, $redis_port);
SKIP: {
    unless (-x $REDIS_SERVER) {
        fail("CI=true and $REDIS_SERVER is missing (./setup.sh installs redis-server)") if $CI;
        skip "$REDIS_SERVER is not installed (./setup.sh installs Debian's redis-server)", 1;
    }
    subtest 'pagi-server --workers 2 --pubsub redis://...' => \&two_workers;
}

sub start_redis {
    for my $attempt (1 .. 3) {
        $redis_port = free_port();
        $redis_pid = fork // die "fork: $!";
        if (!$redis_pid) {
            open STDIN, '<', '/dev/null';
            open STDOUT, '>>', "$dir/redis.log";
            open STDERR, '>&', \*STDOUT;
            exec $REDIS_SERVER, '--port', $redis_port, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
                '--dir', "$dir", '--daemonize', 'no' or POSIX::_exit(127);
        }
        return 1 if wait_until(sub { redis_ping() }, 10);
        stop_redis();
    }
    return 0;
}
sub stop_redis {
    return unless $redis_pid;
    kill 'TERM', $redis_pid;
    waitpid $redis_pid, 0;
    undef $redis_pid;
}
END { stop_redis() }
sub redis_ping {
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $redis_port, Timeout => 2) or return 0;
    syswrite $sock, "PING\r\n";
    my $sel = IO::Select->new($sock);
    return 0 unless $sel->can_read(2);
    sysread $sock, my $buf, 64;
    return ($buf // '') =~ /\A\+PONG/ ? 1 : 0;
}

sub two_workers {
    ok(start_redis(), "redis-server runs on 127.0.0.1:$redis_port") or return diag(do { open my $l, '<', "$dir/redis.log"; local $/; <$l> } // '');
    my $file = "$dir/app.pl";
    open my $fh, '>', $file or die "$file: $!";
    print {$fh} $APP_SOURCE =~ s/^\$app;\n\z/\$app->to_app;\n/mr;
    close $fh;
    my $child = start_cli([ $file, '--workers', 2, '--no-access-log', '--pubsub', "redis://127.0.0.1:$redis_port" ], timeout => 20);
    ok($child->{ready}, 'pagi-server --workers 2 --pubsub runs the app') or do { diag(stderr_of($child)); stop_cli($child); return };
    my $port = $child->{port};

    # Connections until both workers have members (each reply names its worker's pid).
    my (@clients, %pids);
    for (1 .. 40) {
        my $c = eval { ws($port, '/room/big') } or do { diag("connect: $@"); last };
        push @clients, $c;
        my ($pid) = (replies($c))[0] =~ /\AR:joined (\d+) /;
        $pids{$pid}++;
        last if keys %pids >= 2 && @clients >= 4;
    }
    is(scalar keys %pids, 2, scalar(@clients) . ' clients, on both workers') or diag(explain(\%pids));
    my $n = @clients;
    my $count;
    ok(wait_until(sub { $count = cmd($clients[0], 'count'); $count =~ / $n\z/ }, 10),
        "the cluster count sees all $n members") or diag($count);
    my ($local) = $count =~ /\Acount \d+ (\d+) /;
    ok($local > 0 && $local < $n, "while the local count is this worker's ($local)");

    my ($last_pid) = (replies($clients[-1]))[0] =~ /joined (\d+)/;
    is(cmd($clients[-1], 'all across'), "reached $pids{$last_pid}", 'broadcast_all returns the members on its own worker');
    for my $i (0 .. $#clients) {
        is_deeply(wait_messages($clients[$i], 1), ['across'], "client $i gets the room broadcast") or last;
    }
    my ($rr) = parse_responses(raw_exchange($port, "POST /room/big HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\nConnection: close\r\n\r\nfrom http", timeout => 10)->get);
    like($rr && $rr->{body}, qr/\An=\d+\z/, 'room_send from an HTTP request (on one of the workers)');
    for my $i (0 .. $#clients) {
        is(wait_messages($clients[$i], 2)->[1], 'from http', "client $i gets it") or last;
    }
    # An HTTP publish lands on one worker; every SSE stream gets it.
    my (@streams, %sse_pids);
    for (1 .. 40) {
        my $s = eval { sse_open($port, '/feed/wide') } or last;
        push @streams, $s;
        my ($pid) = $s->buffer =~ /:subscribed (\d+) /;
        $sse_pids{$pid}++;
        last if keys %sse_pids >= 2;
    }
    is(scalar keys %sse_pids, 2, scalar(@streams) . ' SSE streams, on both workers');
    my ($r) = parse_responses(raw_exchange($port, "POST /sse/wide HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nConnection: close\r\n\r\nwide", timeout => 10)->get);
    like($r && $r->{body}, qr/\An=\d+\z/, 'sse_publish answered');
    is_deeply(wait_sse($_, 1), ['event=news id=5 data=wide'], 'an SSE stream gets the event') for @streams;
    settle();
    is(scalar(grep { messages($_) == 2 } @clients), $n, 'every WebSocket client got each message exactly once');
    is(scalar(grep { @{ sse_events($_) } == 1 } @streams), scalar @streams, 'every stream the event exactly once');

    $_->close for @streams;
    $_->send_close(1000, '') for @clients;
    $_->wait_eof(10)->get for @clients;
    is(stop_cli($child), 0, 'the server stops cleanly');
    unlike($child->{stderr}, qr/\bfailed\b/i, 'no failures logged') or diag($child->{stderr});
    stop_redis();
}

done_testing;
