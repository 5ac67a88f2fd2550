use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses http_get wait_for);
use PAGI::Test::HTTP qw(open_conn responses_done http_client split_head start body);
use Future::AsyncAwait;
use Scalar::Util qw(blessed);

# Each subtest installs its own handler; the app only dispatches to it.
my $handler;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    await $handler->($scope, $receive, $send);
};
my ($server, $port) = start_server(app => $app);


my $ok_handler = async sub {
    my ($scope, $receive, $send) = @_;
    await $send->(start(200, [ 'content-length', length $scope->{path} ]));
    await $send->(body($scope->{path}));
};

# The app errors below are logged by the server on STDERR; keep test output readable.
my @server_log;
sub quietly {
    my ($code) = @_;
    open my $saved, '>&', \*STDERR or die "dup STDERR: $!";
    my $file = "/tmp/http-app-errors.$$.log";
    open STDERR, '>', $file or die "redirect STDERR: $!";
    my @r = eval { $code->() };
    my $err = $@;
    open STDERR, '>&', $saved or die "restore STDERR: $!";
    if (open my $in, '<', $file) { push @server_log, <$in>; close $in }
    unlink $file;
    die $err if $err;
    return wantarray ? @r : $r[0];
}

# A keep-alive request followed by a pipelined one: after an app failure the
# server must close, so the second request is never answered.
my $pair = "GET /fail HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n";

subtest 'app dies before start: 500 text/plain, then close' => sub {
    $handler = async sub { die "boom before start\n" };
    @server_log = ();
    # No idle/until: completes only when the server closes the connection.
    my $raw = quietly(sub { raw_exchange($port, $pair, timeout => 5)->get });
    my @r = parse_responses($raw);
    is scalar(@r), 1, 'exactly one response; the pipelined request was not served';
    is $r[0]{status}, 500, 'status 500';
    is $r[0]{header}{'content-type'}, 'text/plain', 'text/plain';
    ok length($r[0]{body}) > 0 && !$r[0]{incomplete}, 'a short complete body';
    is $r[0]{header}{'content-length'}, length($r[0]{body}), 'content-length matches the body';
    is $r[0]{header}{connection}, 'close', 'labelled connection: close';
    ok !(grep { $_->{garbage} } @r), 'nothing else on the wire';
    like join('', @server_log), qr/boom before start/, 'the error was logged';

    # Same through a real client.
    my $res = quietly(sub { http_client()->do_request(uri => URI->new("http://127.0.0.1:$port/nah-die"), timeout => 5)->get });
    is $res->code, 500, 'Net::Async::HTTP sees a 500';
};

subtest 'app dies synchronously (not an async sub)' => sub {
    $handler = sub { die "plain die\n" };
    my $raw = quietly(sub { raw_exchange($port, $pair, timeout => 5)->get });
    my @r = parse_responses($raw);
    is scalar(@r), 1, 'one response';
    is $r[0]{status}, 500, 'status 500';
};

subtest 'app returns without responding: 500, then close' => sub {
    $handler = async sub { return 'ignored value' };
    @server_log = ();
    my $raw = quietly(sub { raw_exchange($port, $pair, timeout => 5)->get });
    my @r = parse_responses($raw);
    is scalar(@r), 1, 'one response; the pipelined request was not served';
    is $r[0]{status}, 500, 'status 500';
    is $r[0]{header}{'content-type'}, 'text/plain', 'text/plain';
    is $r[0]{header}{connection}, 'close', 'labelled connection: close';
    like join('', @server_log), qr/PAGI application returned without starting a response \(GET \/fail\)/, 'logged';

    # An app that returns something that is not a Future at all.
    $handler = sub { return 42 };
    $raw = quietly(sub { raw_exchange($port, $pair, timeout => 5)->get });
    @r = parse_responses($raw);
    is scalar(@r), 1, 'non-Future return: one response';
    is $r[0]{status}, 500, 'non-Future return: 500';
};

subtest 'app dies after start and a partial body: truncated, then close' => sub {
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $send->(start(200, [ 'content-type', 'text/plain' ]));
        await $send->(body('partial', 1));
        await loop()->delay_future(after => 0.05);
        die "boom mid-stream\n";
    };
    my $raw = quietly(sub { raw_exchange($port, $pair, timeout => 5)->get });
    my ($head, $rest) = split_head($raw);
    like $head, qr{\AHTTP/1\.1 200 OK\r\n}, 'the started response';
    like $head, qr/\r\ntransfer-encoding: chunked\r\n/, 'chunked';
    is $rest, "7\r\npartial\r\n", 'the partial chunk and nothing else: no terminating 0-chunk';
    unlike $raw, qr{/second}, 'the pipelined request was not served';

    # With a Content-Length the client sees fewer bytes than announced.
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $send->(start(200, [ 'content-length', '100' ]));
        await $send->(body('abc', 1));
        die "boom with length\n";
    };
    $raw = quietly(sub { raw_exchange($port, $pair, timeout => 5)->get });
    ($head, $rest) = split_head($raw);
    like $head, qr/\r\ncontent-length: 100\r\n/, 'announced 100 bytes';
    is $rest, 'abc', 'only 3 arrived before the close';

    # Dies after start but before any body: the head is flushed, then close.
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $send->(start(201));
        die "boom after start\n";
    };
    $raw = quietly(sub { raw_exchange($port, $pair, timeout => 5)->get });
    ($head, $rest) = split_head($raw);
    like $head, qr{\AHTTP/1\.1 201 }, 'the 201 head was sent';
    is $rest, '', 'no body and no terminating chunk';
};

subtest 'returning mid-stream also cuts the response' => sub {
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $send->(start(200));
        await $send->(body('half', 1));
        return;
    };
    my $raw = quietly(sub { raw_exchange($port, $pair, timeout => 5)->get });
    my ($head, $rest) = split_head($raw);
    is $rest, "4\r\nhalf\r\n", 'unterminated chunked body, then close';
};

subtest 'client gone before the app answers: nothing written, others served' => sub {
    my $gate = loop()->new_future;
    my (%sent, $saw_disconnect, $slow_done);
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        return await $ok_handler->(@_) unless $scope->{path} eq '/slow';
        my $first = await $receive->();
        my $next  = await $receive->();    # pending until the client goes away
        $saw_disconnect = $next->{type};
        await $gate;
        for my $ev (start(200, [ 'content-length', '4' ]), body('late')) {
            my $f = $send->($ev);
            await $f->followed_by(sub { Future->done });
            $sent{ $ev->{type} } = $f->is_failed ? 'failed: ' . ($f->failure)[0] : 'done';
        }
        $slow_done = 1;
    };
    # Half-close: the server sees EOF, and anything it wrote would still reach us.
    my $gone = raw_exchange($port, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n", shutdown_write => 1, timeout => 5);
    ok wait_for(sub { defined $saw_disconnect }, 5), 'the app learned the client left';
    is $saw_disconnect, 'http.disconnect', 'via http.disconnect';
    is $gone->get, '', 'the server closed without writing anything';

    my $other = http_get($port, '/other')->get;
    is $other->{status}, 200, 'another client is served while the first app still runs';
    is $other->{body}, '/other', 'with its own response';

    $gate->done;
    ok wait_for(sub { $slow_done }, 5), 'the slow app finished';
    is_deeply \%sent, { 'http.response.start' => 'done', 'http.response.body' => 'done' }, 'its late sends were successful no-ops';

    my $after = http_get($port, '/after')->get;
    is $after->{body}, '/after', 'the server still serves afterwards';
};

# One row per bad event: what to send before it, the bad event, the message
# the $send Future must fail with, and the valid events sent after catching it.
my $done_body = 'valid';
my @bad = (
    [ 'unknown type',               [],                       { type => 'http.response.bogus' },
      qr/\AUnrecognized event type 'http\.response\.bogus' for http protocol\n?\z/ ],
    [ 'event not a hash reference', [],                       [ type => 'http.response.start' ],
      qr/\Asend: event must be a hash reference/ ],
    [ 'event is a plain string',    [],                       'http.response.start',
      qr/\Asend: event must be a hash reference/ ],
    [ 'missing type',               [],                       { status => 200 },
      qr/\Asend: event has no 'type' field/ ],
    [ 'missing status',             [],                       { type => 'http.response.start', headers => [] },
      qr/\Ahttp\.response\.start: 'status' is required/ ],
    [ 'non-integer status',         [],                       { type => 'http.response.start', status => 'abc' },
      qr/\Ahttp\.response\.start: 'status' must be an integer from 100 to 999, got 'abc'/ ],
    [ 'status 42',                  [],                       { type => 'http.response.start', status => 42 },
      qr/\Ahttp\.response\.start: 'status' must be an integer from 100 to 999, got '42'/ ],
    [ 'status 1000',                [],                       { type => 'http.response.start', status => 1000 },
      qr/'status' must be an integer from 100 to 999, got '1000'/ ],
    [ 'headers not an array',       [],                       { type => 'http.response.start', status => 200, headers => { a => 1 } },
      qr/\Ahttp\.response\.start: 'headers' must be an array reference/ ],
    [ 'header pair not a pair',     [],                       { type => 'http.response.start', status => 200, headers => [ 'x-a', '1' ] },
      qr/\Ahttp\.response\.start: header 0 is not a \[name, value\] pair/ ],
    [ 'header with three elements', [],                       { type => 'http.response.start', status => 200, headers => [ [ 'x-ok', 1 ], [ 'x-a', 1, 2 ] ] },
      qr/\Ahttp\.response\.start: header 1 is not a \[name, value\] pair/ ],
    [ 'header with undef value',    [],                       { type => 'http.response.start', status => 200, headers => [ [ 'x-a', undef ] ] },
      qr/\Ahttp\.response\.start: header 0 has an undefined name or value/ ],
    [ 'body before start',          [],                       body('early'),
      qr/\Ahttp\.response\.body: sent before http\.response\.start/ ],
    [ 'second start',               [ start(200) ],           start(404, [ 'x-second', 'yes' ]),
      qr/\Ahttp\.response\.start: the response was already started/ ],
    [ 'body is a reference',        [ start(200) ],           { type => 'http.response.body', body => [ 'x' ] },
      qr/\Ahttp\.response\.body: 'body' must be a byte string/ ],
    [ 'CR/LF in a header value',    [],                       start(200, [ 'x-bad', "a\r\nInjected: 1" ]),
      qr/\Ahttp\.response\.start: Invalid header value: contains CR, LF, or null byte \(header 'x-bad'\)/ ],
    [ 'LF alone in a header value', [],                       start(200, [ 'x-lf', "a\nInjected: 1" ]),
      qr/Invalid header value: contains CR, LF, or null byte \(header 'x-lf'\)/ ],
    [ 'NUL in a header value',      [],                       start(200, [ 'x-nul', "a\0b" ]),
      qr/\Ahttp\.response\.start: Invalid header value: contains CR, LF, or null byte \(header 'x-nul'\)/ ],
    [ 'CR in a header name',        [],                       start(200, [ "x-bad\r\nInjected", 'v' ]),
      qr/\Ahttp\.response\.start: Invalid header name: contains CR, LF, or null byte/ ],
    [ 'space in a header name',     [],                       start(200, [ 'x bad', 'v' ]),
      qr/\Ahttp\.response\.start: Invalid header name: contains control characters or separators \("x bad"\)/ ],
    [ 'control char in a header name', [],                    start(200, [ "x\x01bad", 'v' ]),
      qr/Invalid header name: contains control characters/ ],
    [ 'empty header name',          [],                       start(200, [ '', 'v' ]),
      qr/\Ahttp\.response\.start: Invalid header name: empty/ ],
    [ 'wide character header value', [],                      start(200, [ 'x-smile', "\x{263A}" ]),
      qr/\Ahttp\.response\.start: header value contains wide characters/ ],
    [ 'trailers without trailers => 1', [ start(200) ],       { type => 'http.response.trailers', headers => [ [ 'x-t', '1' ] ] },
      qr/\Ahttp\.response\.trailers: http\.response\.start did not declare trailers => 1/ ],
    [ 'trailers before the final body', [ { %{ start(200) }, trailers => 1 }, body('v', 1) ],
      { type => 'http.response.trailers', headers => [] },
      qr/\Ahttp\.response\.trailers: send the final http\.response\.body \(more => 0\) first/,
      [ body('alid', 0), { type => 'http.response.trailers', headers => [] } ] ],
    [ 'CR/LF in a trailer value',   [ { %{ start(200) }, trailers => 1 }, body('valid', 0) ],
      { type => 'http.response.trailers', headers => [ [ 'x-t', "1\r\nInjected: 1" ] ] },
      qr/\Ahttp\.response\.trailers: Invalid header value: contains CR, LF, or null byte \(header 'x-t'\)/,
      [ { type => 'http.response.trailers', headers => [] } ] ],
    [ 'body after the response completed', [ start(200), body('valid', 0) ], body('extra'),
      qr/\Ahttp\.response\.body: the response is already complete/, [] ],
    [ 'wide character body',        [ start(200) ],           body("\x{263A}"),
      qr/\Ahttp\.response\.body: body contains wide characters/i ],
);

subtest 'bad events fail their $send and leave the wire clean' => sub {
    my %seen;    # row name => { future => 0/1, failed => 0/1, message => ..., after => [errors] }
    my %rows = map { $_->[0] => $_ } @bad;
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        my ($row_name) = map { $_->[1] } grep { $_->[0] eq "x-row" } @{ $scope->{headers} };
        my $row = $rows{ $row_name // "" } or die "no such row\n";
        my (undef, $before, $bad, undef, $after) = @$row;
        my $has_start = grep { ref $_ eq 'HASH' && $_->{type} eq 'http.response.start' } @$before;
        $after //= [ ($has_start ? () : start(200)), body($done_body, 0) ];
        my $rec = $seen{ $row->[0] } = { after => [] };
        for my $ev (@$before) { await $send->($ev) }
        my $f = eval { $send->($bad) };
        $rec->{died} = $@ if $@;
        $rec->{future} = blessed($f) && $f->isa('Future') ? 1 : 0;
        if ($rec->{future}) {
            await $f->followed_by(sub { Future->done });
            $rec->{failed}  = $f->is_failed ? 1 : 0;
            $rec->{message} = $f->is_failed ? ($f->failure)[0] : undef;
        }
        for my $ev (@$after) {
            my $g = $send->($ev);
            await $g->followed_by(sub { Future->done });
            push @{ $rec->{after} }, ($g->failure)[0] if $g->is_failed;
        }
    };
    for my $row (@bad) {
        my ($name, undef, undef, $message) = @$row;
        my $raw = quietly(sub { raw_exchange($port,
            "GET /bad HTTP/1.1\r\nX-Row: $name\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get });
        my $rec = $seen{$name};
        ok $rec, "$name: the app ran" or next;
        ok !defined $rec->{died}, "$name: \$send did not die synchronously" or diag $rec->{died};
        ok $rec->{future}, "$name: \$send returned a Future";
        ok $rec->{failed}, "$name: the Future failed";
        like $rec->{message} // '', $message, "$name: message names the problem";
        is_deeply $rec->{after}, [], "$name: the valid events after it were accepted";
        my @r = parse_responses($raw);
        is scalar(@r), 1, "$name: exactly one response on the wire";
        is $r[0]{status}, 200, "$name: it is the valid 200";
        is $r[0]{body}, $done_body, "$name: with the valid body";
        ok !$r[0]{incomplete} && !$r[0]{garbage}, "$name: complete, nothing after it";
        unlike $raw, qr/Injected|x-second|extra|early|\x{263A}|\xE2\x98\xBA/, "$name: nothing of the bad event reached the wire";
        my ($head) = split_head($raw);
        unlike $head, qr/x-bad|x-nul|x-lf|x-smile|x bad/, "$name: no part of the bad headers in the head";
    }
};

stop_server($server);
done_testing;
