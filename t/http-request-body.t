use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn responses_done http_client split_head);
use Future::AsyncAwait;
use Digest::MD5 qw(md5_hex);

# Each subtest installs its own handler; the app only dispatches to it.
my $handler;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    await $handler->($scope, $receive, $send);
};
my ($server, $port) = start_server(app => $app);

# Reads events until the body is complete (or a disconnect), keeping copies.
async sub read_body {
    my ($receive, $log) = @_;
    while (1) {
        my $ev = await $receive->();
        push @$log, {%$ev};
        return if $ev->{type} ne 'http.request' || !$ev->{more};
    }
}

async sub reply {
    my ($send, $body) = @_;
    await $send->({ type => 'http.response.start', status => 200,
                    headers => [ [ 'content-type', 'text/plain' ], [ 'content-length', length $body ] ] });
    await $send->({ type => 'http.response.body', body => $body });
}

# A handler that reads the whole body and answers with its length and MD5.
my %log;    # path => [events]
my $echo = async sub {
    my ($scope, $receive, $send) = @_;
    my $events = $log{ $scope->{path} } = [];
    await read_body($receive, $events);
    my $body = join '', map { $_->{body} // '' } @$events;
    await reply($send, length($body) . ' ' . md5_hex($body));
};

subtest 'small Content-Length body arrives as one event' => sub {
    $handler = $echo;
    my $raw = raw_exchange($port, "POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world", timeout => 5)->get;
    my @r = parse_responses($raw);
    is $r[0]{status}, 200, 'status';
    is $r[0]{body}, '11 ' . md5_hex('hello world'), 'the app got the body';
    is_deeply $log{'/small'}, [ { type => 'http.request', body => 'hello world', more => 0 } ], 'exactly one http.request with more 0';
};

subtest 'a request without a body yields one empty event' => sub {
    $handler = $echo;
    for my $case (
        [ '/nobody-get',  "GET /nobody-get HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" ],
        [ '/nobody-post', "POST /nobody-post HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" ],
        [ '/nobody-10',   "POST /nobody-10 HTTP/1.0\r\n\r\n" ],
    ) {
        my ($path, $req) = @$case;
        my $raw = raw_exchange($port, $req, timeout => 5)->get;
        is((parse_responses($raw))[0]{status}, 200, "$path answered");
        is_deeply $log{$path}, [ { type => 'http.request', body => '', more => 0 } ], "$path: exactly {body => '', more => 0}";
    }
};

subtest 'a 1 MB body arrives in several events of at most 64 KiB' => sub {
    $handler = $echo;
    my $body = join '', map { sprintf "%07d\n", $_ } 0 .. 131071;
    is length($body), 1_048_576, 'the body is 1 MiB';
    my $raw = raw_exchange($port, "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body", timeout => 10)->get;
    my @r = parse_responses($raw);
    is $r[0]{status}, 200, 'status';
    is $r[0]{body}, '1048576 ' . md5_hex($body), 'the app saw every byte in order';
    my @ev = @{ $log{'/big'} };
    cmp_ok scalar(@ev), '>=', 16, 'at least 16 events';
    is scalar(grep { $_->{type} ne 'http.request' } @ev), 0, 'all events are http.request';
    is scalar(grep { length($_->{body}) > 65536 } @ev), 0, 'no event is larger than 64 KiB';
    is $ev[-1]{more}, 0, 'the last event has more 0';
    is scalar(grep { !$_->{more} } @ev[ 0 .. $#ev - 1 ]), 0, 'every earlier event has more 1';
    ok join('', map { $_->{body} } @ev) eq $body, 'concatenation equals the body sent';
};

subtest 'a 1 MB body from a real client (Net::Async::HTTP)' => sub {
    $handler = $echo;
    my $body = join '', map { chr(($_ * 7) % 256) } 0 .. 1_048_575;
    my $res = http_client()->do_request(
        method       => 'POST',
        uri          => URI->new("http://127.0.0.1:$port/nah-big"),
        content      => $body,
        content_type => 'application/octet-stream',
        timeout      => 10,
    )->get;
    is $res->code, 200, 'status';
    is $res->content, '1048576 ' . md5_hex($body), 'the app saw the exact bytes';
    my @ev = @{ $log{'/nah-big'} };
    cmp_ok scalar(@ev), '>', 1, 'several events';
    is $ev[-1]{more}, 0, 'last event has more 0';
};

subtest 'a chunked request body is de-chunked and arrives in pieces' => sub {
    $handler = $echo;
    my $head = "POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    my @pieces = (
        $head . "5;name=value\r\nhello\r\n",
        "1;ext\r\n \r\n",
        "A\r\n0123456789\r\n",
        "0\r\nX-Trailer: t1\r\nX-Other: t2\r\n\r\n"
          . "GET /after-chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    my $raw = raw_exchange($port, undef, chunks => \@pieces, gap => 0.15, timeout => 5)->get;
    my @r = parse_responses($raw);
    is scalar(@r), 2, 'two responses: the chunked request and the one after it';
    my $expect = 'hello 0123456789';
    is $r[0]{body}, length($expect) . ' ' . md5_hex($expect), 'body de-chunked, no extensions or trailers in it';
    my @ev = @{ $log{'/chunked'} };
    is join('', map { $_->{body} } @ev), $expect, 'concatenated events';
    cmp_ok scalar(grep { length $_->{body} } @ev), '>=', 3, 'the body arrived in at least three non-empty pieces';
    is $ev[-1]{more}, 0, 'last event has more 0';
    is scalar(grep { !$_->{more} } @ev[ 0 .. $#ev - 1 ]), 0, 'earlier events have more 1';
    is $r[1]{status}, 200, 'keep-alive after a chunked body: the next request is served';
    is_deeply $log{'/after-chunked'}, [ { type => 'http.request', body => '', more => 0 } ], 'and it had no body';
};

subtest 'receive after the response resolves to http.disconnect, keep-alive goes on' => sub {
    my (%after, %finished);
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        my $events = $log{ $scope->{path} } = [];
        await read_body($receive, $events);
        await reply($send, "done $scope->{path}");
        my $ev = await $receive->();
        $after{ $scope->{path} } = {%$ev};
        $finished{ $scope->{path} } = 1;
    };
    my $c = open_conn($port);
    $c->write("POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    my $got = $c->read_until(responses_done(1))->get;
    my @r = parse_responses($got);
    is $r[0]{body}, 'done /one', 'first response';
    ok wait_for(sub { $finished{'/one'} }, 5), 'the app finished after its extra receive';
    is_deeply $after{'/one'}, { type => 'http.disconnect' }, 'the extra receive gave http.disconnect';
    ok !$c->is_eof, 'the connection is still open';

    $c->take;
    $c->write("GET /two HTTP/1.1\r\nHost: x\r\n\r\n");
    @r = parse_responses($c->read_until(responses_done(1))->get);
    is $r[0]{body}, 'done /two', 'second request on the same connection served';
    ok wait_for(sub { $finished{'/two'} }, 5), 'second app finished too';
    is_deeply $after{'/two'}, { type => 'http.disconnect' }, 'and got http.disconnect';

    # A larger body read in several events, then the extra receive.
    my $big = 'z' x 200_000;
    $c->take;
    $c->write("POST /three HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\nConnection: close\r\n\r\n$big");
    @r = parse_responses($c->wait_eof->get);
    is $r[0]{body}, 'done /three', 'third response';
    ok wait_for(sub { $finished{'/three'} }, 5), 'third app finished';
    is_deeply $after{'/three'}, { type => 'http.disconnect' }, 'http.disconnect after a streamed body';
    is join('', map { $_->{body} } @{ $log{'/three'} }), $big, 'streamed body intact';
    $c->close;
};

subtest 'Expect: 100-continue is not answered when the app never reads the body' => sub {
    my $called = 0;
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        $called++;
        await reply($send, 'no thanks');
    };
    my $c = open_conn($port);
    $c->write("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    my $got = $c->read_until(responses_done(1))->get;
    is $called, 1, 'the app ran before the body was sent';
    unlike $got, qr/100 Continue/, 'no 100 Continue was sent';
    like $got, qr{\AHTTP/1\.1 200 OK\r\n}, 'the first bytes are the final response';
    my @r = parse_responses($got);
    is scalar(@r), 1, 'one response';
    is $r[0]{body}, 'no thanks', 'its body';
    $c->close;
};

subtest 'Expect: 100-continue is answered when the app reads the body' => sub {
    $handler = $echo;
    my $c = open_conn($port);
    $c->write("POST /expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    my $interim = $c->read_until(qr/100 Continue\r\n\r\n/)->get;
    is $interim, "HTTP/1.1 100 Continue\r\n\r\n", 'exactly the interim response, before any body was sent';
    ok !defined $log{'/expect'}[0], 'the app has not received any body yet';
    $c->write('hello');
    my $all = $c->read_until(responses_done(1))->get;
    my @r = parse_responses($all);
    is scalar(@r), 2, 'interim plus final response';
    is $r[0]{status}, 100, 'first is 100';
    is $r[1]{status}, 200, 'then 200';
    is $r[1]{body}, '5 ' . md5_hex('hello'), 'the body reached the app';
    is_deeply $log{'/expect'}, [ { type => 'http.request', body => 'hello', more => 0 } ], 'one body event';

    # The connection stays usable, and the next request (no Expect) gets no 100.
    $c->take;
    $c->write("POST /expect2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    my $next = $c->wait_eof->get;
    unlike $next, qr/100 Continue/, 'no 100 without Expect';
    is((parse_responses($next))[0]{body}, '2 ' . md5_hex('ok'), 'next request served');
    $c->close;
};

subtest 'client disconnect while the app waits for the body gives http.disconnect' => sub {
    my @events;
    my ($finished, $send_result);
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await read_body($receive, \@events);
        my $f = $send->({ type => 'http.response.start', status => 200, headers => [] });
        await $f->followed_by(sub { Future->done });
        $send_result = $f->is_failed ? 'failed: ' . ($f->failure)[0] : 'done';
        $finished = 1;
    };
    my $c = open_conn($port);
    $c->write("POST /gone HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" . ('q' x 10));
    ok wait_for(sub { @events >= 1 }, 5), 'the app got the first piece';
    is_deeply $events[0], { type => 'http.request', body => 'q' x 10, more => 1 }, 'first piece has more 1';
    ok !$finished, 'the app is waiting for more body';
    $c->close;
    ok wait_for(sub { $finished }, 5), 'the app finished after the client left';
    is_deeply $events[-1], { type => 'http.disconnect' }, 'its pending receive resolved to http.disconnect';
    is scalar(@events), 2, 'no other events';
    is $send_result, 'done', 'send after the disconnect is a successful no-op';

    $handler = $echo;
    my $raw = raw_exchange($port, "GET /still-up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    is((parse_responses($raw))[0]{status}, 200, 'the server still serves');
};

subtest 'client disconnect during a chunked body gives http.disconnect' => sub {
    my @events;
    my $finished;
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await read_body($receive, \@events);
        $finished = 1;
    };
    my $c = open_conn($port);
    $c->write("POST /gone-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    ok wait_for(sub { @events >= 1 }, 5), 'first chunk delivered';
    is_deeply $events[0], { type => 'http.request', body => 'abc', more => 1 }, 'first chunk';
    $c->shutdown_write;
    ok wait_for(sub { $finished }, 5), 'the app finished';
    is_deeply $events[-1], { type => 'http.disconnect' }, 'last event is http.disconnect';
    is $c->wait_eof->get, '', 'nothing was written to the client';
    $c->close;
};

stop_server($server);
done_testing;
