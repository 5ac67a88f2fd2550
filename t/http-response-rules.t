use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn responses_done split_head start body sends header_values);
use Future::AsyncAwait;

# Rules the server applies to what the app sends (PAGI-SPEC 3.1.2-3.1.4,
# issue 3 "Responses"): header byte safety, server-owned framing, the app's
# Content-Length, Date and Server.

my $handler;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    await $handler->($scope, $receive, $send);
};
my ($server, $port) = start_server(app => $app);
my ($named_server, $named_port) = start_server(app => $app, server_header => 'MyApp/1');
my ($bare_server, $bare_port) = start_server(app => $app, server_header => '');

# Answers with the request path and a Content-Length.
my $echo = async sub {
    my ($scope, $receive, $send) = @_;
    await $send->(start(200, [ 'content-length', length $scope->{path} ]));
    await $send->(body($scope->{path}));
};


sub get_close {
    my ($p, $path, $extra) = @_;
    $extra //= '';
    return raw_exchange($p, "GET $path HTTP/1.1\r\nHost: x\r\n${extra}Connection: close\r\n\r\n", timeout => 5)->get;
}

# Sends $event, waits for its Future whatever the outcome; returns the failure message or undef.
async sub failure_of {
    my ($send, $event) = @_;
    my $f = $send->($event);
    await $f->followed_by(sub { Future->done });
    return $f->is_failed ? scalar(($f->failure)[0]) : undef;
}

subtest 'unsafe response header bytes fail $send and write nothing' => sub {
    my @cases = (
        # [ label, name, value, pattern the error must contain ]
        [ 'CR in a value',             'x-bad-cr',    "a\rb",                  qr/x-bad-cr/ ],
        [ 'LF in a value',             'x-bad-lf',    "a\nb",                  qr/x-bad-lf/ ],
        [ 'CRLF injection in a value', 'x-inject',    "a\r\nSet-Cookie: evil=1", qr/x-inject/ ],
        [ 'NUL in a value',            'x-bad-nul',   "a\0b",                  qr/x-bad-nul/ ],
        [ 'CR in a name',              "x-cr\rname",  'v',                     qr/x-cr/ ],
        [ 'LF in a name',              "x-lf\nname",  'v',                     qr/x-lf/ ],
        [ 'NUL in a name',             "x-nul\0name", 'v',                     qr/x-nul/ ],
        [ 'space in a name',           'x bad',       'v',                     qr/x bad/ ],
        [ 'colon in a name',           'x-colon:',    'v',                     qr/x-colon/ ],
        [ 'separator in a name',       'x(paren)',    'v',                     qr/x\(paren\)/ ],
        [ 'control char in a name',    "x-ctl\x01",   'v',                     qr/x-ctl/ ],
        [ 'DEL in a name',             "x-del\x7f",   'v',                     qr/x-del/ ],
        [ 'non-ASCII name',            "x-caf\xe9",   'v',                     qr/x-caf/ ],
        [ 'empty name',                '',            'v',                     qr/name/i ],
    );
    for my $case (@cases) {
        my ($label, $name, $value, $names_it) = @$case;
        my $error;
        $handler = async sub {
            my ($scope, $receive, $send) = @_;
            $error = await failure_of($send, start(200, [ 'content-type', 'text/plain' ], [ $name, $value ]));
            await $send->(start(200, [ 'x-second', 'yes' ], [ 'content-length', 2 ]));
            await $send->(body('ok'));
        };
        my $raw = get_close($port, '/hdr');
        my @r = parse_responses($raw);
        ok defined $error, "$label: the \$send Future failed";
        like $error // '', qr/header/i, "$label: the error is about a header";
        like $error // '', $names_it, "$label: the error names the header";
        is scalar(@r), 1, "$label: one response on the wire";
        is $r[0]{status}, 200, "$label: it is the app's second, valid start";
        is $r[0]{header}{'x-second'}, 'yes', "$label: with its headers";
        is $r[0]{body}, 'ok', "$label: and body";
        ok !(grep { $_->{garbage} } @r), "$label: nothing else";
        unlike $raw, qr/x-bad|x-inject|evil=1|x-cr|x-lf|x-nul|x bad|x-colon|x\(paren|x-ctl|x-del|x-caf/, "$label: no trace of the rejected header";
    }
};

subtest 'unsafe trailer bytes fail $send too' => sub {
    my $error;
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $send->({ type => 'http.response.start', status => 200, trailers => 1, headers => [] });
        await $send->(body('data'));
        $error = await failure_of($send, { type => 'http.response.trailers', headers => [ [ 'x-sum', "1\r\nx-evil: 2" ] ] });
        await $send->({ type => 'http.response.trailers', headers => [ [ 'x-sum', '1' ] ] });
    };
    my $raw = get_close($port, '/trail', "TE: trailers\r\n");
    my ($r) = parse_responses($raw);
    like $error // '', qr/x-sum/, 'the failed trailers name the header';
    is_deeply $r->{trailers}, [ [ 'x-sum', '1' ] ], 'only the valid trailers were written';
    unlike $raw, qr/x-evil/, 'no injected field';
};

subtest 'Transfer-Encoding from the app is ignored' => sub {
    # A known-length body: the server frames it with Content-Length.
    $handler = sends(start(200, [ 'Transfer-Encoding', 'gzip, chunked' ]), body('abc'));
    my $raw = raw_exchange($port, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    my @r = parse_responses($raw);
    is scalar(@r), 2, 'two responses: framing held across keep-alive';
    is_deeply [ header_values($r[0], 'transfer-encoding') ], [], 'no transfer-encoding forwarded';
    is $r[0]{header}{'content-length'}, 3, 'content-length from the server';
    is $r[0]{body}, 'abc', 'identity body';
    unlike $raw, qr/gzip/i, 'the app coding never reaches the wire';

    # A streamed body: the server's own chunked framing, once.
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        return await $echo->($scope, $receive, $send) if $scope->{path} eq '/next';
        await $send->(start(200, [ 'transfer-encoding', 'identity' ]));
        await $send->(body('12', 1));
        await $send->(body('345', 0));
    };
    $raw = raw_exchange($port, "GET /s HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    @r = parse_responses($raw);
    is_deeply [ header_values($r[0], 'transfer-encoding') ], ['chunked'], 'exactly one transfer-encoding, chunked';
    unlike $raw, qr/identity/, 'the app value is gone';
    my (undef, $rest) = split_head($raw);
    like $rest, qr/\A2\r\n12\r\n3\r\n345\r\n0\r\n\r\nHTTP\/1\.1 200 /, 'chunks, terminator, then the next response';
    is $r[1]{body}, '/next', 'the next response is intact';
};

subtest 'an app Content-Length is honoured across several sends' => sub {
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        return await $echo->($scope, $receive, $send) if $scope->{path} eq '/next';
        await $send->(start(200, [ 'Content-Length', '10' ]));
        await $send->(body('hel', 1));
        await $send->(body('lo', 1));
        await $send->(body('', 1));
        await $send->(body('world', 0));
    };
    my $raw = raw_exchange($port, "GET /cl HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    my @r = parse_responses($raw);
    is_deeply [ header_values($r[0], 'content-length') ], ['10'], 'one content-length, the app value';
    is_deeply [ header_values($r[0], 'transfer-encoding') ], [], 'no chunked framing';
    my (undef, $rest) = split_head($raw);
    is substr($rest, 0, 10), 'helloworld', 'raw identity bytes';
    like substr($rest, 10), qr{\AHTTP/1\.1 200 }, 'followed directly by the next response';
    is scalar(@r), 2, 'the connection stayed usable';
    is $r[1]{body}, '/next', 'next response intact';
};

# Server warnings go to STDERR; collect them instead of cluttering the output.
sub capture_stderr {
    my ($code) = @_;
    my $file = "/tmp/http-response-rules.$$.log";
    open my $saved, '>&', \*STDERR or die "dup STDERR: $!";
    open STDERR, '>', $file or die "redirect STDERR: $!";
    my $ok = eval { $code->(); 1 };
    my $err = $@;
    open STDERR, '>&', $saved or die "restore STDERR: $!";
    my $log = do { local $/; open my $in, '<', $file; $in ? <$in> : '' } // '';
    unlink $file;
    die $err unless $ok;
    return $log;
}

subtest 'a body longer than the app Content-Length is cut and the connection closed' => sub {
    for my $case (
        [ 'one send',        [ body('helloEXTRA', 0) ] ],
        [ 'streamed sends',  [ body('hel', 1), body('lo', 1), body('EXTRA', 1), body('MORE', 0) ] ],
    ) {
        my ($label, $bodies) = @$case;
        my @results;
        $handler = async sub {
            my ($scope, $receive, $send) = @_;
            return await $echo->($scope, $receive, $send) if $scope->{path} eq '/second';
            await $send->(start(200, [ 'content-length', '5' ]));
            for my $b (@$bodies) {
                my $f = $send->($b);
                await $f->followed_by(sub { Future->done });
                push @results, $f;
            }
        };
        # A keep-alive request with one pipelined behind it: only closing can end it.
        my $raw;
        my $log = capture_stderr(sub {
            $raw = eval { raw_exchange($port, "GET /long HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n", timeout => 5)->get };
        });
        ok defined $raw, "$label: the server closed the connection" or diag $@;
        like $log, qr/longer than its Content-Length/, "$label: the server logged the error";
        $raw //= '';
        my ($head, $rest) = split_head($raw);
        like $head // '', qr/\r\ncontent-length: 5\r\n/i, "$label: content-length 5";
        is $rest, 'hello', "$label: exactly the 5 announced bytes, nothing after them";
        unlike $raw, qr/EXTRA|MORE/, "$label: the extra bytes never reached the wire";
        unlike $raw, qr{/second}, "$label: the pipelined request was not answered";
    }
};

subtest 'a body shorter than the app Content-Length closes the connection' => sub {
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        return await $echo->($scope, $receive, $send) if $scope->{path} eq '/second';
        await $send->(start(200, [ 'content-length', '10' ]));
        await $send->(body('abc', 0));
    };
    my $raw = eval { raw_exchange($port, "GET /short HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n", timeout => 5)->get };
    ok defined $raw, 'the server closed: only that tells the client the body was cut';
    my (undef, $rest) = split_head($raw // '');
    is $rest, 'abc', 'the bytes the app sent, nothing more';
};

subtest 'date header: added when absent, never duplicated' => sub {
    my $imf = qr/\A(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT\z/;
    $handler = sends(start(200), body('x'));
    my ($r) = parse_responses(get_close($port, '/d'));
    my @d = header_values($r, 'date');
    is scalar(@d), 1, 'one date added';
    like $d[0], $imf, 'IMF-fixdate';

    for my $spelling ('date', 'Date', 'DATE') {
        $handler = sends(start(200, [ $spelling, 'Tue, 01 Jan 2030 00:00:00 GMT' ]), body('x'));
        ($r) = parse_responses(get_close($port, '/d2'));
        is_deeply [ header_values($r, 'date') ], ['Tue, 01 Jan 2030 00:00:00 GMT'], "app '$spelling' kept, exactly one";
    }

    $handler = sends(start(200, [ 'date', 'Tue, 01 Jan 2030 00:00:00 GMT' ]), body('a', 1), body('b', 0));
    ($r) = parse_responses(get_close($port, '/d3'));
    is_deeply [ header_values($r, 'date') ], ['Tue, 01 Jan 2030 00:00:00 GMT'], 'streamed: app date kept, exactly one';
};

subtest 'server header: default, configured, removed, app-set' => sub {
    $handler = sends(start(200), body('x'));
    my ($r) = parse_responses(get_close($port, '/s'));
    my @s = header_values($r, 'server');
    is scalar(@s), 1, 'default: one server header';
    like $s[0] // '', qr{\APAGI-Server-Native/\S+\z}, 'default: PAGI-Server-Native/<version>';

    ($r) = parse_responses(get_close($named_port, '/s'));
    is_deeply [ header_values($r, 'server') ], ['MyApp/1'], "server_header => 'MyApp/1' replaces it";

    ($r) = parse_responses(get_close($bare_port, '/s'));
    is_deeply [ header_values($r, 'server') ], [], "server_header => '' removes it";
    is $r->{status}, 200, 'and the response is otherwise normal';

    $handler = sends(start(200, [ 'Server', 'AppOwn/2' ]), body('x'));
    for my $case ([ default => $port ], [ 'MyApp/1' => $named_port ], [ empty => $bare_port ]) {
        my ($label, $p) = @$case;
        ($r) = parse_responses(get_close($p, '/s2'));
        is_deeply [ header_values($r, 'server') ], ['AppOwn/2'], "$label server: the app's server header kept, not duplicated";
    }

    # Server-generated responses follow the same setting.
    ($r) = parse_responses(raw_exchange($named_port, "GET / HTTP/1.1\r\n\r\n", timeout => 5)->get);
    is $r->{status}, 400, 'a refused request';
    is_deeply [ header_values($r, 'server') ], ['MyApp/1'], 'carries the configured server header';
    ($r) = parse_responses(raw_exchange($bare_port, "GET / HTTP/1.1\r\n\r\n", timeout => 5)->get);
    is_deeply [ header_values($r, 'server') ], [], 'and none when removed';
};

subtest '204 and 304 carry no body bytes' => sub {
    for my $case (
        [ 204, [], 'streamed body' ],
        [ 204, [ [ 'content-length', '7' ] ], 'app content-length' ],
        [ 304, [ [ 'etag', '"abc"' ] ], 'streamed body' ],
        [ 304, [], 'single body' ],
    ) {
        my ($status, $hdrs, $label) = @$case;
        $handler = async sub {
            my ($scope, $receive, $send) = @_;
            return await $echo->($scope, $receive, $send) if $scope->{path} eq '/after';
            await $send->(start($status, @$hdrs));
            if ($label eq 'single body') { await $send->(body('NOPE', 0)) }
            else { await $send->(body('NOPE', 1)); await $send->(body('NADA', 0)) }
        };
        my $raw = raw_exchange($port, "GET /nb HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get;
        my ($head, $rest) = split_head($raw);
        like $head, qr{\AHTTP/1\.1 $status }, "$status $label: status";
        unlike $head, qr/transfer-encoding/i, "$status $label: no chunked framing";
        unlike $head, qr/content-length/i, "$status $label: no content-length" if $status == 204;
        like $rest, qr{\AHTTP/1\.1 200 }, "$status $label: the next response follows the head directly";
        unlike $raw, qr/NOPE|NADA/, "$status $label: no body bytes";
        my @r = parse_responses($raw);
        is $r[1]{body}, '/after', "$status $label: next response intact";
    }
};

stop_server($_) for $server, $named_server, $bare_server;
done_testing;
