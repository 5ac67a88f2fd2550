# pagi.connection and pagi.transport (PAGI-SPEC 3.1.5 and 3.1.6) seen by
# apps served over real sockets: the state of a request from start to end,
# the callbacks of a clean end and of an abnormal one (and their order), and
# outbound flow control against a client that stops reading.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use PAGI::Test::Server qw(loop start_server stop_server parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn responses_done);
use Future::AsyncAwait;
use IO::Socket::IP;
use Scalar::Util qw(blessed);
use Time::HiRes ();

my $loop = loop();

sub get_req {
    my ($path, %o) = @_;
    return "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n" . ($o{close} ? "Connection: close\r\n" : '') . "\r\n";
}

# Sends a complete small response.
async sub reply {
    my ($send, $text) = @_;
    $text //= 'ok';
    await $send->({ type => 'http.response.start', status => 200,
                    headers => [ [ 'content-type', 'text/plain' ], [ 'content-length', length $text ] ] });
    await $send->({ type => 'http.response.body', body => $text });
}

# A loop-driven pause that keeps the server serving.
sub pause { $loop->delay_future(after => $_[0])->get }

subtest 'every http scope carries pagi.connection and pagi.transport' => sub {
    my @seen;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        my ($c, $t) = @$scope{qw(pagi.connection pagi.transport)};
        push @seen, {
            method   => $scope->{method},
            conn     => blessed($c) ? 1 : 0,
            trans    => blessed($t) ? 1 : 0,
            conn_can => (blessed($c) && !grep { !$c->can($_) }
                qw(is_connected disconnect_reason on_disconnect on_complete response_started response_complete disconnect_future)) ? 1 : 0,
            trans_can => (blessed($t) && !grep { !$t->can($_) }
                qw(buffered_amount high_water_mark low_water_mark on_high_water on_drain)) ? 1 : 0,
        };
        while (1) { my $ev = await $receive->(); last unless $ev->{more} }
        await reply($send);
    };
    my ($server, $port) = start_server(app => $app);
    my $conn = open_conn($port);
    $conn->write(get_req('/a'));
    $conn->write("POST /b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc");
    $conn->write("HEAD /c HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    $conn->write("PUT /d HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n");
    $conn->wait_eof(5)->get;
    is(scalar @seen, 4, 'four requests reached the app');
    for my $s (@seen) {
        is($s->{conn}, 1, "$s->{method}: pagi.connection is an object");
        is($s->{trans}, 1, "$s->{method}: pagi.transport is an object");
        is($s->{conn_can}, 1, "$s->{method}: pagi.connection has every method of PAGI-SPEC 3.1.5");
        is($s->{trans_can}, 1, "$s->{method}: pagi.transport has every method of PAGI-SPEC 3.1.6");
    }
    stop_server($server);
};

subtest 'a clean request: state through the response, on_complete in order, no disconnect' => sub {
    my (%state, @log, $conn_obj, $app_done);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        my $c = $conn_obj = $scope->{'pagi.connection'};
        $c->on_complete(sub { push @log, [ 'complete1', scalar @_ ] });
        $c->on_disconnect(sub { push @log, [ 'disconnect', @_ ] });
        $c->on_complete(sub { push @log, [ 'complete2', scalar @_ ] });
        $c->disconnect_future->on_ready(sub { push @log, ['future'] });
        $c->on_complete(sub { push @log, [ 'complete3', scalar @_ ] });
        $state{before} = [ $c->is_connected, $c->response_started, $c->response_complete, $c->disconnect_reason ];
        await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
        $state{started} = [ $c->is_connected, $c->response_started, $c->response_complete ];
        await $send->({ type => 'http.response.body', body => 'part one, ', more => 1 });
        $state{streaming} = [ $c->is_connected, $c->response_started, $c->response_complete ];
        await $send->({ type => 'http.response.body', body => 'part two' });
        $state{sent} = [ $c->response_started, $c->response_complete ];
        $app_done = 1;
    };
    my ($server, $port) = start_server(app => $app);
    my $conn = open_conn($port);
    $conn->write(get_req('/clean'));
    my $raw = $conn->read_until(responses_done(1), 5)->get;
    my ($res) = parse_responses($raw);
    is($res->{body}, 'part one, part two', 'the client got the whole streamed body');

    is_deeply($state{before}, [ 1, 0, 0, undef ], 'before start: connected, not started, not complete, no reason');
    is_deeply($state{started}, [ 1, 1, 0 ], 'after http.response.start: connected, started, not complete');
    is_deeply($state{streaming}, [ 1, 1, 0 ], 'after a body with more => 1: still not complete');
    is_deeply($state{sent}, [ 1, 1 ], 'after the final body: started and complete');

    ok(wait_for(sub { grep { $_->[0] eq 'complete3' } @log }, 5), 'on_complete callbacks ran after the response');
    is_deeply([ map { $_->[0] } @log ], [qw(complete1 complete2 complete3)], 'on_complete callbacks ran once each, in registration order');
    is_deeply([ map { $_->[1] } @log ], [ 0, 0, 0 ], 'on_complete callbacks get no arguments');
    ok(!$conn_obj->is_connected, 'is_connected is false once the request ended');
    is($conn_obj->disconnect_reason, undef, 'disconnect_reason stays undef on clean completion');
    ok($conn_obj->response_complete, 'response_complete stays true');

    # Registered after the end: on_complete runs at once, on_disconnect never.
    my ($late_complete, $late_disconnect) = (0, 0);
    $conn_obj->on_complete(sub { $late_complete++ });
    $conn_obj->on_disconnect(sub { $late_disconnect++ });
    is($late_complete, 1, 'on_complete registered after completion runs immediately');

    pause(0.5);
    ok(!$conn_obj->disconnect_future->is_ready, 'disconnect_future never resolves on clean completion');
    ok(!grep({ $_->[0] eq 'disconnect' || $_->[0] eq 'future' } @log), 'on_disconnect never ran');
    is($late_disconnect, 0, 'on_disconnect registered after a clean completion never runs');
    ok(!$conn_obj->is_connected, 'is_connected never goes back to true');
    ok($conn->stays_open(0.2), 'the keep-alive connection stays open');
    $conn->close;
    stop_server($server);
};

subtest 'client disconnects while the app waits on $receive: reason, future, callbacks, then http.disconnect' => sub {
    my (@log, $conn_obj, $receive_ev, $started);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        my $c = $conn_obj = $scope->{'pagi.connection'};
        my $snap = sub { [ $c->is_connected ? 1 : 0, $c->disconnect_reason, $c->disconnect_future->is_ready ? 1 : 0 ] };
        $c->on_complete(sub { push @log, ['complete'] });
        $c->disconnect_future->on_ready(sub {
            my ($f) = @_;
            push @log, [ 'future', @{ $snap->() }, $f->is_done ? ($f->get)[0] : 'not done' ];
        });
        $c->on_disconnect(sub { push @log, [ 'cb1', @{ $snap->() }, @_ ] });
        $c->on_disconnect(sub { push @log, [ 'cb2', @{ $snap->() }, @_ ] });
        # Read the upload's first chunk, then wait for the rest, which never comes.
        my $first = await $receive->();
        $started = $first->{body};
        my $ev = await $receive->();
        push @log, [ 'receive', @{ $snap->() }, $ev->{type} ];
        $receive_ev = $ev;
    };
    my ($server, $port) = start_server(app => $app);
    my $conn = open_conn($port);
    # Large enough that the engine hands the request over before the body is in.
    $conn->write("POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\nfirst");
    ok(wait_for(sub { defined $started }, 5), 'the app read the first part of the body') or return;
    pause(0.1);
    ok($conn_obj->is_connected, 'connected while the client is there');
    ok(!@log, 'nothing fired yet');
    $conn->close;

    ok(wait_for(sub { $receive_ev }, 5), 'the pending $receive resolved after the client left') or return;
    is($receive_ev->{type}, 'http.disconnect', 'with http.disconnect');
    ok(!$conn_obj->is_connected, 'is_connected is false');
    is($conn_obj->disconnect_reason, 'client_closed', "disconnect_reason is 'client_closed'");
    my $df = $conn_obj->disconnect_future;
    ok($df->is_ready && $df->is_done, 'disconnect_future is done');
    is(($df->get)[0], 'client_closed', "disconnect_future resolved with 'client_closed'") if $df->is_done;

    is_deeply([ map { $_->[0] } @log ], [qw(future cb1 cb2 receive)],
        'order: disconnect_future, on_disconnect callbacks in registration order, then $receive');
    my %at = map { $_->[0] => $_ } @log;
    is_deeply($at{future}, [ 'future', 0, 'client_closed', 1, 'client_closed' ],
        'when the future resolved, is_connected was already false and the reason set');
    is_deeply($at{cb1}, [ 'cb1', 0, 'client_closed', 1, 'client_closed' ], 'first on_disconnect got the reason, after the future');
    is_deeply($at{cb2}, [ 'cb2', 0, 'client_closed', 1, 'client_closed' ], 'second on_disconnect got the reason');
    ok(!grep({ $_->[0] eq 'complete' } @log), 'on_complete never ran');

    my @late;
    $conn_obj->on_disconnect(sub { push @late, @_ });
    is_deeply(\@late, ['client_closed'], 'on_disconnect registered after the disconnect runs immediately with the reason');
    my $late_complete = 0;
    $conn_obj->on_complete(sub { $late_complete++ });
    pause(0.2);
    is($late_complete, 0, 'on_complete registered after the disconnect never runs');
    stop_server($server);
};

subtest 'client disconnects while the app waits on a timer' => sub {
    my (%seen, $conn_obj, @cb, $complete, $after);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        my $c = $conn_obj = $scope->{'pagi.connection'};
        $c->on_disconnect(sub { push @cb, [ 'a', @_ ] });
        $c->on_disconnect(sub { push @cb, [ 'b', @_ ] });
        $c->on_complete(sub { $complete++ });
        $seen{started} = 1;
        await $loop->delay_future(after => 1.5);
        $seen{connected_after} = $c->is_connected;
        # The (empty) body that had arrived may come first; then the disconnect.
        my @types;
        while (@types < 3) {
            my $ev = await $receive->();
            push @types, $ev->{type};
            last if $ev->{type} eq 'http.disconnect';
        }
        $seen{receive} = join ' ', @types;
        my $f = $send->({ type => 'http.response.start', status => 200, headers => [] });
        $seen{send} = $f->is_done ? 'done' : $f->is_failed ? 'failed' : 'pending';
        $after = 1;
    };
    my ($server, $port) = start_server(app => $app);
    my $conn = open_conn($port);
    $conn->write(get_req('/slow'));
    ok(wait_for(sub { $seen{started} }, 5), 'the app is running') or return;
    pause(0.1);
    $conn->close;
    ok(wait_for(sub { defined $conn_obj->disconnect_reason }, 1.2),
        'the disconnect is noticed while the app is still on its timer');
    ok(!$after, 'the app was still waiting when the disconnect was noticed');
    ok(!$conn_obj->is_connected, 'is_connected is false');
    is($conn_obj->disconnect_reason, 'client_closed', "disconnect_reason is 'client_closed'");
    ok($conn_obj->disconnect_future->is_done, 'disconnect_future is done');
    is(($conn_obj->disconnect_future->get)[0], 'client_closed', 'with the reason') if $conn_obj->disconnect_future->is_done;
    is_deeply(\@cb, [ [ 'a', 'client_closed' ], [ 'b', 'client_closed' ] ], 'on_disconnect callbacks ran in order with the reason');
    ok(wait_for(sub { $after }, 5), 'the app finished after its timer');
    is($seen{connected_after}, 0, 'after the timer the app sees is_connected false');
    like($seen{receive}, qr/\A(?:http\.request )?http\.disconnect\z/, "\$receive then gives http.disconnect at once ($seen{receive})");
    is($seen{send}, 'done', 'a send after the disconnect is a successful no-op');
    ok(!$complete, 'on_complete never ran');
    stop_server($server);
};

subtest "an app exception ends the request with reason 'server_error'" => sub {
    my (%obj, %reason, %complete);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        my $path = $scope->{path};
        my $c = $obj{$path} = $scope->{'pagi.connection'};
        $c->on_disconnect(sub { $reason{$path} = $_[0] });
        $c->on_complete(sub { $complete{$path}++ });
        if ($path eq '/mid') {
            await $send->({ type => 'http.response.start', status => 200, headers => [] });
            await $send->({ type => 'http.response.body', body => 'partial', more => 1 });
            await $loop->delay_future(after => 0.05);
        }
        die "boom\n";
    };
    my ($server, $port) = start_server(app => $app);
    for my $path ('/early', '/mid') {
        my $conn = open_conn($port);
        $conn->write(get_req($path));
        my $raw = eval { $conn->wait_eof(5)->get } // $conn->buffer;
        ok(wait_for(sub { defined $reason{$path} }, 5), "$path: on_disconnect ran");
        is($reason{$path}, 'server_error', "$path: the reason is 'server_error'");
        is($obj{$path}->disconnect_reason, 'server_error', "$path: disconnect_reason is 'server_error'");
        ok(!$obj{$path}->is_connected, "$path: is_connected is false");
        ok($obj{$path}->response_started, "$path: response_started (the 500 backstop counts)") if $path eq '/early';
        like($raw, qr{\AHTTP/1\.1 (500|200) }, "$path: the client got a response head");
        ok(!$complete{$path}, "$path: on_complete never ran");
    }
    stop_server($server);
};

subtest "a chunked upload over max_body_size ends with reason 'body_too_large'" => sub {
    my ($obj, $reason, $complete, @events, $done, $called);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        my $c = $obj = $scope->{'pagi.connection'};
        $c->on_disconnect(sub { $reason = $_[0] });
        $c->on_complete(sub { $complete++ });
        $called = 1;
        while (1) {
            my $ev = await $receive->();
            push @events, $ev->{type};
            last unless $ev->{type} eq 'http.request' && $ev->{more};
        }
        $done = 1;
        await reply($send) if $c->is_connected;
    };
    my ($server, $port) = start_server(app => $app, max_body_size => 1000);
    my $conn = open_conn($port);
    my $chunk = 'x' x 400;
    # The head alone first, so the app runs while the body streams in.
    $conn->write("POST /big HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    ok(wait_for(sub { $called }, 5), 'the app was called before the body arrived') or return;
    for (1 .. 4) {
        $conn->write(sprintf("%x\r\n%s\r\n", length $chunk, $chunk));
        pause(0.05);
    }
    $conn->write("0\r\n\r\n");
    my $raw = eval { $conn->wait_eof(5)->get } // $conn->buffer;
    like($raw, qr{\AHTTP/1\.1 413 }, 'the client got 413');
    ok(wait_for(sub { defined $reason }, 5), 'on_disconnect ran');
    is($reason, 'body_too_large', "the reason is 'body_too_large'");
    is($obj->disconnect_reason, 'body_too_large', "disconnect_reason is 'body_too_large'");
    ok(wait_for(sub { $done }, 5), 'the app stopped reading');
    is($events[-1], 'http.disconnect', 'its $receive ended with http.disconnect');
    ok(!$complete, 'on_complete never ran');
    stop_server($server);
};

subtest 'exactly one of on_complete / on_disconnect per request' => sub {
    my (%fired, $started_slow);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        my $key = $scope->{path};
        my $c = $scope->{'pagi.connection'};
        $fired{$key} //= { complete => 0, disconnect => 0 };
        $c->on_complete(sub { $fired{$key}{complete}++ });
        $c->on_disconnect(sub { $fired{$key}{disconnect}++ });
        if ($key =~ m{^/die}) { die "no\n" }
        if ($key =~ m{^/slow}) { $started_slow = 1; await $loop->delay_future(after => 0.8) }
        await reply($send, $key);
    };
    my ($server, $port) = start_server(app => $app);

    # Five keep-alive requests on one connection, pipelined.
    my $conn = open_conn($port);
    $conn->write(join '', map { get_req("/ka$_") } 1 .. 5);
    $conn->read_until(responses_done(5), 5)->get;
    # Two more on fresh connections that close.
    for my $i (1, 2) {
        my $c2 = open_conn($port);
        $c2->write(get_req("/fresh$i", close => 1));
        $c2->wait_eof(5)->get;
    }
    # One app exception, one client that leaves early.
    my $c3 = open_conn($port);
    $c3->write(get_req('/die'));
    eval { $c3->wait_eof(5)->get };
    my $c4 = open_conn($port);
    $c4->write(get_req('/slow'));
    wait_for(sub { $started_slow }, 5);
    $c4->close;
    # And one more keep-alive request after all that.
    $conn->take;
    $conn->write(get_req('/ka6'));
    $conn->read_until(responses_done(1), 5)->get;

    my @paths = ((map {"/ka$_"} 1 .. 6), '/fresh1', '/fresh2', '/die', '/slow');
    ok(wait_for(sub { !grep { !$fired{$_} || $fired{$_}{complete} + $fired{$_}{disconnect} < 1 } @paths }, 5),
        'every request fired a callback');
    pause(1);    # let /slow's timer run out: nothing more may fire
    for my $p (@paths) {
        my $f = $fired{$p} // { complete => 0, disconnect => 0 };
        my $want = $p =~ m{^/(die|slow)} ? { complete => 0, disconnect => 1 } : { complete => 1, disconnect => 0 };
        is_deeply($f, $want, "$p: " . ($want->{complete} ? 'on_complete once, on_disconnect never' : 'on_disconnect once, on_complete never'));
    }
    $conn->close;
    stop_server($server);
};

# ---------------------------------------------------------------------------
# pagi.transport

subtest 'watermarks: the defaults, and the configured values' => sub {
    my @marks;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        my $t = $scope->{'pagi.transport'};
        push @marks, [ $t->high_water_mark, $t->low_water_mark, $t->buffered_amount ];
        await reply($send);
    };
    my ($server, $port) = start_server(app => $app);
    my $conn = open_conn($port);
    $conn->write(get_req('/', close => 1));
    $conn->wait_eof(5)->get;
    is_deeply($marks[0], [ 65536, 16384, 0 ], 'high 65536, low 16384 by default; nothing buffered before the response');
    stop_server($server);

    ($server, $port) = start_server(app => $app, write_high_watermark => 200_000, write_low_watermark => 50_000);
    $conn = open_conn($port);
    $conn->write(get_req('/', close => 1));
    $conn->wait_eof(5)->get;
    is_deeply($marks[1], [ 200_000, 50_000, 0 ], 'write_high_watermark / write_low_watermark are reported');
    stop_server($server);
};

subtest 'buffered_amount, on_high_water and on_drain against a client that stops reading' => sub {
    my $CHUNK = 64 * 1024;
    my ($t, $blocked, $finished, $sent, %count, @order, $first_chunk_sent);
    my $total = 64 * 1024 * 1024 / $CHUNK;    # up to 64 MiB
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        $t = $scope->{'pagi.transport'};
        $t->on_high_water(sub { $count{high}++; push @order, 'high' });
        $t->on_drain(sub { $count{drain}++; push @order, 'drain' });
        $count{drain_at_registration} = $count{drain} // 0;
        await $send->({ type => 'http.response.start', status => 200,
                        headers => [ [ 'content-type', 'application/octet-stream' ] ] });
        await $send->({ type => 'http.response.body', body => 'x' x 100, more => 1 });
        $first_chunk_sent = 1;
        await $loop->delay_future(after => 0.3);    # the client reads this first part
        for my $i (1 .. $total) {
            my $f = $send->({ type => 'http.response.body', body => chr(65 + $i % 26) x $CHUNK, more => 1 });
            $sent = $i;
            $blocked //= $i unless $f->is_ready;
            await $f;
        }
        await $send->({ type => 'http.response.body', body => '', more => 0 });
        $finished = 1;
    };
    my ($server, $port) = start_server(app => $app);
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port) or die "connect: $@";
    syswrite($sock, get_req('/big', close => 1)) or die "write: $!";
    $sock->blocking(0);
    my $raw = '';
    my $read_some = sub {
        while (1) {
            my $n = sysread($sock, my $buf, 256 * 1024);
            return 0 if defined $n && $n == 0;
            return 1 unless $n;
            $raw .= $buf;
        }
    };
    ok(wait_for(sub { $first_chunk_sent }, 5), 'the app sent the first small chunk') or return;
    my $deadline = Time::HiRes::time() + 5;
    until ($raw =~ /\r\n\r\n.*x{100}/s || Time::HiRes::time() > $deadline) { $loop->loop_once(0.02); $read_some->() }
    like($raw, qr/x{100}/, 'the client read the first chunk');
    is($t->buffered_amount, 0, 'buffered_amount is 0 once the client has read everything sent');
    is($count{drain_at_registration}, 0, 'on_drain does not fire at registration while the buffer is low');

    # Now the client stops reading: the kernel buffers fill, then the engine's.
    ok(wait_for(sub { defined $blocked }, 30), 'a $send became pending while the client did not read') or return;
    my ($last_sent, $stable_since) = (-1, Time::HiRes::time());
    my $stalled = wait_for(sub {
        if ($sent != $last_sent) { ($last_sent, $stable_since) = ($sent, Time::HiRes::time()); return 0 }
        return Time::HiRes::time() - $stable_since > 0.5;
    }, 30);
    ok($stalled, "the app stalled after $sent chunks") or return;
    my %at_stall = (high => $count{high} // 0, drain => $count{drain} // 0);
    my $buffered = $t->buffered_amount;
    cmp_ok($buffered, '>=', $t->high_water_mark, "buffered_amount is at or above the high mark while stalled ($buffered)");
    cmp_ok($at_stall{high}, '>=', 1, 'on_high_water fired');
    is($order[-1], 'high', 'the last transport callback before the stall was on_high_water');
    pause(0.5);
    is($count{high}, $at_stall{high}, 'on_high_water does not fire again while the buffer stays high');
    is($count{drain} // 0, $at_stall{drain}, 'on_drain does not fire while the client does not read');
    my $late_high = 0;
    $t->on_high_water(sub { $late_high++ });
    is($late_high, 1, 'on_high_water registered while above the mark fires immediately');
    my $late_drain = 0;
    $t->on_drain(sub { $late_drain++ });
    pause(0.5);
    ok(($count{drain} // 0) == $at_stall{drain} && !$late_drain, 'on_drain still silent before the client reads');
    ok(!$finished, 'the app is held back');

    # The client reads again: the buffer drains and the stream completes.
    my $eof = 0;
    $deadline = Time::HiRes::time() + 60;
    until ($eof || Time::HiRes::time() > $deadline) {
        $loop->loop_once(0.01);
        $eof = 1 unless $read_some->();
    }
    ok($eof, 'the whole response was read');
    ok(wait_for(sub { $finished }, 10), 'the app finished');
    cmp_ok($count{drain} // 0, '>', $at_stall{drain}, 'on_drain fired after the client started reading');
    cmp_ok($late_drain, '>=', 1, 'an on_drain registered while above the mark fired on drain too');
    is($order[0], 'high', 'the first callback was on_high_water');
    is($order[1], 'drain', 'then on_drain');
    my $alternates = !grep { $order[$_] eq $order[ $_ - 1 ] } 1 .. $#order;
    ok($alternates, 'high and drain alternate (the cycle re-arms): ' . scalar(@order) . ' callbacks');
    cmp_ok(length $raw, '>', $blocked * $CHUNK, 'the client got every byte sent up to the stall and more');
    close $sock;
    stop_server($server);
};

done_testing;
