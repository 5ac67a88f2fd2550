use strict;
use warnings;
use utf8;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server wait_for);
use PAGI::Test::WebSocket qw(ws_connect ws_open build_frame OP_TEXT OP_BINARY OP_CLOSE OP_PING OP_PONG);
use Future::AsyncAwait;
use IO::Async::Timer::Periodic;
use Digest::MD5 ();
use Encode ();
use Socket ();
use Time::HiRes ();

# WebSocket messages after the handshake (PAGI-SPEC 3.2): text and binary
# round trips, fragmentation, length encodings, send rules, the close
# handshake in both directions, disconnect codes, ping/pong and keepalive,
# flow control in both directions and graceful shutdown.

binmode Test::More->builder->$_, ':encoding(UTF-8)' for qw(output failure_output todo_output);
my $loop = loop();
my $MiB = 1024 * 1024;

# Each subtest installs a handler; every call is recorded.
my ($handler, @calls);
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    my $call = { scope => $scope, events => [] };
    push @calls, $call;
    await $handler->($scope, $receive, $send, $call);
    $call->{finished} = 1;
};
my ($server, $port) = start_server(app => $app);

# Accepts, then echoes every message (recording it) until the disconnect.
sub echo_handler {
    my (%o) = @_;
    return async sub {
        my ($scope, $receive, $send, $call) = @_;
        push @{ $call->{events} }, await $receive->();
        await $send->({ type => 'websocket.accept' });
        while (1) {
            my $ev = await $receive->();
            push @{ $call->{events} }, $ev;
            if ($ev->{type} eq 'websocket.disconnect') { $call->{disconnect} = $ev; last }
            next if $o{no_echo};
            await $send->({ type => 'websocket.send', defined $ev->{text} ? (text => $ev->{text}) : (bytes => $ev->{bytes}) });
        }
    };
}

sub messages_of { [ grep { $_->{type} eq 'websocket.receive' } @{ $_[0]{events} } ] }

# Largest value of $field over the live requests of $srv's engine (ids as in t/http-backpressure.t).
sub sample_max {
    my ($srv, $field, $max) = @_;
    my $engine = $srv->engine or return $max;
    for my $id (1 .. $engine->stats->{requests_total}) {
        my $s = $engine->stats($id) or next;
        $max = $s->{$field} if !defined $max || $s->{$field} > $max;
    }
    return $max;
}

sub pattern { my ($i, $len) = @_; substr(pack('N', $i) x ($len / 4 + 1), 0, $len) }

subtest 'text round trip with non-ASCII characters' => sub {
    @calls = ();
    $handler = echo_handler();
    my ($c) = ws_connect($port)->get;
    my $text = "héllo ☺";
    $c->send_text($text);
    my ($f) = $c->next_frame(5)->get;
    ok wait_for(sub { @{ messages_of($calls[0]) } }, 5), 'the app got a message';
    my $m = messages_of($calls[0])->[0];
    is $m->{text}, $text, 'the app gets characters';
    is length $m->{text}, 7, 'seven characters';
    ok !exists $m->{bytes}, 'no bytes field on a text message';
    is $f->{opcode}, OP_TEXT, 'echo is a text frame';
    is $f->{fin}, 1, 'unfragmented';
    is $f->{masked}, 0, 'server frames are not masked';
    is $f->{payload}, Encode::encode('UTF-8', $text), 'the client gets the UTF-8 bytes';
    $c->send_close(1000);
    $c->wait_eof(5)->get;
};

subtest 'binary round trip with all 256 byte values' => sub {
    @calls = ();
    $handler = echo_handler();
    my ($c) = ws_connect($port)->get;
    my $bytes = join '', map { chr } 0 .. 255;
    $c->send_binary($bytes);
    my ($f) = $c->next_frame(5)->get;
    my $m = messages_of($calls[0])->[0];
    is $m->{bytes}, $bytes, 'the app gets the 256 bytes';
    ok !utf8::is_utf8($m->{bytes}), 'as a byte string';
    ok !exists $m->{text}, 'no text field on a binary message';
    is $f->{opcode}, OP_BINARY, 'echo is a binary frame';
    is $f->{payload}, $bytes, 'the client gets the same bytes';
    $c->send_close(1000);
    $c->wait_eof(5)->get;
};

subtest 'a text message in 3 fragments arrives as one websocket.receive' => sub {
    @calls = ();
    $handler = echo_handler();
    my ($c) = ws_connect($port)->get;
    my $utf8 = Encode::encode('UTF-8', "frag ☺ mented");
    # The smiley's three bytes are split over the first two fragments.
    $c->send_fragments(OP_TEXT, [ substr($utf8, 0, 6), substr($utf8, 6, 4), substr($utf8, 10) ]);
    $c->send_text('next');
    my @f = $c->next_frames(2, 5)->get;
    my $msgs = messages_of($calls[0]);
    is scalar(@$msgs), 2, 'two messages for the app';
    is $msgs->[0]{text}, "frag ☺ mented", 'the fragments joined into one message';
    is $msgs->[1]{text}, 'next', 'then the next message';
    is $f[0]{payload}, $utf8, 'echoed whole';
    $c->send_close(1000);
    $c->wait_eof(5)->get;
};

subtest 'messages of 0, 125, 126, 65535, 65536 bytes and 1 MiB round trip' => sub {
    @calls = ();
    $handler = echo_handler();
    my ($c) = ws_connect($port)->get;
    my @sizes = (0, 125, 126, 65535, 65536, $MiB);
    for my $n (@sizes) {
        $c->send_binary(pattern($n, $n));
        $c->send_text('t' x $n) if $n <= 65536;
    }
    my $expect = 2 * @sizes - 1;
    my @f = $c->next_frames($expect, 20)->get;
    my $msgs = messages_of($calls[0]);
    for my $n (@sizes) {
        my $m = shift @$msgs;
        my $f = shift @f;
        is length($m->{bytes} // ''), $n, "$n bytes: the app got a $n-byte binary message";
        is $m->{bytes}, pattern($n, $n), "$n bytes: content intact for the app";
        is $f->{length}, $n, "$n bytes: echo frame length";
        is $f->{payload}, pattern($n, $n), "$n bytes: echo content intact";
        next if $n > 65536;
        $m = shift @$msgs;
        $f = shift @f;
        is $m->{text}, 't' x $n, "$n bytes: text message";
        is $f->{opcode}, OP_TEXT, "$n bytes: text echo";
        is $f->{length}, $n, "$n bytes: text echo length";
    }
    $c->send_close(1000);
    $c->wait_eof(5)->get;
};

subtest 'a message sent right after websocket.accept (same tick) reaches the client' => sub {
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        await $send->({ type => 'websocket.send', text => 'welcome' });
        await $send->({ type => 'websocket.send', bytes => "\x00\x01" });
        while (1) { last if (await $receive->())->{type} eq 'websocket.disconnect' }
    };
    my ($c) = ws_connect($port)->get;
    my @f = eval { $c->next_frames(2, 3)->get };
    is $f[0] && $f[0]{payload}, 'welcome', 'the first message after accept arrives'
        or diag 'after the 101: ' . $c->describe;
    is $f[1] && $f[1]{payload}, "\x00\x01", 'and the second';
    $c->close;
    wait_for(sub { $calls[0]{finished} }, 5);
};

subtest 'websocket.send with both text and bytes, or neither, fails naming the fields' => sub {
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        await $receive->();    # the client's 'go'
        for my $ev ({ text => 'a', bytes => 'b' }, {}) {
            my $f = $send->({ type => 'websocket.send', %$ev });
            await $f->else(sub { Future->done });
            push @{ $call->{results} }, [ $f->is_failed, $f->is_failed ? ($f->failure)[0] : '' ];
        }
        await $send->({ type => 'websocket.send', text => 'still fine' });
        while (1) { last if (await $receive->())->{type} eq 'websocket.disconnect' }
    };
    my ($c) = ws_connect($port)->get;
    $c->send_text('go');
    my ($f) = $c->next_frame(5)->get;
    my ($both, $neither) = @{ $calls[0]{results} };
    ok $both->[0], 'text and bytes together: the send fails';
    like $both->[1], qr/text/, '... naming text';
    like $both->[1], qr/bytes/, '... and bytes';
    ok $neither->[0], 'neither text nor bytes: the send fails';
    like $neither->[1], qr/text.*bytes|bytes.*text/, '... naming both fields';
    is $f->{payload}, 'still fine', 'the connection still works afterwards';
    $c->send_close(1000);
    $c->wait_eof(5)->get;
};

subtest 'websocket.send before accept fails' => sub {
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        my $f = $send->({ type => 'websocket.send', text => 'too early' });
        await $f->else(sub { Future->done });
        $call->{failed} = $f->is_failed;
        $call->{error} = $f->is_failed ? ($f->failure)[0] : '';
        await $send->({ type => 'websocket.accept' });
        await $receive->();
        await $send->({ type => 'websocket.send', text => 'now' });
        while (1) { last if (await $receive->())->{type} eq 'websocket.disconnect' }
    };
    my ($c) = ws_connect($port)->get;
    ok $calls[0]{failed}, 'the send before accept failed';
    like $calls[0]{error}, qr/accept/, 'the error says why';
    $c->send_text('go');
    my ($f) = $c->next_frame(5)->get;
    is $f->{payload}, 'now', 'the too-early message never reached the wire; later ones do';
    $c->send_close(1000);
    $c->wait_eof(5)->get;
};

subtest 'websocket.close from the app (4001, bye) reaches the client; after the echo the app sees the disconnect' => sub {
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        await $receive->();    # 'go'
        await $send->({ type => 'websocket.close', code => 4001, reason => 'bye' });
        $call->{disconnect} = await $receive->();
    };
    my ($c) = ws_connect($port)->get;
    $c->send_text('go');
    my $close = $c->wait_close(5)->get;
    is $close->{code}, 4001, 'close code 4001';
    is $close->{reason}, 'bye', "reason 'bye'";
    ok !$calls[0]{disconnect}, 'the app has no disconnect before the client answers';
    $c->send_close(4001, 'bye');
    ok wait_for(sub { $calls[0]{disconnect} }, 5), "the app's receive yields after the echo";
    is $calls[0]{disconnect}{type}, 'websocket.disconnect', 'websocket.disconnect';
    is $calls[0]{disconnect}{code}, 4001, 'with the code of the close handshake';
    ok $c->wait_eof(5)->get, 'the server closes the TCP connection';
};

subtest "peer Close 1001 'going': the app gets that code and reason; the server echoes a Close" => sub {
    @calls = ();
    $handler = echo_handler();
    my ($c) = ws_connect($port)->get;
    $c->send_close(1001, 'going');
    my $close = $c->wait_close(5)->get;
    is $close->{code}, 1001, 'the echo carries code 1001';
    ok wait_for(sub { $calls[0]{disconnect} }, 5), 'the app got a disconnect';
    is_deeply $calls[0]{disconnect}, { type => 'websocket.disconnect', code => 1001, reason => 'going' }, 'code 1001, reason going';
    ok $c->wait_eof(5)->get, 'the server closes the TCP connection';
};

subtest 'peer Close with an empty payload: code 1005, and the echo has an empty payload' => sub {
    @calls = ();
    $handler = echo_handler();
    my ($c) = ws_connect($port)->get;
    $c->send_close;
    my $close = $c->wait_close(5)->get;
    is $close->{length}, 0, 'the echoed Close has an empty payload (no 1005 on the wire)';
    ok wait_for(sub { $calls[0]{disconnect} }, 5), 'the app got a disconnect';
    is $calls[0]{disconnect}{code}, 1005, 'code 1005';
    is $calls[0]{disconnect}{reason}, '', 'empty reason';
    ok $c->wait_eof(5)->get, 'the server closes the TCP connection';
};

subtest "client drops TCP without Close: code 1006, reason 'client_closed'" => sub {
    @calls = ();
    $handler = echo_handler();
    my ($c) = ws_connect($port)->get;
    $c->send_text('x');
    $c->next_frame(5)->get;
    $c->close;
    ok wait_for(sub { $calls[0]{disconnect} }, 5), 'the app got a disconnect';
    is $calls[0]{disconnect}{code}, 1006, 'code 1006';
    is $calls[0]{disconnect}{reason}, 'client_closed', 'reason client_closed';
};

subtest 'client leaves before accept: the pending receive yields websocket.disconnect 1006' => sub {
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        $call->{connect} = await $receive->();
        $call->{waiting} = 1;
        $call->{disconnect} = await $receive->();
        $call->{send_f} = $send->({ type => 'websocket.accept' });
    };
    my $c = ws_open($port);
    ok wait_for(sub { $calls[0] && $calls[0]{waiting} }, 5), 'the app waits in receive after websocket.connect';
    $c->close;
    ok wait_for(sub { $calls[0]{disconnect} }, 5), 'the pending receive resolved';
    is $calls[0]{disconnect}{type}, 'websocket.disconnect', 'websocket.disconnect';
    is $calls[0]{disconnect}{code}, 1006, 'code 1006';
    ok $calls[0]{send_f}->is_done, 'accept after the client left is a silent no-op';
};

subtest 'send after disconnect is a silent no-op' => sub {
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        $call->{disconnect} = await $receive->();
        $call->{after} = [ map { $send->($_) } { type => 'websocket.send', text => 'late' },
                           { type => 'websocket.send', bytes => 'late' }, { type => 'websocket.close' } ];
        $call->{again} = await $receive->();
    };
    my ($c) = ws_connect($port)->get;
    $c->close;
    ok wait_for(sub { $calls[0]{finished} }, 5), 'the app finished';
    is $calls[0]{disconnect}{type}, 'websocket.disconnect', 'disconnect first';
    for my $f (@{ $calls[0]{after} }) {
        ok $f->is_done, 'send after disconnect: Future done (not failed)';
    }
    is $calls[0]{again}{type}, 'websocket.disconnect', 'receive after the disconnect keeps yielding websocket.disconnect';
};

subtest 'a ping from the client is answered with a pong carrying the same payload' => sub {
    @calls = ();
    $handler = echo_handler();
    my ($c) = ws_connect($port)->get;
    $c->send_ping("ping-\x00\xff-data");
    my ($f) = $c->next_frame(5)->get;
    is $f->{opcode}, OP_PONG, 'a pong';
    is $f->{payload}, "ping-\x00\xff-data", 'same payload';
    $c->send_ping('');
    ($f) = $c->next_frame(5)->get;
    is $f->{opcode}, OP_PONG, 'a pong for an empty ping';
    is $f->{length}, 0, 'empty payload';
    is scalar(@{ messages_of($calls[0]) }), 0, 'pings are not messages for the app';
    $c->send_close(1000);
    $c->wait_eof(5)->get;
};

subtest 'websocket.keepalive {interval 0.2, timeout 0.5}: pings, and a silent client is dropped (1006 keepalive_timeout)' => sub {
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        await $receive->();    # 'go'
        await $send->({ type => 'websocket.keepalive', interval => 0.2, timeout => 0.5 });
        $call->{disconnect} = await $receive->();
    };
    my ($c) = ws_connect($port)->get;
    my $t0 = Time::HiRes::time();
    $c->send_text('go');
    my ($f) = $c->next_frame(3)->get;
    is $f->{opcode}, OP_PING, 'the server pings';
    ok $c->wait_eof(5)->get, 'the client that never answers is dropped';
    my $took = Time::HiRes::time() - $t0;
    cmp_ok $took, '<', 3, "dropped within 3 s (took ${took}s)";
    ok wait_for(sub { $calls[0]{disconnect} }, 5), 'the app got a disconnect';
    is $calls[0]{disconnect}{code}, 1006, 'code 1006';
    is $calls[0]{disconnect}{reason}, 'keepalive_timeout', 'reason keepalive_timeout';

    # A client that answers stays connected.
    @calls = ();
    my ($c2) = ws_connect($port, auto_pong => 1)->get;
    $c2->{auto_pong} = 1;
    $c2->send_text('go');
    $loop->delay_future(after => 1.2)->get;
    ok !$c2->is_eof, 'a client that answers pings stays connected';
    cmp_ok scalar(grep { $_->{opcode} == OP_PING } @{ $c2->frames }), '>=', 3, 'and keeps getting pings';
    ok !$calls[0]{disconnect}, 'no disconnect for the app';
    $c2->send_close(1000);
    $c2->wait_eof(5)->get;
};

subtest 'server-wide ws_ping_interval 0.3 / ws_ping_timeout 0.5 pings without the app asking' => sub {
    my @seen;
    my $app2 = async sub {
        my ($scope, $receive, $send) = @_;
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        push @seen, await $receive->();
    };
    my ($srv, $p) = start_server(app => $app2, ws_ping_interval => 0.3, ws_ping_timeout => 0.5);
    my ($c) = ws_connect($p)->get;
    my ($f) = $c->next_frame(3)->get;
    is $f->{opcode}, OP_PING, 'the server pings';
    ok $c->wait_eof(5)->get, 'the silent client is dropped';
    ok wait_for(sub { @seen }, 5), 'the app got a disconnect';
    is $seen[0]{code}, 1006, 'code 1006';
    is $seen[0]{reason}, 'keepalive_timeout', 'reason keepalive_timeout';
    stop_server($srv);
};

subtest 'write backpressure: 20 MB to a client that does not read for 1 s' => sub {
    my $count = 320;    # 20 MiB in 64 KiB messages
    my (@ready, $finished, $max_buffered);
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        await $receive->();    # 'go'
        for my $i (0 .. $count - 1) {
            my $f = $send->({ type => 'websocket.send', bytes => pattern($i, 65536) });
            push @ready, $f->is_ready ? 1 : 0;
            $max_buffered = sample_max($server, 'buffered', $max_buffered);
            await $f;
        }
        $finished = 1;
        while (1) { last if (await $receive->())->{type} eq 'websocket.disconnect' }
    };
    my ($high) = $server->engine->write_watermarks;
    my $sampler = IO::Async::Timer::Periodic->new(interval => 0.005,
        on_tick => sub { $max_buffered = sample_max($server, 'buffered', $max_buffered) });
    $loop->add($sampler);
    $sampler->start;

    my ($c) = ws_connect($port)->get;
    $c->pause;
    $c->send_text('go');
    $loop->delay_future(after => 1)->get;
    my $pending = grep { !$_ } @ready;
    cmp_ok $pending, '>=', 1, 'some $send Futures were pending while the client did not read';
    ok !$finished, 'the app is stalled';
    cmp_ok $max_buffered // 0, '<=', $high + $MiB, 'engine buffered bytes stay under write_high_watermark + 1 MiB';
    diag sprintf '%d sends before the client read, %d pending, max buffered %d', scalar @ready, $pending, $max_buffered // -1;

    $c->resume;
    $c->next_frames($count, 30)->get;
    $sampler->stop;
    $loop->remove($sampler);
    ok wait_for(sub { $finished }, 5), 'the app finished sending';
    my @f = @{ $c->frames };
    is scalar(grep { $_->{opcode} == OP_BINARY && $_->{length} == 65536 } @f), $count, "$count binary messages of 64 KiB";
    my ($got, $want) = (Digest::MD5->new, Digest::MD5->new);
    $got->add($_->{payload}) for @f;
    $want->add(pattern($_, 65536)) for 0 .. $count - 1;
    is $got->hexdigest, $want->hexdigest, 'everything arrived intact and in order';
    $c->send_close(1000);
    $c->wait_eof(5)->get;
};

subtest 'inbound flow control: a flood of 5000 messages while the app does not receive for 2 s' => sub {
    my $n = 5000;
    my ($receiving, @got);
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        await $loop->delay_future(after => 2);
        $receiving = 1;
        while (1) {
            my $ev = await $receive->();
            last if $ev->{type} eq 'websocket.disconnect';
            push @got, $ev->{bytes};
            last if @got == $n;
        }
        await $send->({ type => 'websocket.send', text => 'got ' . scalar @got });
        while (1) { last if (await $receive->())->{type} eq 'websocket.disconnect' }
    };
    my ($c) = ws_connect($port, sndbuf => 65536)->get;
    my $flood = join '', map { build_frame(opcode => OP_BINARY, payload => pattern($_, 1024)) } 0 .. $n - 1;
    # Write with non-blocking syswrite, so the test knows how much TCP accepted.
    my $sock = $c->{sock};
    $sock->blocking(0);
    my ($off, $max_read, $at_2s) = (0, undef, undef);
    my $writer = IO::Async::Timer::Periodic->new(interval => 0.005, on_tick => sub {
        while ($off < length $flood) {
            my $w = syswrite($sock, $flood, 256 * 1024, $off);
            last unless $w;
            $off += $w;
        }
        $max_read = sample_max($server, 'bytes_read', $max_read) unless $receiving;
    });
    $loop->add($writer);
    $writer->start;
    ok wait_for(sub { $receiving }, 5), 'the app starts receiving after 2 s';
    $at_2s = $off;
    diag sprintf 'while the app did not receive: the client got %d of %d bytes into TCP; engine bytes_read max %d',
        $at_2s, length $flood, $max_read // -1;
    cmp_ok $max_read // 0, '<', 5_000_000 / 4, 'engine bytes_read stays far below 5 MB';
    # Kernel buffers (autotuned) plus the engine's bounded read-ahead: well under the flood.
    cmp_ok $at_2s, '<', 3 * $MiB, 'TCP accepted far less than the 5 MB flood (the engine stopped reading)';
    ok wait_for(sub { $off >= length $flood }, 15), 'the rest of the flood is written once the app receives';
    $writer->stop;
    $loop->remove($writer);
    my ($f) = $c->next_frame(15)->get;
    is $f->{payload}, "got $n", "the app received all $n messages";
    is scalar(@got), $n, "$n messages";
    is scalar(grep { $got[$_] eq pattern($_, 1024) } 0 .. $#got), $n, 'all intact and in order';
    $sock->blocking(1);
    $c->send_close(1000);
    $c->wait_eof(5)->get;
};

subtest "graceful shutdown: disconnect 1001 'server_shutdown' to the app, Close 1001 to the client" => sub {
    my %seen;
    my $app3 = async sub {
        my ($scope, $receive, $send) = @_;
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        $seen{waiting} = 1;
        $seen{disconnect} = await $receive->();
        $seen{late_send} = $send->({ type => 'websocket.send', text => 'late' });
    };
    my ($srv, $p) = start_server(app => $app3, shutdown_timeout => 5);
    my ($c) = ws_connect($p)->get;
    ok wait_for(sub { $seen{waiting} }, 5), 'the app waits in receive';
    my $t0 = Time::HiRes::time();
    my $shutdown = $srv->shutdown;
    my $close = $c->wait_close(5)->get;
    is $close->{code}, 1001, 'the client gets a Close frame with 1001';
    $c->send_close(1001);
    ok wait_for(sub { $seen{disconnect} }, 5), 'the app got a disconnect';
    is $seen{disconnect}{code}, 1001, 'code 1001';
    is $seen{disconnect}{reason}, 'server_shutdown', 'reason server_shutdown';
    ok eval { Future->wait_any($shutdown, $loop->delay_future(after => 8)->then(sub { Future->fail('shutdown timed out') }))->get; 1 },
        'shutdown completes' or diag $@;
    my $took = Time::HiRes::time() - $t0;
    cmp_ok $took, '<', 5, "within the shutdown timeout (took ${took}s)";
    ok $c->wait_eof(5)->get, 'the connection is closed';
    ok $seen{late_send}->is_done, 'a send after the shutdown disconnect is a no-op';
    $loop->remove($srv);
};

stop_server($server);
done_testing;
