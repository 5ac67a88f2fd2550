use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn split_head);
use Future::AsyncAwait;

# Which requests get an sse scope (PAGI-SPEC 2.4; issue 5), what that scope
# holds (2.1), and how the request body reaches the app as sse.request
# events (3.3.1).

my $loop = loop();

# Every call is recorded: its scope and the events it received.
my ($handler, @calls);
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    my $call = { scope => $scope, events => [], keys => { map { $_ => 1 } keys %$scope } };
    push @calls, $call;
    return await $handler->($scope, $receive, $send, $call);
};
my ($server, $port) = start_server(app => $app);

# sse: reads the body as sse.request events, then streams one event whose
# data is the body length and returns. http: a plain text answer.
# websocket: accepts and closes.
my $reader = async sub {
    my ($scope, $receive, $send, $call) = @_;
    if ($scope->{type} eq 'websocket') {
        push @{ $call->{events} }, await $receive->();
        await $send->({ type => 'websocket.accept' });
        await $send->({ type => 'websocket.close' });
        return;
    }
    my $body = '';
    while (1) {
        my $ev = await $receive->();
        push @{ $call->{events} }, $ev;
        last unless $ev->{type} =~ /\.request\z/;
        $body .= $ev->{body};
        last unless $ev->{more};
    }
    if ($scope->{type} eq 'sse') {
        await $send->({ type => 'sse.start' });
        await $send->({ type => 'sse.send', event => 'len', data => length $body });
        return;
    }
    await $send->({ type => 'http.response.start', status => 200,
                    headers => [ [ 'content-type', 'text/plain' ], [ 'content-length', length $body ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};

sub request {
    my ($method, $target, @headers) = @_;
    return "$method $target HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nConnection: close\r\n"
        . join('', map { "$_\r\n" } @headers) . "\r\n";
}

# Sends $bytes, waits for the server to close; returns the parsed response and the last call.
sub exchange {
    my ($bytes, %o) = @_;
    @calls = ();
    my $raw = raw_exchange($port, $bytes, timeout => 5, %o)->get;
    my ($r) = parse_responses($raw);
    return ($r, $calls[-1], $raw);
}

sub header_values {
    my ($pairs, $name) = @_;
    return map { $_->[1] } grep { $_->[0] eq $name } @$pairs;
}

$handler = $reader;

subtest 'GET with Accept: text/event-stream gets an sse scope' => sub {
    my ($r, $call) = exchange(request('GET', '/events/caf%C3%A9?topic=a%20b&x=1',
        'Accept: text/event-stream', 'X-Custom: one', 'X-Custom: two', 'Cache-Control: no-cache'));
    ok $call, 'the app was called' or return;
    my $s = $call->{scope};
    is $s->{type}, 'sse', 'type sse';
    is $s->{method}, 'GET', 'method GET';
    is $s->{path}, "/events/caf\x{e9}", 'path is percent- and UTF-8-decoded';
    is $s->{raw_path}, '/events/caf%C3%A9', 'raw_path as on the request line';
    is $s->{query_string}, 'topic=a%20b&x=1', 'query_string still encoded';
    is $s->{http_version}, '1.1', 'http_version';
    is $s->{scheme}, 'http', 'scheme http';
    is $s->{root_path}, '', 'root_path empty';
    is_deeply $s->{pagi}, { version => '0.3', spec_version => '0.3' }, 'pagi versions';
    is ref $s->{headers}, 'ARRAY', 'headers is an array';
    is_deeply [ header_values($s->{headers}, 'accept') ], ['text/event-stream'], 'accept header present, lower-case name';
    is_deeply [ header_values($s->{headers}, 'x-custom') ], [ 'one', 'two' ], 'duplicate headers kept as separate pairs in order';
    is_deeply [ header_values($s->{headers}, 'host') ], ["127.0.0.1:$port"], 'host header';
    is $s->{client}[0], '127.0.0.1', 'client address';
    like $s->{client}[1], qr/\A\d+\z/, 'client port';
    is_deeply $s->{server}, [ '127.0.0.1', $port ], 'server [host, port]';
    is ref $s->{state}, 'HASH', 'state hash';
    is ref $s->{extensions}, 'HASH', 'extensions hash';
    ok !$call->{keys}{"pagi.connection"}, 'no pagi.connection in an sse scope';
    ok $call->{keys}{"pagi.transport"}, 'pagi.transport present';
    is_deeply $call->{events}, [ { type => 'sse.request', body => '', more => 0 } ],
        'a GET yields exactly one sse.request {body "", more 0}';
    is $r->{status}, 200, 'the stream answered 200';
    is $r->{header}{'content-type'}, 'text/event-stream', 'as an event stream';
    is $r->{body}, "event: len\ndata: 0\n\n", 'with the event the app sent';
};

subtest 'pagi.transport of an sse scope answers its methods while the stream is open' => sub {
    my %seen;
    $handler = async sub {
        my ($scope, $receive, $send, $call) = @_;
        my $t = $scope->{'pagi.transport'};
        await $receive->();
        await $send->({ type => 'sse.start' });
        %seen = (
            buffered => $t->buffered_amount,
            high     => $t->high_water_mark,
            low      => $t->low_water_mark,
            can      => join(',', map { $t->can($_) ? 1 : 0 } qw(buffered_amount high_water_mark low_water_mark on_high_water on_drain)),
        );
    };
    my ($r) = exchange(request('GET', '/t', 'Accept: text/event-stream'));
    $handler = $reader;
    is $r->{status}, 200, 'stream answered';
    is $seen{can}, '1,1,1,1,1', 'buffered_amount, high/low_water_mark, on_high_water, on_drain all exist';
    like $seen{buffered}, qr/\A\d+\z/, 'buffered_amount is an integer';
    is $seen{high}, 65536, 'high_water_mark is write_high_watermark';
    is $seen{low}, 16384, 'low_water_mark is write_low_watermark';
};

subtest 'text/event-stream inside an Accept list still selects sse' => sub {
    for my $accept ('text/html, text/event-stream;q=0.9', 'application/json,text/event-stream', 'Text/Event-Stream') {
        my ($r, $call) = exchange(request('GET', '/list', "Accept: $accept"));
        is $call && $call->{scope}{type}, 'sse', "Accept: $accept gives sse";
        is $r->{body}, "event: len\ndata: 0\n\n", "Accept: $accept: streamed";
    }
};

subtest 'without text/event-stream in Accept the scope is http' => sub {
    for my $case ([ 'no Accept' ], [ 'Accept: text/html', 'Accept: text/html' ], [ 'Accept: */*', 'Accept: */*' ],
                  [ 'Accept: text/event', 'Accept: text/event' ]) {
        my ($name, @h) = @$case;
        my ($r, $call) = exchange(request('GET', '/plain', @h));
        is $call && $call->{scope}{type}, 'http', "$name: http scope";
        ok $call && $call->{keys}{"pagi.connection"}, "$name: the http scope has pagi.connection";
        is_deeply $call && $call->{events}, [ { type => 'http.request', body => '', more => 0 } ], "$name: http.request event";
        is $r->{status}, 200, "$name: plain response";
        isnt $r->{header}{'content-type'}, 'text/event-stream', "$name: not an event stream";
    }
};

subtest 'any method: POST with a small body arrives as sse.request events' => sub {
    my $body = 'name=value&x=' . ('y' x 100);
    my ($r, $call) = exchange(request('POST', '/submit?q=1', 'Accept: text/event-stream',
        'Content-Type: application/x-www-form-urlencoded', 'Content-Length: ' . length $body) . $body);
    ok $call, 'called' or return;
    is $call->{scope}{type}, 'sse', 'POST with that Accept is sse';
    is $call->{scope}{method}, 'POST', 'method POST';
    is $call->{scope}{path}, '/submit', 'path';
    is $call->{scope}{query_string}, 'q=1', 'query_string';
    is_deeply [ header_values($call->{scope}{headers}, 'content-length') ], [ length $body ], 'content-length header';
    my @ev = @{ $call->{events} };
    ok @ev >= 1, 'at least one event';
    is_deeply [ map { $_->{type} } @ev ], [ ('sse.request') x @ev ], 'all are sse.request';
    is join('', map { $_->{body} } @ev), $body, 'body arrived whole';
    is $ev[-1]{more}, 0, 'the last one has more 0';
    is_deeply [ map { $_->{more} } @ev[0 .. $#ev - 1] ], [ (1) x (@ev - 1) ], 'earlier ones have more 1';
    is $r->{body}, 'event: len' . "\ndata: " . length($body) . "\n\n", 'the app saw every byte';

    for my $method (qw(PUT DELETE PATCH OPTIONS)) {
        my ($r2, $c2) = exchange(request($method, '/m', 'Accept: text/event-stream', 'Content-Length: 0'));
        is $c2 && $c2->{scope}{type}, 'sse', "$method: sse scope";
        is $c2 && $c2->{scope}{method}, $method, "$method: method";
        is_deeply $c2 && $c2->{events}, [ { type => 'sse.request', body => '', more => 0 } ], "$method: one empty sse.request";
    }
};

subtest 'a 200 KB chunked POST arrives in several sse.request events with the right more flags' => sub {
    my $body = join '', map { sprintf "%07d\n", $_ } 0 .. 25_599;    # 204800 bytes
    is length $body, 204_800, 'body size';
    my @pieces = unpack '(a30000)*', $body;
    my $head = request('POST', '/big', 'Accept: text/event-stream', 'Transfer-Encoding: chunked');
    my @chunks = ($head, map { sprintf('%x', length $_) . "\r\n$_\r\n" } @pieces);
    push @chunks, "0\r\n\r\n";
    my ($r, $call) = exchange('', chunks => \@chunks, gap => 0.01);
    ok $call, 'called' or return;
    is $call->{scope}{type}, 'sse', 'sse scope';
    is $call->{scope}{method}, 'POST', 'method POST';
    my @ev = @{ $call->{events} };
    cmp_ok scalar(@ev), '>=', 2, 'body delivered in several events (' . scalar(@ev) . ')';
    is_deeply [ map { $_->{type} } @ev ], [ ('sse.request') x @ev ], 'all are sse.request';
    my $got = join '', map { $_->{body} } @ev;
    is length $got, length $body, 'every byte arrived';
    ok $got eq $body, 'content identical and in order';
    is $ev[-1]{more}, 0, 'last event: more 0';
    is_deeply [ map { $_->{more} ? 1 : 0 } @ev[0 .. $#ev - 1] ], [ (1) x (@ev - 1) ], 'all earlier events: more 1';
    is $r->{status}, 200, 'stream answered';
    is $r->{body}, "event: len\ndata: 204800\n\n", 'app counted 204800 bytes';
};

subtest 'Last-Event-ID reaches the app in the headers' => sub {
    my ($r, $call) = exchange(request('GET', '/resume', 'Accept: text/event-stream', 'Last-Event-ID: 42-abc'));
    is $call && $call->{scope}{type}, 'sse', 'sse scope';
    is_deeply [ header_values($call->{scope}{headers}, 'last-event-id') ], ['42-abc'], 'last-event-id header, value unchanged';
};

subtest 'a WebSocket upgrade with Accept: text/event-stream stays websocket' => sub {
    my $req = "GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        . "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        . "Accept: text/event-stream\r\n\r\n";
    @calls = ();
    my $c = open_conn($port);
    $c->write($req);
    my $got = eval { $c->read_until(qr/\r\n\r\n/, 5)->get } // do { diag("read: $@"); "" };
    my $call = $calls[-1];
    is $call && $call->{scope}{type}, 'websocket', 'websocket scope';
    is_deeply $call && $call->{events}, [ { type => 'websocket.connect' } ], 'first event websocket.connect';
    like $got, qr{\AHTTP/1\.1 101 }, '101 Switching Protocols';
    like $got, qr/\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=\r\n/i, 'accept key';
    unlike $got, qr/text\/event-stream/, 'no event-stream head';
    $c->close;
};

stop_server($server);
done_testing;
