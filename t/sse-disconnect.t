use strict;
use warnings;
use utf8;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn split_head dechunk);
use PAGI::Server::Runner;
use Future::AsyncAwait;
use IO::Async::Timer::Periodic;
use IO::Socket::IP;
use Time::HiRes ();

# How an sse stream ends (PAGI-SPEC 1.8, 3.3.2; issue 5): a client that
# leaves while the app is idle, write backpressure, graceful shutdown,
# sse.close, and the broadcaster example with several clients.

$SIG{PIPE} = 'IGNORE';
my $loop = loop();
sub now { Time::HiRes::time() }
my $MiB = 1024 * 1024;

sub sse_req {
    my ($path, @headers) = @_;
    return "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n" . join('', map { "$_\r\n" } @headers) . "\r\n";
}

# Awaits $f, recording ['ok'] or ['fail', message] in @$log.
async sub try_send {
    my ($log, $f) = @_;
    my $ok = eval { await $f; 1 };
    push @$log, $ok ? ['ok'] : [ 'fail', "$@" ];
    return $ok;
}

sub with_timeout {
    my ($f, $t) = @_;
    return Future->wait_any($f, $loop->delay_future(after => $t)->then(sub { Future->fail("timed out after ${t}s\n") }));
}

my ($handler, %rec);
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    return await $handler->($scope, $receive, $send);
};
my ($server, $port) = start_server(app => $app);

subtest 'a client leaving while the app waits on $receive is noticed at once' => sub {
    %rec = ();
    my @log;
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        $rec{first} = await $receive->();
        await $send->({ type => 'sse.start' });
        await $send->({ type => 'sse.send', data => 'hello' });
        $rec{waiting} = now();
        $rec{event} = await $receive->();    # idle: no write will reveal the close
        $rec{event_at} = now();
        # After the disconnect every send is a silent no-op.
        for my $ev ({ type => 'sse.send', data => 'x' }, { type => 'sse.comment', comment => 'x' },
                    { type => 'sse.keepalive', interval => 1 }, { type => 'sse.close' }) {
            my $f = $send->($ev);
            push @log, [ $ev->{type}, $f->is_ready ? ($f->is_done ? 'done' : 'failed') : 'pending' ];
            await try_send([], $f);
        }
        $rec{again} = await $receive->();
        $rec{returned} = 1;
    };
    my $c = open_conn($port);
    $c->write(sse_req('/idle'));
    ok eval { $c->read_until(qr/data: hello\n\n\r\n/, 3)->get; 1 }, 'got the first event' or diag($@);
    ok wait_for(sub { $rec{waiting} }, 2), 'the app waits on $receive';
    $loop->delay_future(after => 0.2)->get;
    ok !$rec{event}, 'nothing delivered while the client stays';
    my $closed_at = now();
    $c->close;
    ok wait_for(sub { $rec{event} }, 3), 'the pending $receive completed';
    my $delay = ($rec{event_at} // 99) - $closed_at;
    cmp_ok $delay, '<', 1, sprintf('within 1 s of the close (%.3fs)', $delay);
    is_deeply $rec{first}, { type => 'sse.request', body => '', more => 0 }, 'first event was sse.request';
    is_deeply $rec{event}, { type => 'sse.disconnect', reason => 'client_closed' }, 'sse.disconnect, reason client_closed';
    is_deeply \@log, [ map { [ $_, 'done' ] } qw(sse.send sse.comment sse.keepalive sse.close) ],
        'sends after the disconnect are done Futures (silent no-ops)';
    ok wait_for(sub { $rec{returned} }, 2), 'the app returned';
    is_deeply $rec{again}, { type => 'sse.disconnect', reason => 'client_closed' }, 'a later $receive says the same';
};

subtest 'a client that left before the app calls $receive: the next $receive says so' => sub {
    %rec = ();
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $receive->();
        await $send->({ type => 'sse.start' });
        await $send->({ type => 'sse.send', data => 'hi' });
        await $loop->delay_future(after => 0.5);
        my $f = $receive->();
        $rec{ready} = $f->is_ready ? 1 : 0;
        $rec{event} = await with_timeout($f, 2);
    };
    my $c = open_conn($port);
    $c->write(sse_req('/gone-early'));
    ok eval { $c->read_until(qr/data: hi\n\n\r\n/, 3)->get; 1 }, 'got the event';
    $c->close;
    ok wait_for(sub { $rec{event} }, 3), 'the app got an event';
    is $rec{ready}, 1, 'the $receive Future was ready at once';
    is_deeply $rec{event}, { type => 'sse.disconnect', reason => 'client_closed' }, 'sse.disconnect client_closed';
};

subtest 'sse.close: a pending $receive yields sse.disconnect x-server-closed' => sub {
    %rec = ();
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $receive->();
        await $send->({ type => 'sse.start' });
        my $pending = $receive->();
        $rec{pending_before} = $pending->is_ready ? 0 : 1;
        await $send->({ type => 'sse.send', data => 'closing' });
        await $send->({ type => 'sse.close', reason => 'finished' });
        $rec{event} = await with_timeout($pending, 2);
        $rec{again} = await with_timeout($receive->(), 2);
    };
    my $c = open_conn($port);
    $c->write(sse_req('/closing'));
    my $buf = eval { $c->wait_eof(3)->get } // '';
    $c->close;
    my (undef, $body) = split_head($buf);
    my ($text, $complete) = dechunk($body // '');
    is $text, "data: closing\n\n", 'the event before sse.close';
    ok $complete, 'terminated stream, then EOF';
    ok wait_for(sub { $rec{again} }, 3), 'the app got its events';
    is $rec{pending_before}, 1, '$receive was pending before sse.close';
    is_deeply $rec{event}, { type => 'sse.disconnect', reason => 'x-server-closed' }, 'pending $receive: sse.disconnect x-server-closed';
    is_deeply $rec{again}, { type => 'sse.disconnect', reason => 'x-server-closed' }, 'a later $receive: the same';
    unlike $buf, qr/finished/, 'the close reason is not sent to the client';
};

subtest 'write backpressure: a client that does not read makes $send wait' => sub {
    my $events  = 10_000;
    my $payload = 'p' x 1000;                # each event about 1 KB: 10 MB in all
    my (@ready, $finished, $max_buffered, $id);
    my $sample = sub {
        my $engine = $server->engine or return;
        unless ($id) {
            for my $i (reverse 1 .. $engine->stats->{requests_total}) {
                my $s = $engine->stats($i) or next;
                $id = $i;
                last;
            }
        }
        my $s = $id && $engine->stats($id) or return;
        $max_buffered = $s->{buffered} if !defined $max_buffered || $s->{buffered} > $max_buffered;
    };
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $receive->();
        await $send->({ type => 'sse.start' });
        for my $i (1 .. $events) {
            my $f = $send->({ type => 'sse.send', id => $i, data => sprintf('%05d:%s', $i, $payload) });
            push @ready, $f->is_ready ? 1 : 0;
            $sample->();
            await $f;
        }
        $finished = 1;
    };
    my $sampler = IO::Async::Timer::Periodic->new(interval => 0.005, on_tick => $sample);
    $loop->add($sampler);
    $sampler->start;

    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Type => Socket::SOCK_STREAM())
        or die "connect: $@";
    syswrite($sock, sse_req('/flood')) or die "write: $!";
    $sock->blocking(0);
    $loop->delay_future(after => 1)->get;    # the client reads nothing for 1 s

    my $pending = grep { !$_ } @ready;
    my ($high) = $server->engine->write_watermarks;
    ok $id, 'found the stream in the engine stats';
    cmp_ok scalar(@ready), '>', 0, 'the app started sending';
    cmp_ok $pending, '>=', 1, 'at least one $send returned a pending Future';
    ok !$finished, 'the app has not finished while the client does not read';
    cmp_ok scalar(@ready), '<', $events, 'the app is stalled before its last event';
    cmp_ok $max_buffered // 0, '>', 0, 'the engine buffer was sampled';
    cmp_ok $max_buffered // 0, '<=', $high + $MiB, "the engine buffer stays under write_high_watermark + 1 MiB ($high + 1 MiB)";
    diag(sprintf '%d events sent (%d pending) before the client read; max buffered %d', scalar @ready, $pending, $max_buffered // -1);

    my ($raw, $eof) = ('', 0);
    my $deadline = now() + 20;
    while (!$eof && now() < $deadline) {
        $loop->loop_once(0.01);
        while (1) {
            my $n = sysread($sock, my $buf, 256 * 1024);
            if (!defined $n) { last if $!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR}; $eof = 1; last }
            if ($n == 0) { $eof = 1; last }
            $raw .= $buf;
        }
    }
    $sampler->stop;
    $loop->remove($sampler);
    close $sock;
    ok $eof, 'the stream ended (EOF) after the client read';
    ok $finished, 'the app finished';
    my ($head, $body) = split_head($raw);
    like $head // '', qr{\AHTTP/1\.1 200 OK\r\n}, 'head';
    my ($text, $complete) = dechunk($body // '');
    ok $complete, 'terminated chunked stream';
    my $expected = join '', map { sprintf "data: %05d:%s\nid: %d\n\n", $_, $payload, $_ } 1 .. $events;
    is length $text, length $expected, 'every byte arrived (' . length($text) . ')';
    ok $text eq $expected, 'all 10000 events intact and in order';
    cmp_ok $max_buffered // 0, '<=', $high + $MiB, 'the engine buffer stayed bounded to the end';
};

stop_server($server);

subtest 'graceful shutdown: the app hears server_shutdown, says goodbye, the stream ends' => sub {
    %rec = ();
    my $app2 = async sub {
        my ($scope, $receive, $send) = @_;
        die "unsupported\n" unless $scope->{type} eq 'sse';
        await $receive->();
        await $send->({ type => 'sse.start' });
        await $send->({ type => 'sse.send', data => 'live' });
        $rec{waiting} = 1;
        $rec{event} = await $receive->();
        $rec{event_at} = now();
        await $send->({ type => 'sse.send', event => 'bye', data => 'server going down' });
        $rec{returned} = now();
    };
    my ($srv, $p) = start_server(app => $app2, shutdown_timeout => 5);
    my $c = open_conn($p);
    $c->write(sse_req('/live'));
    ok eval { $c->read_until(qr/data: live\n\n\r\n/, 3)->get; 1 }, 'stream open' or diag($@);
    ok wait_for(sub { $rec{waiting} }, 2), 'the app waits on $receive';
    my $t0 = now();
    my $shutdown_done;
    my $sf = $srv->shutdown->on_done(sub { $shutdown_done = now() });
    my $buf = eval { $c->wait_eof(4)->get } // do { diag("wait_eof: $@"); $c->buffer };
    $c->close;
    ok eval { with_timeout($sf, 4)->get; 1 }, 'shutdown completed' or diag($@);
    is_deeply $rec{event}, { type => 'sse.disconnect', reason => 'server_shutdown' }, 'the pending $receive: sse.disconnect server_shutdown';
    cmp_ok(($rec{event_at} // 99) - $t0, '<', 0.5, 'at the start of the grace period');
    my (undef, $body) = split_head($buf);
    my ($text, $complete) = dechunk($body // '');
    is $text, "data: live\n\nevent: bye\ndata: server going down\n\n", 'the client got the goodbye event';
    ok $complete, 'and a terminated stream';
    cmp_ok(($shutdown_done // 99) - $t0, '<', 1.5, sprintf('shutdown finished promptly (%.3fs), well before shutdown_timeout', ($shutdown_done // 99) - $t0));
    $srv->loop->remove($srv) if $srv->loop;
};

subtest 'examples/05-sse-broadcaster: a published message reaches two clients at once' => sub {
    my $example = PAGI::Server::Runner->load_app('examples/05-sse-broadcaster/app.pl');
    is ref $example, 'CODE', 'example loaded';
    my ($srv, $p) = start_server(app => $example);
    my @clients = map { open_conn($p) } 1 .. 2;
    $clients[0]->write(sse_req('/events'));
    ok eval { $clients[0]->read_until(qr/data: welcome \(1 listening\)\n/, 3)->get; 1 }, 'client 1 welcomed' or diag($@);
    $clients[1]->write(sse_req('/events', 'Last-Event-ID: 1000'));
    ok eval { $clients[1]->read_until(qr/data: welcome \(2 listening\)\n/, 3)->get; 1 }, 'client 2 welcomed' or diag($@);
    for my $i (0, 1) {
        like $clients[$i]->buffer, qr{\AHTTP/1\.1 200 OK\r\n}, "client $i: 200";
        like $clients[$i]->buffer, qr{\r\ncontent-type: text/event-stream\r\n}i, "client $i: event stream";
    }
    $_->take for @clients;

    my $msg = 'hello everyone ☺';
    my $bytes = $msg;
    utf8::encode($bytes);
    my $t0 = now();
    my $raw = raw_exchange($p, "POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
        . 'Content-Length: ' . length($bytes) . "\r\nConnection: close\r\n\r\n$bytes", timeout => 5)->get;
    my ($res) = parse_responses($raw);
    is $res->{status}, 202, 'publish: 202';
    is $res->{body}, "sent to 2 listeners\n", 'publish: two listeners';

    my $want = qr/event: message\ndata: \Q$bytes\E\nid: (\d+)\n\n/;
    my @ids;
    for my $i (0, 1) {
        my $got = eval { $clients[$i]->read_until($want, 3)->get } // '';
        my ($id) = $got =~ $want;
        ok defined $id, "client $i received the published message" or diag($@);
        push @ids, $id;
    }
    cmp_ok now() - $t0, '<', 2, 'both within 2 s of the publish';
    is $ids[0], $ids[1], 'with the same id on both streams';
    cmp_ok $ids[0] // 0, '>', 1000, 'ids resumed after the Last-Event-ID a client sent';

    $_->close for @clients;
    stop_server($srv);
};

done_testing;
