use strict;
use warnings;
use Test::More;
use Future::AsyncAwait;
use IO::Async::Loop;
use PAGI::Test::Client;

alarm 60;

my (@scopes, @app_events);
# /echo echoes (text as text, bytes as bytes), closes on "bye", and records
# the disconnect it gets. Other paths exercise the handshake answers.
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'websocket';
    push @scopes, $scope;
    my $connect = await $receive->();
    push @app_events, $connect;
    my $path = $scope->{path};
    if ($path eq '/refuse') {
        return await $send->({ type => 'websocket.close', code => 4003 });
    }
    if ($path eq '/deny') {
        await $send->({ type => 'websocket.http.response.start', status => 401, headers => [ [ 'www-authenticate', 'Basic' ] ] });
        await $send->({ type => 'websocket.http.response.body', body => 'Unau', more => 1 });
        return await $send->({ type => 'websocket.http.response.body', body => 'thorized' });
    }
    die "handshake exploded\n" if $path eq '/die';
    return if $path eq '/silent';
    if ($path eq '/bad') {
        await $send->({ type => 'websocket.accept' });
        return await $send->({ type => 'websocket.send', text => 'a', bytes => 'b' });
    }
    my ($offered) = @{ $scope->{subprotocols} };
    await $send->({ type => 'websocket.accept', (defined $offered ? (subprotocol => $offered) : ()),
                    headers => [ [ 'x-accepted', 'yes' ] ] });
    if ($path eq '/later') {
        await IO::Async::Loop->new->delay_future(after => 0.05);
        await $send->({ type => 'websocket.send', text => 'late' });
        return await $send->({ type => 'websocket.close', code => 4000, reason => 'done' });
    }
    while (1) {
        my $ev = await $receive->();
        push @app_events, $ev;
        last if $ev->{type} eq 'websocket.disconnect';
        die "message exploded\n" if ($ev->{text} // '') eq 'die';
        if (($ev->{text} // '') eq 'bye') {
            await $send->({ type => 'websocket.close', code => 4001, reason => 'see you' });
            next;
        }
        await $send->(defined $ev->{text} ? { type => 'websocket.send', text => "echo: $ev->{text}" }
                                          : { type => 'websocket.send', bytes => $ev->{bytes} });
    }
};

my $client = PAGI::Test::Client->new(app => $app);

subtest 'connect: scope and accept' => sub {
    my $ws = $client->websocket('/echo?room=1', subprotocols => [ 'chat', 'superchat' ], headers => { Origin => 'http://x' });
    ok $ws->accepted, 'accepted';
    is $ws->status, 101, 'status 101';
    is $ws->subprotocol, 'chat', 'the subprotocol the app chose';
    is_deeply $ws->accept_headers, [ [ 'x-accepted', 'yes' ] ], 'accept headers';
    my $s = $scopes[-1];
    is $s->{type}, 'websocket', 'type';
    is $s->{scheme}, 'ws', 'scheme ws';
    ok !exists $s->{method}, 'no method in a websocket scope';
    is $s->{path}, '/echo', 'path';
    is $s->{query_string}, 'room=1', 'query_string';
    is_deeply $s->{subprotocols}, [ 'chat', 'superchat' ], 'subprotocols';
    is_deeply $s->{extensions}, { 'websocket.http.response' => {} }, 'the denial extension is advertised';
    my %h = map { @$_ } @{ $s->{headers} };
    is $h{upgrade}, 'websocket', 'upgrade header';
    is $h{connection}, 'Upgrade', 'connection header';
    is $h{'sec-websocket-version'}, 13, 'version header';
    like $h{'sec-websocket-key'}, qr{\A[A-Za-z0-9+/]{22}==\z}, 'a base64 key';
    is $h{'sec-websocket-protocol'}, 'chat, superchat', 'protocol header';
    is $h{origin}, 'http://x', 'own headers';
    is_deeply $app_events[-1], { type => 'websocket.connect' }, 'websocket.connect first';
    $ws->close;
    is(PAGI::Test::Client->new(app => $app, scheme => "https")->websocket("/echo")->scope->{scheme}, "wss", "wss over https");
};

subtest 'echo, json, close by the client' => sub {
    my $ws = $client->websocket('/echo');
    $ws->send_text("caf\x{e9}");
    is $ws->receive, "echo: caf\x{e9}", 'text round trip, as characters';
    $ws->send_bytes("\x00\xff");
    is_deeply $ws->receive_message, { bytes => "\x00\xff" }, 'bytes round trip';
    $ws->send_json({ a => [1] });
    $ws->send_text('x');
    my $first = $ws->receive;
    is $first, 'echo: {"a":[1]}', 'send_json sends a text message';
    eval { $ws->receive_json };
    like $@, qr/receive_json: the message is not JSON.*message: 'echo: x'/, 'receive_json croaks on non-JSON';
    $ws->close(4100, 'client done');
    is_deeply $app_events[-1], { type => 'websocket.disconnect', code => 4100, reason => 'client done' },
        'close delivers websocket.disconnect with the code and reason';
    ok $ws->closed, 'closed';
    is $ws->close_code, 4100, 'close_code';
    eval { $ws->send_text('more') };
    like $@, qr/send_text: the connection is closed \(code 4100\)/, 'send after close croaks';
};

subtest 'the app closes' => sub {
    my $ws = $client->websocket('/echo');
    $ws->send_text('bye');
    eval { $ws->receive(timeout => 1) };
    like $@, qr/closed by the app \(code 4001, reason 'see you'\) with no message left/, 'receive after the app closed croaks with the code';
    ok $ws->closed, 'closed';
    is $ws->close_code, 4001, 'close_code';
    is $ws->close_reason, 'see you', 'close_reason';
    $ws->close;
    is_deeply $app_events[-1], { type => 'websocket.disconnect', code => 4001, reason => 'see you' },
        'the app hears the close handshake';

    my $later = $client->websocket('/later');
    is $later->receive(timeout => 5), 'late', 'a message sent after a timer';
    is $later->wait_closed(timeout => 5), 4000, 'wait_closed returns the code';
};

subtest 'receive timeout' => sub {
    my $ws = $client->websocket('/echo');
    eval { $ws->receive(timeout => 0.2) };
    like $@, qr{websocket /echo: receive: no message from the app within 0\.2s}, 'receive times out clearly';
    $ws->close;
};

subtest 'denied handshakes' => sub {
    my $ws = $client->websocket('/refuse');
    ok !$ws->accepted, 'websocket.close before accept: not accepted';
    is $ws->status, 403, '... status 403, as PAGI::Server answers';
    eval { $ws->send_text('x') };
    like $@, qr/send_text: the handshake was denied \(status 403\)/, 'sending on a denied session croaks';

    $ws = $client->websocket('/deny');
    ok !$ws->accepted, 'denial response: not accepted';
    is $ws->status, 401, 'the denial status';
    is $ws->response->content, 'Unauthorized', 'the denial body, in pieces';
    is $ws->response->header('www-authenticate'), 'Basic', 'the denial headers';

    is $client->websocket('/silent')->status, 403, 'an app returning before accept: 403';
    eval { $client->websocket('/die') };
    like $@, qr{websocket /die: the app died: handshake exploded}, 'an app dying before accept croaks';
    is(PAGI::Test::Client->new(app => $app, raise_app_errors => 0)->websocket("/die")->status, 500, '... or is a 500 with raise_app_errors => 0');
};

subtest 'app errors and bad events' => sub {
    my $ws = $client->websocket('/echo');
    $ws->send_text('die');
    eval { $ws->receive };
    like $@, qr/the app died: message exploded/, 'an app dying after accept croaks on the next receive';
    is $ws->close_code, 1011, 'as a server would, close code 1011';

    eval { $client->websocket('/bad')->receive };
    like $@, qr/websocket\.send: exactly one of 'text' and 'bytes' is required/, 'a bad event croaks, naming the fields';

    my $bad_sub = async sub {
        my ($scope, $receive, $send) = @_;
        die "no\n" unless $scope->{type} eq 'websocket';
        await $receive->();
        await $send->({ type => 'websocket.accept', subprotocol => 'other' });
    };
    eval { PAGI::Test::Client->new(app => $bad_sub)->websocket('/', subprotocols => ['chat']) };
    like $@, qr/websocket\.accept: 'subprotocol' 'other' was not offered by the client \(offered: chat\)/,
        'accepting a subprotocol that was not offered croaks';

    my $early = async sub {
        my ($scope, $receive, $send) = @_;
        die "no\n" unless $scope->{type} eq 'websocket';
        await $receive->();
        await $send->({ type => 'websocket.send', text => 'too soon' });
    };
    eval { PAGI::Test::Client->new(app => $early)->websocket('/') };
    like $@, qr/websocket\.send: sent before websocket\.accept/, 'a message before accept croaks';

    my $hangs = async sub { my ($scope, $receive) = @_; die "no\n" unless $scope->{type} eq 'websocket'; await $receive->(); await $receive->() };
    eval { PAGI::Test::Client->new(app => $hangs, timeout => 0.3)->websocket('/wait') };
    like $@, qr{websocket /wait: the app did not answer the handshake .* within 0\.3s}, 'no handshake answer times out';
};

subtest 'two sessions at once (a broadcast)' => sub {
    my @members;
    my $room = async sub {
        my ($scope, $receive, $send) = @_;
        die "no\n" unless $scope->{type} eq 'websocket';
        await $receive->();
        await $send->({ type => 'websocket.accept' });
        push @members, $send;
        while (1) {
            my $ev = await $receive->();
            last if $ev->{type} eq 'websocket.disconnect';
            for my $member (grep { $_ != $send } @members) {
                await $member->({ type => 'websocket.send', text => "someone said: $ev->{text}" });
            }
        }
        @members = grep { $_ != $send } @members;
    };
    my $c = PAGI::Test::Client->new(app => $room);
    my $ann = $c->websocket('/room');
    my $bob = $c->websocket('/room');
    $ann->send_text('hi');
    is $bob->receive(timeout => 5), 'someone said: hi', 'the other session gets the message';
    eval { $ann->receive(timeout => 0.2) };
    like $@, qr/no message/, 'the sender does not';
    $bob->close;
    $ann->close;
    is scalar @members, 0, 'both sessions ended in the app';
};

done_testing;
