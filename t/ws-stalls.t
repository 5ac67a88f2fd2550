use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server wait_for);
use PAGI::Test::WebSocket qw(ws_connect build_frame OP_TEXT OP_BINARY OP_PING OP_PONG);
use Future::AsyncAwait;
use IO::Async::Timer::Periodic;
use Time::HiRes ();

# WebSocket sessions under stalls, in both directions: a client that stops
# reading cannot hold the server past its shutdown grace and is closed by
# the write stall timer (`timeout`); an app that is behind on messages does
# not stop pings and pongs (so a healthy client is not dropped for a
# "missed" pong); inbound read-ahead is bounded in bytes, not only in
# messages.

my $loop = loop();
my $MiB = 1024 * 1024;

sub now { Time::HiRes::time() }

sub pattern { my ($i, $len) = @_; substr(pack('N', $i) x ($len / 4 + 1), 0, $len) }

# Largest value of $field over the live requests of $srv's engine.
sub sample_max {
    my ($srv, $field, $max) = @_;
    my $engine = $srv->engine or return $max;
    for my $id (1 .. $engine->stats->{requests_total}) {
        my $s = $engine->stats($id) or next;
        $max = $s->{$field} if !defined $max || $s->{$field} > $max;
    }
    return $max;
}

# Accepts, then sends `count` binary messages of 64 KiB until the session
# ends; records in $call when a send had to wait and the disconnect.
sub flood_app {
    my ($call, $count) = @_;
    return async sub {
        my ($scope, $receive, $send) = @_;
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        my $gone = $receive->();    # the client sends nothing: this is the disconnect
        $gone->on_done(sub { $call->{disconnect} = $_[0]; $call->{disconnect_at} = now() });
        my $chunk = 'x' x 65536;
        for my $i (1 .. $count) {
            last if $gone->is_ready;
            my $f = $send->({ type => 'websocket.send', bytes => $chunk });
            $call->{sent} = $i;
            unless ($f->is_ready) {
                $call->{blocked_since} //= now();
                await $f;
                delete $call->{blocked_since} unless $gone->is_ready;
            }
        }
        await $gone;
    };
}

# Connects and stops reading; returns once the app's sends have been
# blocked for half a second (the client's and the server's socket buffers
# are full and output waits in the engine).
sub stalled_client {
    my ($port, $call) = @_;
    my ($c) = ws_connect($port)->get;
    $c->pause;
    ok wait_for(sub { $call->{blocked_since} && now() - $call->{blocked_since} > 0.5 }, 20),
        'the app is blocked sending to a client that does not read'
        or diag "sent $call->{sent} messages";
    return $c;
}

subtest 'a client that stops reading does not hold shutdown past its grace' => sub {
    my %call;
    my ($srv, $port) = start_server(app => flood_app(\%call, 800), shutdown_timeout => 2);    # 50 MiB
    my $c = stalled_client($port, \%call);
    my $t0 = now();
    my $shutdown = $srv->shutdown;
    my $done = eval { Future->wait_any($shutdown->without_cancel, $loop->delay_future(after => 10)->then(sub { Future->fail('no end of shutdown after 10 s') }))->get; 1 };
    my $took = now() - $t0;
    ok $done, 'shutdown completes' or diag $@;
    cmp_ok $took, '<', 2 + 3, sprintf('within the 2 s grace plus a few seconds (took %.1f s)', $took);
    ok wait_for(sub { $call{disconnect} }, 5), 'the app got websocket.disconnect';
    is $call{disconnect} && $call{disconnect}{code}, 1001, 'code 1001';
    is $call{disconnect} && $call{disconnect}{reason}, 'server_shutdown', "reason 'server_shutdown'";
    cmp_ok $call{sent}, '<', 800, 'the app stopped before sending everything';
    $c->close;
    eval { Future->wait_any($shutdown, $loop->delay_future(after => 10))->get } unless $done;    # an engine that hung ends once the client leaves
    $loop->remove($srv);
};

subtest 'a client that stops reading is closed after `timeout` seconds without write progress' => sub {
    my %call;
    my ($srv, $port) = start_server(app => flood_app(\%call, 800), timeout => 2);
    my $c = stalled_client($port, \%call);
    my $blocked = $call{blocked_since};
    ok wait_for(sub { $call{disconnect} }, 15), 'the app got websocket.disconnect';
    is $call{disconnect} && $call{disconnect}{code}, 1006, 'code 1006';
    is $call{disconnect} && $call{disconnect}{reason}, 'write_timeout', "reason 'write_timeout'";
    diag sprintf 'disconnect %.1f s after the app blocked', $call{disconnect_at} - $blocked if $call{disconnect_at};
    $c->resume;
    ok eval { $c->wait_eof(15)->get }, 'the server closed the connection' or diag $@;
    $c->close;
    stop_server($srv);
};

# The app does not receive until the test releases it; then it takes
# `expect` messages (kept in $call->{got}), answers with their count and
# waits for the disconnect.
sub slow_app {
    my ($call, $expect) = @_;
    return async sub {
        my ($scope, $receive, $send) = @_;
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        $call->{accepted} = 1;
        await $call->{release};
        my @got;
        while (@got < $expect) {
            my $ev = await $receive->();
            if ($ev->{type} eq 'websocket.disconnect') { $call->{disconnect} = $ev; return }
            push @got, $ev->{bytes} // $ev->{text};
        }
        $call->{got} = \@got;
        await $send->({ type => 'websocket.send', text => 'got ' . scalar @got });
        my $ev = await $receive->();
        $call->{disconnect} = $ev;
    };
}

sub pongs_with { my ($c, $payload) = @_; scalar grep { $_->{opcode} == OP_PONG && $_->{payload} eq $payload } @{ $c->frames } }

subtest 'the app is behind on messages: a ping is still answered, a healthy client is not dropped' => sub {
    my %call = (release => $loop->new_future);
    my ($srv, $port) = start_server(app => slow_app(\%call, 20), ws_ping_interval => 0.3, ws_ping_timeout => 0.6);
    my ($c) = ws_connect($port, auto_pong => 1)->get;
    ok wait_for(sub { $call{accepted} }, 5), 'accepted';
    $c->send_text("message $_") for 1 .. 20;
    $c->send_ping('still there?');
    ok eval { $c->wait_until(sub { pongs_with($c, 'still there?') }, 10, 'the pong')->get }, 'the pong comes back while the app has taken no message'
        or diag $@;
    ok !$call{release}->is_ready, '(the app was not released yet)';
    my $pings = sub { scalar grep { $_->{opcode} == OP_PING } @{ $c->frames } };
    my $before = $pings->();
    # Keepalive rounds (0.3 s pings, 0.6 s pong timeout) while the app still does not receive.
    ok wait_for(sub { $pings->() >= $before + 5 }, 15), 'the server keeps pinging';
    ok !$c->is_eof, 'the client that answers pings is still connected';
    ok !$call{disconnect}, 'and the app saw no disconnect';
    $call{release}->done;
    my $text = sub { (grep { $_->{opcode} == OP_TEXT } @{ $c->frames })[0] };
    eval { $c->wait_until($text, 15, 'the count')->get };
    my $f = $text->();
    is $f && $f->{payload}, 'got 20', 'the app then receives all 20 messages';
    is_deeply $call{got}, [ map { "message $_" } 1 .. 20 ], 'in order';
    $c->send_close(1000);
    ok eval { $c->wait_eof(5)->get }, 'closed cleanly';
    stop_server($srv);
};

subtest 'while reading waits for the app (backpressure), a pong stuck behind data is not missed' => sub {
    my $n = 48;    # 3 MiB in 64 KiB messages: more than the engine reads ahead
    my %call = (release => $loop->new_future);
    my ($srv, $port) = start_server(app => slow_app(\%call, $n), ws_ping_interval => 0.3, ws_ping_timeout => 0.6);
    my ($c) = ws_connect($port, auto_pong => 1, sndbuf => 65536)->get;
    ok wait_for(sub { $call{accepted} }, 5), 'accepted';
    $c->send_binary(pattern($_, 65536)) for 1 .. $n;
    my $pings = sub { scalar grep { $_->{opcode} == OP_PING } @{ $c->frames } };
    # Each pong the client writes now waits behind the data the server does not read.
    ok wait_for(sub { $pings->() >= 6 }, 15), 'the server pings while its reading waits for the app';
    ok !$c->is_eof, 'the client is still connected';
    ok !$call{disconnect}, 'and the app saw no disconnect' or diag explain $call{disconnect};
    $call{release}->done;
    my $text = sub { (grep { $_->{opcode} == OP_TEXT } @{ $c->frames })[0] };
    eval { $c->wait_until($text, 15, 'the count')->get };
    my $f = $text->();
    is $f && $f->{payload}, "got $n", "the app then receives all $n messages";
    is scalar(grep { $call{got}[ $_ - 1 ] eq pattern($_, 65536) } 1 .. $n), $n, 'intact and in order' if $call{got};
    $c->send_close(1000);
    ok eval { $c->wait_eof(5)->get }, 'closed cleanly';
    stop_server($srv);
};

subtest 'inbound read-ahead is bounded in bytes: 30 messages of 1 MiB while the app does not receive' => sub {
    my $n = 30;
    my %call = (release => $loop->new_future);
    my ($srv, $port) = start_server(app => slow_app(\%call, $n));
    my ($c) = ws_connect($port, sndbuf => 65536)->get;
    ok wait_for(sub { $call{accepted} }, 5), 'accepted';
    my $flood = join '', map { build_frame(opcode => OP_BINARY, payload => pattern($_, $MiB)) } 1 .. $n;
    # Non-blocking writes, so the test sees when the server stops reading.
    my $sock = $c->{sock};
    $sock->blocking(0);
    my ($off, $moved_at, $max_read) = (0, now(), 0);
    my $writer = IO::Async::Timer::Periodic->new(interval => 0.005, on_tick => sub {
        while ($off < length $flood) {
            my $w = syswrite($sock, $flood, 256 * 1024, $off);
            last unless $w;
            $off += $w;
            $moved_at = now();
        }
        $max_read = sample_max($srv, 'bytes_read', $max_read) unless $call{release}->is_ready;
    });
    $loop->add($writer);
    $writer->start;
    ok wait_for(sub { now() - $moved_at > 1 || $off >= length $flood }, 30), 'the client stops getting bytes into TCP';
    $max_read = sample_max($srv, 'bytes_read', $max_read);
    diag sprintf 'the client got %.1f MiB of %d MiB into TCP; engine bytes_read %.2f MiB', $off / $MiB, $n, $max_read / $MiB;
    cmp_ok $max_read, '>', $MiB, 'the engine read at least one whole message';
    cmp_ok $max_read, '<', 4 * $MiB, 'and stopped reading near its byte window, far below 30 MiB';
    $call{release}->done;
    ok wait_for(sub { $off >= length $flood }, 30), 'the rest is read once the app receives';
    $writer->stop;
    $loop->remove($writer);
    $sock->blocking(1);
    my ($f) = eval { $c->next_frame(15)->get };
    is $f && $f->{payload}, "got $n", "the app received all $n messages";
    is scalar(grep { ($call{got}[ $_ - 1 ] // '') eq pattern($_, $MiB) } 1 .. $n), $n, 'intact and in order';
    $c->send_close(1000);
    ok eval { $c->wait_eof(5)->get }, 'closed cleanly';
    stop_server($srv);
};

done_testing;
