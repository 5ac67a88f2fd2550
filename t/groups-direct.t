use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server wait_for start_child);
use PAGI::Test::HTTP qw(open_conn sse_events dechunk);
use PAGI::Test::WebSocket qw(ws_connect parse_frames);
use PAGI::Test::PKI;
use Future::AsyncAwait;
use File::Temp ();
use IO::Select;
use Time::HiRes qw(time);

# A group frame for a member that has nothing of its own to write goes
# straight to its socket from the fan-out (one send, no wake of the stream).
# What must stay true: a member's own output is never overtaken by a group
# frame; SSE events are framed for the body (chunked on HTTP/1.1, bare on
# HTTP/1.0); TLS members are never written to underneath their TLS session;
# and a stream that only receives direct events is not taken for stalled.

my $loop = loop();

my $app = async sub {
    my ($scope, $receive, $send) = @_;
    my %q = map { split /=/, $_, 2 } split /&/, $scope->{query_string} // '';
    if ($scope->{type} eq 'websocket') {
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        await $send->({ type => 'groups.join', group => 'g' });
        await $send->({ type => 'websocket.send', text => 'joined' });
        while (1) {
            my $ev = await $receive->();
            return if $ev->{type} eq 'websocket.disconnect';
            # "burst N": own sends and publishes to the group, alternating,
            # none awaited before the next is made.
            my ($n) = ($ev->{text} // '') =~ /\Aburst (\d+)\z/ or next;
            my @f = map { ($send->({ type => 'websocket.send', text => "own-$_" }),
                           $send->({ type => 'groups.publish', group => 'g', text => "pub-$_" })) } 1 .. $n;
            await Future->wait_all(@f);
            await $send->({ type => 'websocket.send', text => 'burst-done' });
        }
    }
    if ($scope->{type} eq 'sse') {
        await $receive->();
        await $send->({ type => 'sse.start' });
        await $send->({ type => 'groups.join', group => $q{group} // 'g' });
        await $send->({ type => 'sse.comment', comment => 'joined' });
        while (1) {
            my $ev = await $receive->();
            return if $ev->{type} eq 'sse.disconnect';
        }
    }
    await $send->({ type => 'http.response.start', status => 404, headers => [] });
    await $send->({ type => 'http.response.body', body => '' });
};

subtest "a member's own sends and group frames keep their order" => sub {
    my ($server, $port) = start_server(app => $app);
    my ($c) = ws_connect($port, path => '/ws')->get;
    my $texts = sub { [ map { $_->{payload} } grep { $_->{opcode} == 1 } @{ $c->frames } ] };
    $c->wait_until(sub { grep { $_ eq 'joined' } @{ $texts->() } }, 10, 'joined')->get;
    # Publishes while the member has nothing else to write go straight to its socket.
    $server->groups->publish(g => { text => "solo-$_" })->get for 1 .. 20;
    $c->wait_until(sub { grep { $_ eq 'solo-20' } @{ $texts->() } }, 10, 'the solo publishes')->get;
    is_deeply([ grep { /\Asolo-/ } @{ $texts->() } ], [ map {"solo-$_"} 1 .. 20 ], 'solo publishes arrive in order');
    is($server->groups->stats->{delivered_direct}, 20, 'each written straight to the socket');
    for my $n (1, 50, 400) {
        my $before = @{ $texts->() };
        $c->send_text("burst $n");
        $c->wait_until(sub { grep { $_ eq 'burst-done' } @{ $texts->() }[ $before .. $#{ $texts->() } ] }, 20, "burst $n done")->get;
        my @got = @{ $texts->() }[ $before .. $#{ $texts->() } ];
        pop @got;    # burst-done
        is_deeply(\@got, [ map { ("own-$_", "pub-$_") } 1 .. $n ], "burst of $n: every frame once, in the order made");
    }
    my $stats = $server->groups->stats;
    cmp_ok($stats->{delivered}, '>=', 471, "delivered counts every group frame ($stats->{delivered})");
    cmp_ok($stats->{delivered_direct}, '<', $stats->{delivered}, "frames behind the app's own sends were queued");
    $c->close;
    stop_server($server);
};

sub data_of { [ map { $_->{data} } grep { defined $_->{data} } sse_events($_[0]) ] }

# Reads an SSE connection until `$want` matches the bytes after the head.
sub sse_body_until {
    my ($conn, $want) = @_;
    my $raw = eval { $conn->read_until($want, 10)->get } // do { diag "$@"; $conn->buffer };
    my $at = index($raw, "\r\n\r\n");
    return $at < 0 ? '' : substr($raw, $at + 4);
}

subtest 'SSE events are framed for the body: chunked on HTTP/1.1, bare on HTTP/1.0' => sub {
    my ($server, $port) = start_server(app => $app);
    my $h11 = open_conn($port);
    $h11->write("GET /sse?group=s HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n");
    my $h10 = open_conn($port);
    $h10->write("GET /sse?group=s HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n");
    $_->read_until(qr/:joined\n\n/, 10)->get for $h11, $h10;
    my $n = 100;
    $server->groups->publish(s => { text => "e$_", event => 'tick' })->get for 1 .. $n;
    my $last = qr/data: e$n\n\n/;
    my $chunked = sse_body_until($h11, qr/$last\r\n/);
    my $bare = sse_body_until($h10, $last);
    my ($payload, undef, $rest) = dechunk($chunked);
    is($rest, '', 'HTTP/1.1: nothing but whole chunks');
    is_deeply(data_of($payload), [ map {"e$_"} 1 .. $n ], "HTTP/1.1: all $n events, in order, inside the chunks");
    unlike($bare, qr/\A[0-9a-f]+\r\n/, 'HTTP/1.0: no chunk framing');
    is_deeply(data_of($bare), [ map {"e$_"} 1 .. $n ], "HTTP/1.0: all $n events, in order");
    # Nothing else was queued for these streams: the path under test ran.
    my $direct = $server->groups->stats->{delivered_direct};
    cmp_ok($direct, '>=', $n, "events written straight to the sockets: $direct of " . 2 * $n);
    $_->close for $h11, $h10;
    stop_server($server);
};

subtest 'a stream fed only group events is not stalled by request_timeout' => sub {
    my ($server, $port) = start_server(app => $app, request_timeout => 1);
    my $c = open_conn($port);
    $c->write("GET /sse?group=t HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n");
    $c->read_until(qr/:joined\n\n/, 10)->get;
    # 3.2 s of events every 0.2 s: more than three request_timeouts.
    my $t0 = time;
    my $i = 0;
    while (time - $t0 < 3.2) {
        $i++;
        $server->groups->publish(t => { text => "t$i" })->get;
        $loop->delay_future(after => 0.2)->get;
    }
    my $body = sse_body_until($c, qr/data: t$i\n\n/);
    is_deeply(data_of((dechunk($body))[0]), [ map {"t$_"} 1 .. $i ], "every one of the $i events arrived");
    ok(!$c->is_eof, 'the stream is still open');
    $c->close;
    stop_server($server);
};

# TLS: the fan-out must leave TLS sockets to their stream (bytes written
# underneath would corrupt the session). Blocking clients in children.
my $have_tls = eval { require IO::Socket::SSL; 1 } && grep { -x "$_/openssl" } split /:/, $ENV{PATH} // '';
fail('CI=true and openssl or IO::Socket::SSL is missing: ./setup.sh installs them')
    if !$have_tls && ($ENV{CI} // '') eq 'true';
SKIP: {
    skip 'IO::Socket::SSL or openssl missing', 1 unless $have_tls;
    subtest 'TLS members get intact events and frames' => sub {
        my $dir = File::Temp->newdir;
        my $pki = PAGI::Test::PKI->new(dir => "$dir");
        $pki->ca('ca', 'PAGI Direct CA');
        $pki->leaf('server', '/CN=localhost');
        my ($server, $port) = start_server(app => $app, ssl => { cert_file => "$dir/server.pem", key_file => "$dir/server.key" });
        my $n = 200;
        my $read_all = sub {
            my ($request, $want) = @_;
            my $s = IO::Socket::SSL->new(PeerHost => '127.0.0.1', PeerPort => $port,
                SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_NONE(), Timeout => 10) or die "TLS: $IO::Socket::SSL::SSL_ERROR";
            print {$s} $request;
            my ($buf, $t0) = ('', time);
            while (time - $t0 < 20 && $buf !~ $want) {
                my $r = sysread($s, $buf, 65536, length $buf);
                if (!defined $r && $IO::Socket::SSL::SSL_ERROR == IO::Socket::SSL::SSL_WANT_READ()) {
                    IO::Select->new($s)->can_read(1);
                    next;
                }
                last unless $r;
            }
            return $buf;
        };
        my $sse = start_child(sub { $read_all->("GET /sse?group=tls HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n", qr/data: x$n\n\n\r\n/) });
        my $key = 'dGhlIHNhbXBsZSBub25jZQ==';
        my $ws = start_child(sub {
            $read_all->("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                . "Sec-WebSocket-Key: $key\r\nSec-WebSocket-Version: 13\r\n\r\n", qr/x$n\z/);
        });
        ok(wait_for(sub { $server->groups->count('tls') == 1 && $server->groups->count('g') == 1 }, 10), 'both TLS members joined')
            or diag explain $server->groups->stats;
        for my $i (1 .. $n) {
            $server->groups->publish($_ => { text => "x$i" })->get for qw(tls g);
        }
        my $st = $server->groups->stats;
        is($st->{delivered_direct}, 0, "TLS: none of the $st->{delivered} deliveries was written underneath TLS");
        my $sse_raw = $sse->(30) // '';
        my $ws_raw = $ws->(30) // '';
        my $body = substr($sse_raw, index($sse_raw, "\r\n\r\n") + 4);
        my ($payload, undef, $rest) = dechunk($body);
        is($rest, '', 'SSE over TLS: nothing but whole chunks');
        is_deeply(data_of($payload), [ map {"x$_"} 1 .. $n ], "SSE over TLS: all $n events in order");
        my $frames = substr($ws_raw, index($ws_raw, "\r\n\r\n") + 4);
        my @texts = map { $_->{payload} } grep { $_->{opcode} == 1 } parse_frames(\$frames);
        is_deeply(\@texts, [ 'joined', map {"x$_"} 1 .. $n ], "WebSocket over TLS: every frame intact and in order");
        stop_server($server);
    };
}

done_testing;
