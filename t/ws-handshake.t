use strict;
use warnings;
use utf8;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server wait_for);
use PAGI::Test::WebSocket qw(ws_connect ws_open accept_key);
use Future::AsyncAwait;

# The WebSocket opening handshake (PAGI-SPEC 2.4, 3.2; RFC 6455 4): which
# requests become a websocket scope, what the scope holds, how the app's
# answer (accept, close, denial response, return, die) reaches the wire.

binmode Test::More->builder->$_, ":encoding(UTF-8)" for qw(output failure_output todo_output);
my $loop = loop();

# Each subtest installs its own handler; the app records every call.
my ($handler, @calls);
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    my $call = { scope => $scope };
    push @calls, $call;
    return await $handler->($scope, $receive, $send, $call);
};
my ($server, $port) = start_server(app => $app);

sub with_timeout {
    my ($f, $t, $what) = @_;
    return Future->wait_any($f, $loop->delay_future(after => $t)->then(sub { Future->fail("$what: timed out after ${t}s") }));
}

# A handler that accepts (with the given accept event fields) and then waits for the end.
sub accepting {
    my (%accept) = @_;
    return async sub {
        my ($scope, $receive, $send, $call) = @_;
        $call->{first} = await $receive->();
        return if $scope->{type} ne 'websocket';
        await $send->({ type => 'websocket.accept', %accept });
        while (1) {
            my $ev = await $receive->();
            if ($ev->{type} eq 'websocket.disconnect') { $call->{disconnect} = $ev; last }
        }
    };
}

subtest 'a valid handshake gets 101 with the RFC 6455 accept key, the subprotocol and the app headers' => sub {
    @calls = ();
    $handler = accepting(subprotocol => 'chat', headers => [ [ 'x-extra', 'yes' ], [ 'set-cookie', 'a=1' ], [ 'set-cookie', 'b=2' ] ]);
    my ($c, $res) = ws_connect($port, key => 'dGhlIHNhbXBsZSBub25jZQ==', protocols => 'chat, superchat')->get;
    is $res->{status}, 101, 'status 101';
    like $res->{raw}, qr{\AHTTP/1\.1 101 }, 'HTTP/1.1 status line';
    is $res->{header}{'sec-websocket-accept'}, 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=', 'Sec-WebSocket-Accept is the RFC 6455 example value';
    is accept_key('dGhlIHNhbXBsZSBub25jZQ=='), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=', '(the client helper agrees)';
    is lc $res->{header}{upgrade}, 'websocket', 'Upgrade: websocket';
    like $res->{header}{connection}, qr/\bupgrade\b/i, 'Connection: Upgrade';
    is $res->{header}{'sec-websocket-protocol'}, 'chat', 'the chosen subprotocol';
    is $res->{header}{'x-extra'}, 'yes', 'the app header';
    is_deeply [ map { $_->[1] } grep { $_->[0] eq 'set-cookie' } @{ $res->{headers} } ], [ 'a=1', 'b=2' ], 'repeated app headers kept';
    ok !exists $res->{header}{'content-length'} && !exists $res->{header}{'transfer-encoding'}, 'no body framing headers on the 101';
    ok !exists $res->{header}{'sec-websocket-extensions'}, 'no extension agreed';
    $c->send_close(1000, '');
    ok $c->wait_eof(5)->get, 'closes after the close handshake';
    ok wait_for(sub { $calls[0]{disconnect} }, 5), 'the app saw the disconnect';
};

subtest 'the websocket scope' => sub {
    @calls = ();
    $handler = accepting();
    my ($c) = ws_connect($port, path => '/ws/caf%C3%A9?x=1&y=%20', protocols => 'chat, superchat',
                         headers => [ [ 'X-Custom', 'v1' ] ])->get;
    my $s = $calls[0]{scope};
    is $s->{type}, 'websocket', 'type websocket';
    is $s->{scheme}, 'ws', 'scheme ws';
    is $s->{http_version}, '1.1', 'http_version 1.1';
    is $s->{path}, '/ws/café', 'path is decoded to characters';
    is $s->{raw_path}, '/ws/caf%C3%A9', 'raw_path as sent';
    is $s->{query_string}, 'x=1&y=%20', 'query_string as sent';
    is $s->{root_path}, '', 'root_path empty';
    ok !exists $s->{method}, 'no method key';
    is ref $s->{pagi}, 'HASH', 'pagi hash';
    is_deeply $s->{subprotocols}, [ 'chat', 'superchat' ], "subprotocols from 'chat, superchat'";
    is ref $s->{extensions}, 'HASH', 'extensions hash';
    ok exists $s->{extensions}{'websocket.http.response'}, "extensions has 'websocket.http.response'";
    my %h;
    for (@{ $s->{headers} }) { is ref $_, 'ARRAY'; $h{ $_->[0] } = $_->[1] }
    is lc $h{upgrade}, 'websocket', 'upgrade header';
    like $h{connection}, qr/upgrade/i, 'connection header';
    is $h{'sec-websocket-key'}, $c->key, 'sec-websocket-key header';
    is $h{'sec-websocket-version'}, '13', 'sec-websocket-version header';
    is $h{host}, "127.0.0.1:$port", 'host header';
    is $h{'sec-websocket-protocol'}, 'chat, superchat', 'sec-websocket-protocol header';
    is $h{'x-custom'}, 'v1', 'other headers, names lower-cased';
    is_deeply $s->{client}, [ '127.0.0.1', $c->{sock}->sockport ], 'client address';
    is_deeply $calls[0]{first}, { type => 'websocket.connect' }, 'first event is websocket.connect';
    $c->send_close(1000);
    $c->wait_eof(5)->get;

    @calls = ();
    my ($c2) = ws_connect($port)->get;
    is_deeply $calls[0]{scope}{subprotocols}, [], 'subprotocols is [] without Sec-WebSocket-Protocol';
    ok !exists $calls[0]{scope}{method}, 'no method key';
    $c2->close;
    ok wait_for(sub { $calls[0]{disconnect} }, 5), 'disconnect seen';
};

subtest 'Sec-WebSocket-Version 8 gets 426 with Sec-WebSocket-Version: 13; the app is not called' => sub {
    @calls = ();
    $handler = accepting();
    my $c = ws_open($port, version => 8);
    my $res = $c->response->get;
    is $res->{status}, 426, 'status 426';
    is $res->{header}{'sec-websocket-version'}, '13', 'sec-websocket-version: 13';
    ok $c->wait_eof(5)->get, 'connection closed';
    is scalar(@calls), 0, 'the app was not called';
};

subtest 'POST with upgrade headers gets 400' => sub {
    @calls = ();
    $handler = accepting();
    my $c = ws_open($port, method => 'POST');
    is $c->response->get->{status}, 400, 'status 400';
    ok $c->wait_eof(5)->get, 'connection closed';
    is scalar(@calls), 0, 'the app was not called';
};

subtest 'a Sec-WebSocket-Key that is not 16 bytes of base64 gets 400' => sub {
    $handler = accepting();
    for my $key ('c2hvcnQ=', 'not base64 at all!!', 'AAAAAAAAAAAAAAAAAAAAAAAA') {
        @calls = ();
        my $c = ws_open($port, key => $key);
        is $c->response->get->{status}, 400, "key '$key' → 400";
        is scalar(@calls), 0, 'the app was not called';
    }
};

subtest 'Upgrade: websocket without Connection: upgrade is a plain http scope' => sub {
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
        await $send->({ type => 'http.response.body', body => "plain $scope->{type}" });
    };
    my $c = ws_open($port, connection => 'keep-alive');
    my $res = $c->response->get;
    is $res->{status}, 200, 'status 200';
    is $res->{body}, 'plain http', 'the app answered an http scope';
    is $calls[0]{scope}{type}, 'http', 'scope type http';
    is $calls[0]{scope}{method}, 'GET', 'method GET';
    $c->close;
};

subtest 'a permessage-deflate offer is declined: 101 without Sec-WebSocket-Extensions' => sub {
    @calls = ();
    $handler = accepting();
    my ($c, $res) = ws_connect($port, headers => [ [ 'Sec-WebSocket-Extensions', 'permessage-deflate; client_max_window_bits' ] ])->get;
    is $res->{status}, 101, 'status 101';
    ok !exists $res->{header}{'sec-websocket-extensions'}, 'no sec-websocket-extensions in the answer';
    is $calls[0]{scope}{type}, 'websocket', 'websocket scope';
    # Uncompressed frames work (RSV1 would be an error without the extension).
    $handler = undef;
    $c->send_text('plain');
    $c->send_close(1000);
    my $close = $c->wait_close(5)->get;
    is $close->{code}, 1000, 'normal close';
    is $close->{rsv}, 0, 'server frames have no RSV bits';
};

subtest 'websocket.close before accept: a bare 403 and the connection closes' => sub {
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        $call->{first} = await $receive->();
        await $send->({ type => 'websocket.close', code => 4000, reason => 'no' });
        $call->{sent} = 1;
    };
    my $c = ws_open($port);
    my $res = $c->response->get;
    is $res->{status}, 403, 'status 403';
    is $res->{header}{'content-length'}, '0', 'Content-Length: 0';
    is $res->{body}, '', 'empty body';
    ok !exists $res->{header}{upgrade}, 'no Upgrade header';
    ok $c->wait_eof(5)->get, 'the connection closes';
    ok $calls[0]{sent}, 'the close send completed';
};

subtest 'an app that returns without accepting: 403' => sub {
    @calls = ();
    $handler = async sub { my (undef, $receive) = @_; await $receive->(); return };
    my $c = ws_open($port);
    is $c->response->get->{status}, 403, 'status 403';
    ok $c->wait_eof(5)->get, 'the connection closes';
};

subtest 'an app that dies before accepting: 500' => sub {
    @calls = ();
    $handler = async sub { my (undef, $receive) = @_; await $receive->(); die "boom\n" };
    my $log = '';
    my $c = ws_open($port);
    my $res = $c->response->get;
    is $res->{status}, 500, 'status 500';
    ok $c->wait_eof(5)->get, 'the connection closes';
};

subtest 'denial response: websocket.http.response.start 401 + a body in two parts' => sub {
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        $call->{first} = await $receive->();
        my $pending = $receive->();
        $call->{pending} = $pending;
        $call->{start} = $send->({ type => 'websocket.http.response.start', status => 401,
                                   headers => [ [ 'content-type', 'text/plain' ], [ 'www-authenticate', 'Bearer' ] ] });
        await $call->{start};
        await $send->({ type => 'websocket.http.response.body', body => 'denied: ', more => 1 });
        await $send->({ type => 'websocket.http.response.body', body => 'no token', more => 0 });
        $call->{sent} = 1;
        $call->{after} = await with_timeout($pending, 5, 'pending receive after the denial');
    };
    my $c = ws_open($port);
    my $res = $c->response->get;
    is $res->{status}, 401, 'status 401';
    is $res->{header}{'content-type'}, 'text/plain', 'content-type from the app';
    is $res->{header}{'www-authenticate'}, 'Bearer', 'www-authenticate from the app';
    is $res->{body}, 'denied: no token', 'the body, both parts';
    is $res->{header}{'content-length'}, '16', 'framed with Content-Length (spec 3.2.2)'
        or diag "response head: $res->{raw}";
    ok !exists $res->{header}{'transfer-encoding'}, 'not chunked';
    ok !exists $res->{header}{upgrade} && !exists $res->{header}{'sec-websocket-accept'}, 'no handshake headers';
    ok $c->wait_eof(5)->get, 'the connection closes after the response';
    ok wait_for(sub { $calls[0]{sent} }, 5), 'every denial send completed';
    ok wait_for(sub { $calls[0]{pending}->is_ready }, 5), "the app's pending receive resolves (does not hang)";
    if ($calls[0]{after}) {
        diag 'pending receive after the denial yielded: ' . join(', ', map { "$_=$calls[0]{after}{$_}" } sort keys %{ $calls[0]{after} });
    }
};

subtest 'denial events after accept are ignored' => sub {
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        $call->{go} = await $receive->();    # the session runs before the denial events come
        $call->{start_f} = $send->({ type => 'websocket.http.response.start', status => 401, headers => [] });
        $call->{body_f}  = $send->({ type => 'websocket.http.response.body', body => 'ignored' });
        await $send->({ type => 'websocket.send', text => 'still open' });
        while (1) { last if (await $receive->())->{type} eq 'websocket.disconnect' }
        $call->{done} = 1;
    };
    my ($c) = ws_connect($port)->get;
    $c->send_text('go');
    my ($f) = $c->next_frame(5)->get;
    is $calls[0]{go}{text}, 'go', 'the session is open';
    is $f->{opcode}, 1, 'the next bytes after the 101 are a text frame';
    is $f->{payload}, 'still open', 'with the app message';
    ok $calls[0]{start_f}->is_done, 'websocket.http.response.start after accept: Future done';
    ok $calls[0]{body_f}->is_done, 'websocket.http.response.body after accept: Future done';
    $c->send_close(1000);
    my $close = $c->wait_close(5)->get;
    is $close->{code}, 1000, 'close echoed';
    unlike join('', map { $_->{payload} } @{ $c->frames }), qr/ignored|HTTP\/1/, 'no HTTP bytes on the WebSocket';
    ok wait_for(sub { $calls[0]{done} }, 5), 'the app ends';
};

subtest 'a subprotocol that is not a token fails the accept send' => sub {
    @calls = ();
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        await $receive->();
        my $f = $send->({ type => 'websocket.accept', subprotocol => 'bad proto' });
        await $f->else(sub { $call->{error} = $_[0]; Future->done });
        $call->{failed} = $f->is_failed;
        await $send->({ type => 'websocket.accept' });
        while (1) { last if (await $receive->())->{type} eq 'websocket.disconnect' }
    };
    my ($c, $res) = ws_connect($port, protocols => 'bad proto')->get;
    ok $calls[0]{failed}, 'websocket.accept with subprotocol "bad proto" failed';
    like $calls[0]{error} // '', qr/subprotocol/, 'the error names the field';
    is $res->{status}, 101, 'a later valid accept still works';
    ok !exists $res->{header}{'sec-websocket-protocol'}, 'no subprotocol in the 101';
    $c->close;
};

stop_server($server);
done_testing;
