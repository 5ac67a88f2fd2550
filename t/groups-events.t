use strict;
use warnings;
use utf8;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn);
use PAGI::Test::WebSocket qw(ws_connect);
use Future::AsyncAwait;
use JSON::PP ();
use Encode ();

# The groups extension (issue 13): WebSocket connections and SSE streams
# join groups; a publish reaches every member once, encoded per protocol by
# the engine; Perl subscribes through the hub; counts follow joins, leaves
# and connections that end; bad fields fail the $send Future naming them.

my $loop = loop();
my $json = JSON::PP->new->canonical->utf8(0);

sub query {
    my ($scope) = @_;
    return map { my ($k, $v) = split /=/, $_, 2; ($k => $v // '') } split /&/, $scope->{query_string} // '';
}

my (%ext, %early, %ws_ended, %sse_ended);
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    my %q = query($scope);
    $ext{ $scope->{type} } = $scope->{extensions}{groups};
    if ($scope->{type} eq 'websocket') {
        await $receive->();    # websocket.connect
        if ($scope->{path} eq '/early') {
            my $f = $send->({ type => 'groups.join', group => 'early' });
            $early{websocket} = $f->is_failed ? ($f->failure)[0] : 'did not fail';
            await $send->({ type => 'websocket.close' });
            return;
        }
        await $send->({ type => 'websocket.accept' });
        # Commands from the client: {op, fields...} -> $send groups.<op>;
        # the answer goes back as "R:" + JSON [ok, result or error].
        while (1) {
            my $ev = await $receive->();
            if ($ev->{type} eq 'websocket.disconnect') {
                $ws_ended{ $q{tag} // '' } = $ev;
                return;
            }
            my $cmd = $json->decode($ev->{text});
            my $op = delete $cmd->{op};
            $cmd->{bytes} = pack 'H*', delete $cmd->{bytes_hex} if defined $cmd->{bytes_hex};
            my $r = eval { [ 1, await $send->({ type => "groups.$op", %$cmd }) ] } // [ 0, "$@" ];
            await $send->({ type => 'websocket.send', text => 'R:' . $json->encode($r) });
        }
    }
    if ($scope->{type} eq 'sse') {
        await $receive->();    # sse.request
        if ($scope->{path} eq '/early') {
            my $f = $send->({ type => 'groups.join', group => 'early' });
            $early{sse} = $f->is_failed ? ($f->failure)[0] : 'did not fail';
        }
        await $send->({ type => 'sse.start' });
        for my $g (split /,/, $q{groups} // '') { await $send->({ type => 'groups.join', group => $g }) }
        await $send->({ type => 'sse.comment', comment => 'joined' });
        while (1) {
            my $ev = await $receive->();
            next unless $ev->{type} eq 'sse.disconnect';
            $sse_ended{ $q{tag} // '' } = $ev;
            return;
        }
    }
    # http: publish what the query says, answer with the count or the error.
    my %m = (type => 'groups.publish', map { defined $q{$_} ? ($_ => $q{$_}) : () } qw(group text event id exclude_self));
    my $r = eval { 'n=' . await $send->(\%m) } // "err=$@";
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => $r });
};

my ($server, $port) = start_server(app => $app);
my $hub = $server->groups;

# A WebSocket client of the command app.
sub ws {
    my ($tag) = @_;
    my ($c) = ws_connect($port, path => "/ws?tag=$tag")->get;
    return $c;
}
sub replies  { grep { $_->{opcode} == 1 && $_->{payload} =~ /\AR:/ } @{ $_[0]->frames } }
sub messages { grep { ($_->{opcode} == 1 || $_->{opcode} == 2) && $_->{payload} !~ /\AR:/ } @{ $_[0]->frames } }
sub cmd {
    my ($c, %fields) = @_;
    my $n = () = replies($c);
    $c->send_text($json->encode(\%fields));
    $c->wait_until(sub { replies($c) > $n }, 10, 'a command reply')->get;
    my $r = (replies($c))[$n];
    return @{ $json->decode(Encode::decode('UTF-8', substr($r->{payload}, 2))) };
}
sub wait_messages {
    my ($c, $n, $what) = @_;
    $c->wait_until(sub { messages($c) >= $n }, 10, $what)->get;
    return messages($c);
}
# Nothing more arrives for a moment (a duplicate would by then).
sub settle { $loop->delay_future(after => 0.3)->get }

sub sse_open {
    my ($groups, $tag) = @_;
    my $c = open_conn($port);
    $c->write("GET /sse?groups=$groups&tag=$tag HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n");
    $c->read_until(qr/:joined\n\n/, 10)->get;
    return $c;
}

subtest 'the extension is advertised in http, websocket and sse scopes' => sub {
    my $c = ws('ext');
    my $s = sse_open('', 'ext');
    my $r = parse_responses(raw_exchange($port, "GET /?group=nobody&text=x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", timeout => 10)->get);
    for my $type (qw(http websocket sse)) {
        my $e = $ext{$type};
        ok($e, "$type scope has extensions.groups") or next;
        is($e->{backend}, 'local', "$type: backend local");
        like($e->{node}, qr/\A[^:]+:$$:[0-9a-f]{8}\z/, "$type: node is host:pid:random");
        is($e->{hub}, $hub, "$type: hub is \$server->groups");
    }
    is($ext{http}, $ext{websocket}, 'one hashref shared by every scope');
    is($hub->node, $ext{http}{node}, 'hub->node');
    $c->close;
    $s->close;
};

subtest 'websocket members get a publish exactly once; exclude_self; leave; an ended connection leaves' => sub {
    my @c = map { ws("m$_") } 1 .. 3;
    is_deeply([ cmd($_, op => 'join', group => 'room') ], [1], 'join') for @c;
    is_deeply([ cmd($c[0], op => 'join', group => 'room') ], [1], 'joining twice is a no-op');
    is($hub->count('room'), 3, 'count 3');
    is($hub->cluster_count('room')->get, 3, 'cluster_count 3 (local)');

    is_deeply([ cmd($c[0], op => 'publish', group => 'room', text => 'héllo') ], [ 1, 3 ], 'publish resolves to 3 members');
    for my $i (0 .. 2) {
        my @m = wait_messages($c[$i], 1, 'the message');
        is(scalar @m, 1, "member $i: one message");
        is($m[0]{opcode}, 1, "member $i: a text frame");
        is(Encode::decode('UTF-8', $m[0]{payload}), 'héllo', "member $i: the text, UTF-8");
    }
    is_deeply([ cmd($c[1], op => 'publish', group => 'room', bytes_hex => '00ff01', exclude_self => 1) ], [ 1, 2 ], 'exclude_self: 2 members');
    wait_messages($c[$_], 2, 'the bytes') for 0, 2;
    settle();
    is(scalar(messages($c[$_])), 2, "member $_: exactly two messages") for 0, 2;
    is((messages($c[0]))[1]{opcode}, 2, 'bytes are a binary frame');
    is((messages($c[0]))[1]{payload}, "\x00\xff\x01", 'the bytes');
    is(scalar(messages($c[1])), 1, 'the sender did not get its own');

    is_deeply([ cmd($c[1], op => 'leave', group => 'room') ], [1], 'leave');
    is_deeply([ cmd($c[1], op => 'leave', group => 'room') ], [1], 'leaving again is a no-op');
    is($hub->count('room'), 2, 'count 2 after the leave');
    is_deeply([ cmd($c[0], op => 'publish', group => 'room', text => 'third') ], [ 1, 2 ], 'publish reaches 2');
    wait_messages($c[2], 3, 'the third message');
    settle();
    is(scalar(messages($c[1])), 1, 'the member that left got nothing');

    $c[2]->close;
    ok(wait_for(sub { $hub->count('room') == 1 }, 10), 'a connection that ends leaves: count 1');
    ok(wait_for(sub { $ws_ended{m3} }, 10), 'its app saw websocket.disconnect');
    is_deeply([ cmd($c[0], op => 'publish', group => 'room', text => 'fourth') ], [ 1, 1 ], 'publish reaches the one left');
    $_->close for @c[0, 1];
    ok(wait_for(sub { $hub->count('room') == 0 }, 10), 'count 0 once all are gone');
};

subtest 'sse members get the encoded event; a mixed group gets both encodings' => sub {
    my $s = sse_open('feed,mixed', 's1');
    my $w = ws('mixed');
    cmd($w, op => 'join', group => 'mixed');
    is($hub->count('feed'), 1, 'the sse stream counts');
    is($hub->count('mixed'), 2, 'mixed: ws + sse');

    is($hub->publish('feed', { text => "a\nb", event => 'tick', id => '7', retry => 1500 })->get, 1, 'hub publish: 1 member');
    my $buf = $s->read_until(qr/retry: 1500\n\n/, 10)->get;
    like($buf, qr/event: tick\ndata: a\ndata: b\nid: 7\nretry: 1500\n\n/, 'event, data lines, id and retry');

    is_deeply([ cmd($w, op => 'publish', group => 'mixed', text => 'both', event => 'chat') ], [ 1, 2 ], 'publish to the mixed group: 2');
    $s->read_until(qr/event: chat\ndata: both\n\n/, 10)->get;
    pass('the sse member got the event');
    my @m = wait_messages($w, 1, 'the ws copy');
    is($m[0]{payload}, 'both', 'the ws member got a text frame of the text (SSE fields left out)');
    is_deeply([ cmd($w, op => 'publish', group => 'mixed', bytes_hex => '6869', exclude_self => 1) ], [ 1, 1 ], 'bytes, excluding the ws sender');
    $s->read_until(qr/data: hi\n\n/, 10)->get;
    pass('the sse member got the bytes as data');

    $s->close;
    ok(wait_for(sub { $hub->count('feed') == 0 && $hub->count('mixed') == 1 }, 10), 'an sse stream that ends leaves its groups');
    ok(wait_for(sub { $sse_ended{s1} }, 10), 'its app saw sse.disconnect');
    $w->close;
};

subtest 'publish from an http request handler' => sub {
    my @c = map { ws("h$_") } 1 .. 2;
    cmd($_, op => 'join', group => 'news') for @c;
    my ($r) = parse_responses(raw_exchange($port, "GET /publish?group=news&text=flash HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", timeout => 10)->get);
    is($r->{body}, 'n=2', 'the http handler got the count');
    is((wait_messages($c[$_], 1, 'the news'))[0]{payload}, 'flash', "member $_ got it") for 0, 1;
    ($r) = parse_responses(raw_exchange($port, "GET /publish?group=news&text=x&exclude_self=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", timeout => 10)->get);
    like($r->{body}, qr/\Aerr=groups\.publish: 'exclude_self' is for websocket and sse scopes/, 'exclude_self is refused in http');
    $_->close for @c;
};

subtest 'perl subscribers through the hub' => sub {
    my @got;
    my $sub = $hub->subscribe('chan', sub { push @got, $_[0] });
    like($sub, qr/\S/, 'a subscription id');
    my @seen2;
    my $sub2 = $hub->subscribe('chan', sub { push @seen2, $_[0]; die "callback error\n" });
    my $w = ws('sub');
    cmd($w, op => 'join', group => 'chan');
    is($hub->count('chan'), 1, 'perl subscribers are not counted');
    my @warnings;
    local $SIG{__WARN__} = sub { push @warnings, @_ };
    is_deeply([ cmd($w, op => 'publish', group => 'chan', text => 'to perl', event => 'e1', exclude_self => 1) ], [ 1, 0 ], 'no other connection member');
    ok(wait_for(sub { @got == 1 }, 10), 'the subscriber got it');
    is_deeply($got[0], { group => 'chan', text => 'to perl', event => 'e1', node => $hub->node }, 'group, text, event, node');
    is(scalar @seen2, 1, 'the second subscriber too');
    like(join('', @warnings), qr/subscriber callback for group 'chan' died: callback error/, 'a dying callback is warned about');
    is($hub->publish('chan', { bytes => "\xff" })->get, 1, 'hub publish reaches the ws member');
    ok(wait_for(sub { @got == 2 }, 10), 'and the subscriber');
    is($got[1]{bytes}, "\xff", 'bytes for bytes');
    is((wait_messages($w, 1, 'the hub message'))[0]{payload}, "\xff", 'the ws member got the bytes');
    is($hub->unsubscribe($sub), 1, 'unsubscribe');
    is($hub->unsubscribe($sub), 0, 'unsubscribe again: 0');
    $hub->unsubscribe($sub2);
    $hub->publish('chan', { text => 'after' })->get;
    (wait_messages($w, 2, 'the last message'));
    settle();
    is(scalar @got, 2, 'no more after unsubscribing');
    $w->close;
};

subtest 'bad fields fail the Future naming the field' => sub {
    my $w = ws('bad');
    my @cases = (
        [ { op => 'join' }, qr/\Agroups\.join: 'group' must be a non-empty string/ ],
        [ { op => 'join', group => '' }, qr/'group' must be a non-empty string/ ],
        [ { op => 'join', group => 'x' x 257 }, qr/\Agroups\.join: 'group' must be at most 256 bytes/ ],
        [ { op => 'leave', group => "a\0b" }, qr/\Agroups\.leave: 'group' must not contain NUL/ ],
        [ { op => 'publish', group => 'g' }, qr/\Agroups\.publish: exactly one of 'text' and 'bytes' is required/ ],
        [ { op => 'publish', group => 'g', text => 'a', bytes_hex => '00' }, qr/exactly one of 'text' and 'bytes'/ ],
        [ { op => 'publish', group => 'g', text => 'a', event => "x\ny" }, qr/\Agroups\.publish: 'event' must not contain CR or LF/ ],
        [ { op => 'publish', group => 'g', text => 'a', id => "1\r" }, qr/'id' must not contain CR or LF/ ],
        [ { op => 'publish', group => 'g', text => 'a', retry => 'soon' }, qr/\Agroups\.publish: 'retry' must be a non-negative integer/ ],
        [ { op => 'publish', group => 'g', text => [1] }, qr/'text' must be a string/ ],
        [ { op => 'shout', group => 'g' }, qr/Unrecognized event type 'groups\.shout'/ ],
    );
    for my $case (@cases) {
        my ($fields, $want) = @$case;
        my ($ok, $error) = cmd($w, %$fields);
        ok(!$ok, "$fields->{op} fails") and like($error, $want, "message: $want");
    }
    is($hub->count('x' x 256), 0, 'a 256-byte name is fine for count');
    my ($ok) = cmd($w, op => 'join', group => 'é' x 128);
    ok($ok, 'a name of 256 UTF-8 bytes joins');
    ok(!eval { $hub->count(''); 1 }, 'count croaks on a bad name');
    like($@, qr/'group' must be a non-empty string/, '... naming the field');
    my $f = $hub->publish('g', { text => 'a', exclude => 'me' });
    ok($f->is_failed, 'hub publish with a bad exclude fails');
    like(($f->failure)[0], qr/'exclude' must be a connection id/, '... naming the field');
    ok($hub->publish('g', { text => 'a', exclude_self => 1 })->is_failed, 'exclude_self is not for the hub');
    like(($hub->cluster_count(undef)->failure)[0], qr/\Agroups\.cluster_count: 'group'/, 'cluster_count with no group fails');
    like(($hub->redis('GET', 'k')->failure)[0], qr/\Agroups\.redis: no redis backend/, 'redis fails without the redis backend');
    $w->close;
};

subtest 'join before accept / before sse.start fails' => sub {
    my $c = PAGI::Test::WebSocket::ws_open($port, path => '/early');
    my $res = $c->response(10)->get;
    is($res->{status}, 403, 'the app closed before accepting');
    like($early{websocket} // '', qr/\Agroups\.join: sent before websocket\.accept/, 'websocket join before accept failed');
    my $s = open_conn($port);
    $s->write("GET /early HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n");
    $s->read_until(qr/:joined\n\n/, 10)->get;
    like($early{sse} // '', qr/\Agroups\.join: sent before sse\.start/, 'sse join before sse.start failed');
    $s->close;
};

subtest 'stats' => sub {
    my $s = $hub->stats;
    is_deeply([ sort keys %$s ], [ sort qw(published delivered delivered_direct skipped dropped redis_publish_failed redis_reconnects redis_connected) ], 'the counters');
    # Counted from the subtests above: 1 + 4 + 3 + 1 + 3 publishes reaching 0 + 8 + 4 + 2 + 2 members.
    is($s->{published}, 12, 'published counts every publish');
    is($s->{delivered}, 16, 'delivered counts every member a message was queued for');
    cmp_ok($s->{delivered_direct}, '<=', $s->{delivered}, "delivered_direct ($s->{delivered_direct}) is a part of it");
    is($s->{$_}, 0, "$_ 0") for qw(skipped dropped redis_connected);
};

stop_server($server);

subtest 'the hub before the server listens and after it stopped' => sub {
    my $s2 = PAGI::Server->new(app => sub { Future->done }, host => '127.0.0.1', port => 0, quiet => 1);
    my $h = $s2->groups;
    isa_ok($h, 'PAGI::Server::Groups');
    my @got;
    $h->subscribe('early', sub { push @got, $_[0]{text} });
    is($h->publish('early', { text => 'before' })->get, 0, 'publish before listen: 0 members');
    is_deeply(\@got, ['before'], 'perl subscribers hear it');
    is($h->count('early'), 0, 'count 0');
    is($h->cluster_count('early')->get, 0, 'cluster_count 0');
    $loop->add($s2);
    $s2->listen->get;
    my $n = $h->publish('early', { text => 'running' })->get;
    is($n, 0, 'publish while running: no members');
    ok(wait_for(sub { @got == 2 }, 10), 'a subscription made before listen works once running');
    stop_server($s2);
};

done_testing;
