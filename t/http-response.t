use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn responses_done http_client split_head start body sends header_values);
use Future::AsyncAwait;

# Each subtest installs its own handler; the app only dispatches to it.
my $handler;
my @clients;    # client port of every request, in arrival order
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    push @clients, $scope->{client}[1];
    await $handler->($scope, $receive, $send);
};
my ($server, $port) = start_server(app => $app);

# Handler answering with the path, with a Content-Length.
my $path_echo = async sub {
    my ($scope, $receive, $send) = @_;
    await $send->(start(200, [ 'content-length', length $scope->{path} ]));
    await $send->(body($scope->{path}));
};


# What follows the head of the first response.
sub after_head { (split_head($_[0]))[1] }

subtest 'streaming on HTTP/1.1 uses chunked framing' => sub {
    $handler = sends(start(200, [ 'content-type', 'text/plain' ]), body('ab', 1), body('', 1), body('cd', 1), body('', 0));
    my $raw = raw_exchange($port, "GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    my ($r) = parse_responses($raw);
    is $r->{status}, 200, 'status';
    is_deeply [ header_values($r, 'transfer-encoding') ], ['chunked'], 'one transfer-encoding: chunked';
    is_deeply [ header_values($r, 'content-length') ], [], 'no content-length';
    is after_head($raw), "2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n", 'exact chunks; the empty body event wrote no chunk';
};

subtest 'streaming to a real client (Net::Async::HTTP)' => sub {
    $handler = sends(start(200, [ 'content-type', 'text/plain' ]), body('one,', 1), body('two,', 1), body('three', 0));
    my $res = http_client()->do_request(uri => URI->new("http://127.0.0.1:$port/nah"), timeout => 5)->get;
    is $res->code, 200, 'status';
    is $res->content, 'one,two,three', 'body reassembled';
    is $res->header('Transfer-Encoding'), 'chunked', 'chunked';
};

subtest 'streaming on HTTP/1.0 is close-delimited' => sub {
    $handler = sends(start(200, [ 'content-type', 'text/plain' ]), body('ab', 1), body('cd', 0));
    for my $req ("GET /old HTTP/1.0\r\n\r\n", "GET /old-ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n") {
        my ($line) = $req =~ /\A([^\r]+)/;
        # No idle and no until: raw_exchange only completes when the server closes.
        my $raw = raw_exchange($port, $req, timeout => 5)->get;
        my ($r) = parse_responses($raw);
        is $r->{status}, 200, "$line: status";
        is_deeply [ header_values($r, 'transfer-encoding') ], [], "$line: not chunked";
        is_deeply [ header_values($r, 'content-length') ], [], "$line: no content-length";
        is after_head($raw), 'abcd', "$line: raw body, ended by the close";
        isnt $r->{header}{connection}, 'keep-alive', "$line: not labelled keep-alive";
    }
};

subtest 'an app Content-Length gives identity framing' => sub {
    $handler = sends(start(200, [ 'content-length', '5' ]), body('hel', 1), body('lo', 0));
    my $raw = raw_exchange($port, "GET /cl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    my ($r) = parse_responses($raw);
    is_deeply [ header_values($r, 'content-length') ], ['5'], 'one content-length: 5';
    is_deeply [ header_values($r, 'transfer-encoding') ], [], 'no transfer-encoding';
    is after_head($raw), 'hello', 'body bytes only, no chunk framing';

    $handler = sends(start(200), body('whole', 0));
    $raw = raw_exchange($port, "GET /known HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    ($r) = parse_responses($raw);
    is_deeply [ header_values($r, 'content-length') ], ['5'], 'a single final body gets a content-length from the server';
    is after_head($raw), 'whole', 'identity body';
};

subtest 'HEAD gets headers and no body bytes' => sub {
    my @cases = (
        [ 'app content-length', sends(start(200, [ 'content-length', '11' ]), body('hello world', 0)), '11' ],
        [ 'single body',        sends(start(200), body('hello world', 0)),                            '11' ],
        [ 'streamed body',      sends(start(200), body('hello', 1), body(' world', 0)),               undef ],
    );
    for my $case (@cases) {
        my ($name, $h, $len) = @$case;
        $handler = $h;
        my $c = open_conn($port);
        $c->write("HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n");
        my $got = $c->read_until(qr/\r\n\r\n/)->get;
        ok $c->stays_open(0.2), "$name: connection kept open";
        my ($head, $rest) = split_head($c->buffer);
        is $rest, '', "$name: nothing after the head";
        like $head, qr{\AHTTP/1\.1 200 OK\r\n}, "$name: status line";
        if (defined $len) { like $head, qr/\r\ncontent-length: $len\r\n/i, "$name: content-length $len" }
        else { unlike $head, qr/\r\ncontent-length:/i, "$name: no content-length for an unknown length" }
        unlike $head, qr/transfer-encoding/i, "$name: no chunked framing";
        # The connection is in sync: a following GET gets its own full response.
        $handler = $path_echo;
        $c->take;
        $c->write("GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        my @r = parse_responses($c->wait_eof->get);
        is scalar(@r), 1, "$name: one response to the next request";
        is $r[0]{body}, '/next', "$name: and it is the right one";
        $c->close;
    }
};

subtest '204 and 304 never carry a body' => sub {
    my @cases = (
        [ 204, [], 'streamed body bytes' ],
        [ 204, [ [ 'content-length', '4' ] ], 'app content-length' ],
        [ 304, [ [ 'etag', '"v1"' ] ], 'streamed body bytes' ],
    );
    for my $case (@cases) {
        my ($status, $hdrs, $name) = @$case;
        $handler = async sub {
            my ($scope, $receive, $send) = @_;
            if ($scope->{path} eq '/after') { return await $path_echo->(@_) }
            await $send->(start($status, @$hdrs));
            await $send->(body('junk', 1));
            await $send->(body('more', 0));
        };
        my $raw = raw_exchange($port,
            "GET /nb HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            timeout => 5)->get;
        my ($head, $rest) = split_head($raw);
        like $head, qr{\AHTTP/1\.1 $status }, "$status ($name): status";
        unlike $head, qr/content-length/i, "$status ($name): no content-length" if $status == 204;
        unlike $head, qr/transfer-encoding/i, "$status ($name): no transfer-encoding";
        like $rest, qr{\AHTTP/1\.1 200 OK\r\n}, "$status ($name): the next response follows the head directly";
        unlike $raw, qr/junk|more/, "$status ($name): the app's body bytes were not sent";
        my @r = parse_responses($raw);
        is scalar(@r), 2, "$status ($name): two responses";
        is $r[1]{body}, '/after', "$status ($name): second response intact";
    }
};

subtest 'keep-alive: two requests on one connection' => sub {
    $handler = $path_echo;
    my $before = @clients;
    my $c = open_conn($port);
    $c->write("GET /first HTTP/1.1\r\nHost: x\r\n\r\n");
    my @r = parse_responses($c->read_until(responses_done(1))->get);
    is $r[0]{body}, '/first', 'first response';
    ok !exists $r[0]{header}{connection}, 'no connection header on a kept-alive HTTP/1.1 response';
    ok $c->stays_open(0.2), 'still open after the first response';
    $c->take;
    $c->write("GET /second HTTP/1.1\r\nHost: x\r\n\r\n");
    @r = parse_responses($c->read_until(responses_done(1))->get);
    is $r[0]{body}, '/second', 'second response on the same socket';
    is_deeply [ @clients[ $before .. $#clients ] ], [ $c->sockport, $c->sockport ], 'both requests came from this socket';
    $c->close;

    # A real client reuses its connection too.
    my $http = http_client();
    $before = @clients;
    for my $p ('/nah1', '/nah2') {
        my $res = $http->do_request(uri => URI->new("http://127.0.0.1:$port$p"), timeout => 5)->get;
        is $res->content, $p, "Net::Async::HTTP $p";
    }
    is scalar(@clients), $before + 2, 'two requests';
    is $clients[-1], $clients[-2], 'Net::Async::HTTP sent both on one connection';
};

subtest 'pipelining: three requests at once, three responses in order' => sub {
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        # The first one is slowest: responses must still come in request order.
        my %delay = ('/one' => 0.3, '/two' => 0.1, '/three' => 0);
        await loop()->delay_future(after => $delay{ $scope->{path} } // 0);
        await $path_echo->($scope, $receive, $send);
    };
    my $raw = raw_exchange($port,
        "GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\nGET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        timeout => 5)->get;
    my @r = parse_responses($raw);
    is scalar(@r), 3, 'three responses';
    is_deeply [ map { $_->{body} } @r ], [ '/one', '/two', '/three' ], 'in request order';
    is_deeply [ map { $_->{status} } @r ], [ 200, 200, 200 ], 'all 200';
    ok !(grep { $_->{garbage} } @r), 'no stray bytes';
};

subtest 'Connection: close closes after the response' => sub {
    $handler = $path_echo;
    my $c = open_conn($port);
    $c->write("GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    my $raw = $c->wait_eof(5)->get;
    my @r = parse_responses($raw);
    is scalar(@r), 1, 'one response, then the server closed';
    is $r[0]{body}, '/bye', 'body';
    is $r[0]{header}{connection}, 'close', 'labelled connection: close';
    $c->close;

    # Streaming response: the chunked terminator comes before the close.
    $handler = sends(start(200), body('x', 1), body('y', 0));
    $raw = raw_exchange($port, "GET /bye2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    is after_head($raw), "1\r\nx\r\n1\r\ny\r\n0\r\n\r\n", 'complete chunked body before the close';
};

subtest 'HTTP/1.0 keep-alive only when asked and the length is known' => sub {
    $handler = $path_echo;
    my $c = open_conn($port);
    $c->write("GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    my @r = parse_responses($c->read_until(responses_done(1))->get);
    is $r[0]{body}, '/ka', 'response';
    is $r[0]{header}{connection}, 'keep-alive', 'connection: keep-alive';
    ok $c->stays_open(0.3), 'the socket stays open';
    $c->take;
    $c->write("GET /ka2 HTTP/1.0\r\n\r\n");
    my $raw = $c->wait_eof(5)->get;
    @r = parse_responses($raw);
    is $r[0]{body}, '/ka2', 'a second HTTP/1.0 request was served on it';
    ok !defined $r[0]{header}{connection} || $r[0]{header}{connection} ne 'keep-alive', 'not keep-alive without asking';
    $c->close;

    $raw = raw_exchange($port, "GET /plain10 HTTP/1.0\r\n\r\n", timeout => 5)->get;
    @r = parse_responses($raw);
    is $r[0]{body}, '/plain10', 'HTTP/1.0 without keep-alive: response, then close';
    ok !(grep { lc $_ eq 'keep-alive' } header_values($r[0], 'connection')), 'no connection: keep-alive header';
};

subtest 'trailers are sent only when the client accepts them' => sub {
    $handler = sends(
        { type => 'http.response.start', status => 200, trailers => 1, headers => [ [ 'content-type', 'text/plain' ] ] },
        body('data', 0),
        { type => 'http.response.trailers', headers => [ [ 'x-checksum', 'abc' ] ] },
    );
    my $raw = raw_exchange($port, "GET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    my ($r) = parse_responses($raw);
    is $r->{header}{'transfer-encoding'}, 'chunked', 'chunked';
    is after_head($raw), "4\r\ndata\r\n0\r\nx-checksum: abc\r\n\r\n", 'body, last chunk, trailer, end';
    is_deeply $r->{trailers}, [ [ 'x-checksum', 'abc' ] ], 'parsed trailer';

    $raw = raw_exchange($port,
        "GET /t HTTP/1.1\r\nHost: x\r\n\r\nGET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        timeout => 5)->get;
    my @r = parse_responses($raw);
    is scalar(@r), 2, 'without TE the response completes and the next one follows';
    my ($first_head, $rest) = split_head($raw);
    is substr($rest, 0, length "4\r\ndata\r\n0\r\n\r\n"), "4\r\ndata\r\n0\r\n\r\n", 'without TE: no trailer lines';
    unlike $first_head . substr($rest, 0, 20), qr/x-checksum/, 'x-checksum not sent to that client';
    is_deeply $r[1]{trailers}, [ [ 'x-checksum', 'abc' ] ], 'the TE request on the same connection gets it';
};

subtest 'exactly one date header, app Date kept' => sub {
    my $imf = qr/\A(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT\z/;
    $handler = $path_echo;
    my ($r) = parse_responses(raw_exchange($port, "GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get);
    my @dates = header_values($r, 'date');
    is scalar(@dates), 1, 'one date header';
    like $dates[0], $imf, 'IMF-fixdate';

    $handler = sends(start(200, [ 'Date', 'Sun, 06 Nov 1994 08:49:37 GMT' ]), body('d', 0));
    ($r) = parse_responses(raw_exchange($port, "GET /d2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get);
    is_deeply [ header_values($r, 'date') ], ['Sun, 06 Nov 1994 08:49:37 GMT'], 'only the app Date, unchanged';

    $handler = sends(start(200), body('s', 1), body('', 0));
    ($r) = parse_responses(raw_exchange($port, "GET /d3 HTTP/1.0\r\n\r\n", timeout => 5)->get);
    is scalar(header_values($r, 'date')), 1, 'one date on a streamed HTTP/1.0 response too';
};

subtest 'a server header is present' => sub {
    $handler = $path_echo;
    my ($r) = parse_responses(raw_exchange($port, "GET /srv HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get);
    my @server = header_values($r, 'server');
    is scalar(@server), 1, 'one server header';
    like $server[0], qr{\APAGI-Server-Native/\S+\z}, 'default product token';

    $handler = sends(start(200, [ 'server', 'my-app/1' ]), body('s', 0));
    ($r) = parse_responses(raw_exchange($port, "GET /srv2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get);
    is_deeply [ header_values($r, 'server') ], ['my-app/1'], 'an app server header replaces the default';
};

subtest 'app Transfer-Encoding is not forwarded' => sub {
    $handler = sends(start(200, [ 'transfer-encoding', 'gzip' ]), body('plain', 0));
    my $raw = raw_exchange($port, "GET /te HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    my ($r) = parse_responses($raw);
    unlike $raw, qr/gzip/, 'gzip not on the wire';
    is_deeply [ header_values($r, 'transfer-encoding') ], [], 'no transfer-encoding on a known-length body';
    is after_head($raw), 'plain', 'identity body';

    $handler = sends(start(200, [ 'Transfer-Encoding', 'chunked' ]), body('ab', 1), body('c', 0));
    $raw = raw_exchange($port, "GET /te2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    ($r) = parse_responses($raw);
    is_deeply [ header_values($r, 'transfer-encoding') ], ['chunked'], "only the server's own transfer-encoding";
    unlike $raw, qr/Transfer-Encoding/, 'the app spelling is gone';
    is after_head($raw), "2\r\nab\r\n1\r\nc\r\n0\r\n\r\n", 'framed once';

    $handler = sends(start(200, [ 'transfer-encoding', 'chunked' ]), body('raw', 0));
    $raw = raw_exchange($port, "GET /te3 HTTP/1.0\r\n\r\n", timeout => 5)->get;
    ($r) = parse_responses($raw);
    is_deeply [ header_values($r, 'transfer-encoding') ], [], 'HTTP/1.0: never chunked';
    is after_head($raw), 'raw', 'HTTP/1.0 body as is';
};

stop_server($server);
done_testing;
