use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses http_get wait_for);
use PAGI::Test::HTTP qw(open_conn responses_done split_head);
use Future::AsyncAwait;

# Wire-level refusal of malformed requests (PAGI-SPEC 5.1 / 5.2, issue 3):
# every row below is written to a fresh connection in one write, followed by
# a valid pipelined request. The server must answer the row with the status
# named, a short text/plain body with Content-Length and `connection: close`,
# then close, so the pipelined request is never answered, and the app must
# never see either of them.

my $calls = 0;      # every app invocation, whatever the server
my %seen;           # path => scope of the last request the app saw there
my %events;         # path => [ copies of every $receive event ]
my %reasons;        # path => pagi.connection disconnect_reason at the end

my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    $calls++;
    my $path = $scope->{path};
    $seen{$path} = $scope;
    my $log = $events{$path} = [];
    my $got = '';
    while (1) {
        my $ev = await $receive->();
        push @$log, {%$ev};
        last unless $ev->{type} eq 'http.request';
        $got .= $ev->{body} // '';
        last unless $ev->{more};
    }
    if ($log->[-1]{type} ne 'http.request') {
        $reasons{$path} = $scope->{'pagi.connection'}->disconnect_reason;
        return;
    }
    if ($path eq '/stream10') {
        # No Content-Length: on HTTP/1.0 the body is delimited by the close.
        await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
        await $send->({ type => 'http.response.body', body => 'part1,', more => 1 });
        await $send->({ type => 'http.response.body', body => 'part2', more => 0 });
        return;
    }
    my $text = "path=$path query=$scope->{query_string} len=" . length($got);
    await $send->({ type => 'http.response.start', status => 200,
                    headers => [ [ 'content-type', 'text/plain' ], [ 'content-length', length $text ] ] });
    await $send->({ type => 'http.response.body', body => $text });
};

my %port;
my @servers;
for my $spec (
    [ default => () ],
    [ hs1024  => (max_header_size  => 1024) ],
    [ hc10    => (max_header_count => 10) ],
    [ mb100   => (max_body_size    => 100) ],
    [ mb0     => (max_body_size    => 0) ],
) {
    my ($name, %opts) = @$spec;
    my ($server, $port) = start_server(app => $app, %opts);
    push @servers, $server;
    $port{$name} = $port;
}

my $PIPELINED = "GET /pipelined HTTP/1.1\r\nHost: x\r\n\r\n";

sub show {
    my ($s) = @_;
    $s = substr($s, 0, 60) . '...' if length $s > 60;
    $s =~ s/([^\x20-\x7e])/sprintf '\\x%02X', ord $1/ge;
    return $s;
}

# Runs after a row: a valid request on a new connection. The engine hands
# requests to Perl in arrival order, so if the bad request had reached the
# app it would have been counted before this probe: exactly 1 call means the
# app saw only the probe. Returns the calls counted during the probe.
sub app_calls_after_probe {
    my ($port) = @_;
    my $before = $calls;
    my $r = http_get($port, '/probe')->get;
    die "probe failed: status $r->{status}\n" unless $r->{status} == 200;
    return $calls - $before;
}

# Sends $bytes (plus a pipelined request) in one write; returns the parsed responses and raw bytes.
# raw_exchange has no idle/until here: it completes only when the server closes.
sub refused_exchange {
    my ($port, $bytes) = @_;
    my $raw = eval { raw_exchange($port, $bytes . $PIPELINED, timeout => 5)->get };
    return (undef, $@) unless defined $raw;
    return ($raw, undef);
}

sub check_refusal {
    my ($name, $server, $bytes, $status) = @_;
    my $port = $port{$server};
    $calls = 0;
    my ($raw, $err) = refused_exchange($port, $bytes);
    subtest "$name -> $status" => sub {
        ok !$err, 'the server closed the connection (EOF)' or diag "sent: " . show($bytes) . "\n$err";
        $raw //= '';
        my @r = parse_responses($raw);
        is scalar(@r), 1, 'exactly one response: the pipelined request was never answered'
            or diag 'got: ' . show(substr $raw, 0, 400);
        my $r = $r[0] // {};
        is $r->{status}, $status, "status $status" or diag 'sent: ' . show($bytes) . "\ngot: " . show(substr $raw, 0, 200);
        is $r->{header}{connection}, 'close', 'connection: close';
        like $r->{header}{'content-type'} // '', qr{\Atext/plain\b}, 'text/plain';
        ok defined $r->{header}{'content-length'} && $r->{header}{'content-length'} == length($r->{body} // ''),
            'content-length matches the body';
        ok length($r->{body} // '') > 0 && length($r->{body}) <= 100, 'a short body';
        ok !(grep { $_->{garbage} || $_->{incomplete} } @r), 'no stray bytes';
        is $calls, 0, 'the app was not called';
        is app_calls_after_probe($port), 1, 'a following request reaches the app, and only it';
    };
}

# A row that must be accepted: the app is called once and answers.
sub check_accepted {
    my ($name, $server, $bytes, $path) = @_;
    $calls = 0;
    delete $seen{$path};
    my $raw = eval { raw_exchange($port{$server}, $bytes, until => qr/\r\n\r\n.*path=/s, idle => 1, timeout => 5)->get } // '';
    subtest "$name -> 200" => sub {
        my ($r) = parse_responses($raw);
        is $r->{status}, 200, 'status 200' or diag 'sent: ' . show($bytes) . "\ngot: " . show(substr $raw, 0, 200);
        is $calls, 1, 'the app was called once';
        ok $seen{$path}, "the app saw $path";
    };
}

my $LONG = 'a' x 8300;
my @rows = (
    # [ name, server, bytes, status ]
    # request line
    [ 'request line without a target',           default => "GET\r\nHost: x\r\n\r\n", 400 ],
    [ 'request line with an extra field',         default => "GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400 ],
    [ 'request line with two spaces',             default => "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400 ],
    [ 'space inside the target',                  default => "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400 ],
    [ 'control char in the target',               default => "GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400 ],
    [ 'request line starts with a space',         default => " GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400 ],
    [ 'HTTP/0.9 style line (no version)',         default => "GET /\r\nHost: x\r\n\r\n", 400 ],
    [ 'garbage bytes instead of a request',       default => "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400 ],
    # method
    [ 'method with @',                            default => "G\@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400 ],
    [ 'method with a control char',               default => "GE\x7fT / HTTP/1.1\r\nHost: x\r\n\r\n", 400 ],
    [ 'method with brackets',                     default => "[GET] / HTTP/1.1\r\nHost: x\r\n\r\n", 400 ],
    # version
    [ 'version HTTP/2.0 on the request line',     default => "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400 ],
    [ 'version HTTP/1.x',                         default => "GET / HTTP/1.x\r\nHost: x\r\n\r\n", 400 ],
    [ 'version HTTP/1.1x',                        default => "GET / HTTP/1.1x\r\nHost: x\r\n\r\n", 400 ],
    [ 'version in lower case',                    default => "GET / http/1.1\r\nHost: x\r\n\r\n", 400 ],
    [ 'version HTTX/1.1',                         default => "GET / HTTX/1.1\r\nHost: x\r\n\r\n", 400 ],
    # header syntax
    [ 'header without a colon',                   default => "GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", 400 ],
    [ 'empty header name',                        default => "GET / HTTP/1.1\r\nHost: x\r\n: value\r\n\r\n", 400 ],
    [ 'space between name and colon',             default => "GET / HTTP/1.1\r\nHost: x\r\nX-Thing : v\r\n\r\n", 400 ],
    [ 'tab between name and colon',               default => "GET / HTTP/1.1\r\nHost: x\r\nX-Thing\t: v\r\n\r\n", 400 ],
    [ 'space before colon on Transfer-Encoding',  default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400 ],
    [ 'obs-fold (line starts with a space)',      default => "GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n", 400 ],
    [ 'obs-fold (line starts with a tab)',        default => "GET / HTTP/1.1\r\nHost: x\r\nX-A: one\r\n\ttwo\r\n\r\n", 400 ],
    [ 'space in a header name',                   default => "GET / HTTP/1.1\r\nHost: x\r\nX A: v\r\n\r\n", 400 ],
    [ 'bare CR in a value',                       default => "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400 ],
    [ 'NUL in a value',                           default => "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400 ],
    [ 'vertical tab in a value',                  default => "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x0bb\r\n\r\n", 400 ],
    [ 'form feed in a value',                     default => "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x0cb\r\n\r\n", 400 ],
    [ 'escape char in a value',                   default => "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x1bb\r\n\r\n", 400 ],
    [ 'control char in a name',                   default => "GET / HTTP/1.1\r\nHost: x\r\nX-\x01A: v\r\n\r\n", 400 ],
    [ 'NUL in a name',                            default => "GET / HTTP/1.1\r\nHost: x\r\nX-\x00A: v\r\n\r\n", 400 ],
    [ 'separator in a name',                      default => "GET / HTTP/1.1\r\nHost: x\r\nX(A): v\r\n\r\n", 400 ],
    # Host
    [ 'HTTP/1.1 without Host',                    default => "GET / HTTP/1.1\r\nX-A: v\r\n\r\n", 400 ],
    [ 'HTTP/1.1 with two Host headers',           default => "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400 ],
    # framing
    [ 'Content-Length and Transfer-Encoding',     default => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400 ],
    [ 'Transfer-Encoding and Content-Length',     default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400 ],
    [ 'duplicate identical Content-Length',       default => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400 ],
    [ 'differing Content-Length',                 default => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400 ],
    [ 'Content-Length list "5, 5"',               default => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello", 400 ],
    [ 'Content-Length abc',                       default => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400 ],
    [ 'Content-Length +5',                        default => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400 ],
    [ 'Content-Length -1',                        default => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400 ],
    [ 'Content-Length "1 2"',                     default => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 2\r\n\r\nab", 400 ],
    [ 'Content-Length 0x10',                      default => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", 400 ],
    [ 'empty Content-Length',                     default => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", 400 ],
    [ 'Content-Length over 10 digits',            default => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413 ],
    [ 'Content-Length over 2147483647',           default => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2147483648\r\n\r\n", 413 ],
    [ 'chunked not last (chunked, gzip)',         default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400 ],
    [ 'chunked not last over two headers',        default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 400 ],
    [ 'unknown transfer coding gzip',             default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501 ],
    [ 'unknown transfer coding xchunked',         default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", 501 ],
    # chunked body (sent whole with the head, so it is decoded before the app would run)
    [ 'invalid chunk size zz',                    default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400 ],
    [ 'negative chunk size',                      default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400 ],
    [ 'chunk size followed by junk',              default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5 junk\r\nhello\r\n0\r\n\r\n", 400 ],
    [ 'chunk extension with a control char',      default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a\x01b\r\nhello\r\n0\r\n\r\n", 400 ],
    [ 'chunk extension with a bare LF',           default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n", 400 ],
    [ 'chunk extension with an empty name',       default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;=v\r\nhello\r\n0\r\n\r\n", 400 ],
    [ 'chunk extension with an open quote',       default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"open\r\nhello\r\n0\r\n\r\n", 400 ],
    [ 'chunk size line ending in a bare LF',      default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400 ],
    [ 'missing CRLF after chunk data',            default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400 ],
    [ 'chunk data longer than its size',          default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", 400 ],
    [ 'chunk size with 8 significant hex digits', default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n12345678\r\nhello\r\n0\r\n\r\n", 413 ],
    [ 'chunk size fffffffffffff',                 default => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffff\r\nhello\r\n0\r\n\r\n", 413 ],
    # limits
    [ 'request target over 8192 bytes',           default => "GET /$LONG HTTP/1.1\r\nHost: x\r\n\r\n", 414 ],
    [ 'header block over 8192 (one header)',      default => "GET / HTTP/1.1\r\nHost: x\r\nX-Big: $LONG\r\n\r\n", 431 ],
    [ 'header block over 8192 (many headers)',    default => "GET / HTTP/1.1\r\nHost: x\r\n" . join('', map { "X-H$_: " . ('v' x 150) . "\r\n" } 1 .. 60) . "\r\n", 431 ],
    [ 'header block over max_header_size 1024',   hs1024  => "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " . ('b' x 1100) . "\r\n\r\n", 431 ],
    [ '101 headers (default max_header_count)',   default => "GET / HTTP/1.1\r\nHost: x\r\n" . join('', map { "X-H$_: v\r\n" } 1 .. 100) . "\r\n", 431 ],
    [ '11 headers with max_header_count 10',      hc10    => "GET / HTTP/1.1\r\nHost: x\r\n" . join('', map { "X-H$_: v\r\n" } 1 .. 10) . "\r\n", 431 ],
    [ 'Content-Length over max_body_size 100',    mb100   => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" . ('p' x 101), 413 ],
    [ 'whole chunked body over max_body_size 100', mb100  => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" . ('c' x 64) . "\r\n40\r\n" . ('c' x 64) . "\r\n0\r\n\r\n", 413 ],
);

for my $row (@rows) {
    my ($name, $server, $bytes, $status) = @$row;
    check_refusal($name, $server, $bytes, $status);
}

# The same server answers just-inside-the-limit requests: the limits above are the limits, not a refusal of everything.
my @accepted = (
    # [ name, server, bytes, path ]
    [ 'HTTP/1.0 without Host',                 default => "GET /ten HTTP/1.0\r\n\r\n", '/ten' ],
    [ 'leading zeros in Content-Length',       default => "POST /zeros HTTP/1.1\r\nHost: x\r\nContent-Length: 005\r\n\r\nhello", '/zeros' ],
    [ 'request target of 8000 bytes',          default => "GET /" . ('t' x 7990) . " HTTP/1.1\r\nHost: x\r\n\r\n", '/' . ('t' x 7990) ],
    [ 'header block of about 7000 bytes',      default => "GET /big-ok HTTP/1.1\r\nHost: x\r\nX-Big: " . ('a' x 7000) . "\r\n\r\n", '/big-ok' ],
    [ '100 headers',                           default => "GET /hundred HTTP/1.1\r\nHost: x\r\n" . join('', map { "X-H$_: v\r\n" } 1 .. 99) . "\r\n", '/hundred' ],
    [ 'header block of 900 with limit 1024',   hs1024  => "GET /small HTTP/1.1\r\nHost: x\r\nX-Big: " . ('b' x 900) . "\r\n\r\n", '/small' ],
    [ '10 headers with max_header_count 10',   hc10    => "GET /ten-h HTTP/1.1\r\nHost: x\r\n" . join('', map { "X-H$_: v\r\n" } 1 .. 9) . "\r\n", '/ten-h' ],
    [ 'Content-Length equal to max_body_size', mb100   => "POST /exact HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" . ('p' x 100), '/exact' ],
    [ 'chunk extensions are allowed',          default => "POST /ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value;flag\r\nhello\r\n0\r\n\r\n", '/ext' ],
);
for my $row (@accepted) {
    check_accepted(@$row);
}

subtest 'max_body_size 0 means unlimited' => sub {
    $calls = 0;
    my $body = 'u' x 200;
    my $raw = raw_exchange($port{mb0}, "POST /unlimited HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 200\r\n\r\n$body", timeout => 5)->get;
    my ($r) = parse_responses($raw);
    is $r->{status}, 200, 'a 200-byte Content-Length body is accepted';
    is $r->{body}, 'path=/unlimited query= len=200', 'and the app read all of it';

    $raw = raw_exchange($port{mb0}, "POST /unlimited-chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nc8\r\n$body\r\n0\r\n\r\n", timeout => 5)->get;
    ($r) = parse_responses($raw);
    is $r->{status}, 200, 'a 200-byte chunked body is accepted';
    is $r->{body}, 'path=/unlimited-chunked query= len=200', 'and the app read all of it';

    # The same bodies on the server limited to 100 bytes are refused.
    $raw = raw_exchange($port{mb100}, "POST /limited HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 200\r\n\r\n$body", timeout => 5)->get;
    ($r) = parse_responses($raw);
    is $r->{status}, 413, 'the same body is 413 where max_body_size is 100';
    is $calls, 2, 'the app ran for the two accepted requests only';
};

subtest 'chunked body over max_body_size discovered while streaming: 413, app gets http.disconnect' => sub {
    $calls = 0;
    delete $events{'/stream-up'};
    delete $reasons{'/stream-up'};
    my $head = "POST /stream-up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    my $piece = "28\r\n" . ('s' x 40) . "\r\n";    # 40 bytes each: the third crosses 100
    my $raw = raw_exchange($port{mb100}, undef,
        chunks => [ $head, $piece, $piece, $piece, $piece, "0\r\n\r\n" ], gap => 0.15, timeout => 8)->get;
    my @r = parse_responses($raw);
    is scalar(@r), 1, 'one response, then the server closed';
    is $r[0]{status}, 413, 'status 413';
    is $r[0]{header}{connection}, 'close', 'connection: close';
    like $r[0]{header}{'content-type'} // '', qr{\Atext/plain}, 'text/plain';
    is $r[0]{header}{'content-length'}, length $r[0]{body}, 'content-length matches';
    ok wait_for(sub { $events{'/stream-up'} && @{ $events{'/stream-up'} } && $events{'/stream-up'}[-1]{type} ne 'http.request' }, 3),
        'the app finished reading';
    is $calls, 1, 'the app was called (the head was fine)';
    my @ev = @{ $events{'/stream-up'} // [] };
    is $ev[-1]{type}, 'http.disconnect', "the app's \$receive yielded http.disconnect";
    my @data = grep { $_->{type} eq 'http.request' } @ev;
    ok !(grep { !$_->{more} } @data), 'no http.request event claimed the body was complete';
    my $delivered = join '', map { $_->{body} } @data;
    ok length($delivered) <= 100, 'no more than max_body_size bytes reached the app (' . length($delivered) . ')';
    is $reasons{'/stream-up'}, 'body_too_large', 'disconnect reason body_too_large';
};

subtest 'absolute-form target gives path and query from the URL' => sub {
    my $raw = raw_exchange($port{default}, "GET http://example.com/a/b?x=1 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    my ($r) = parse_responses($raw);
    is $r->{status}, 200, 'status';
    is $seen{'/a/b'}{path}, '/a/b', "scope path '/a/b'";
    is $seen{'/a/b'}{query_string}, 'x=1', "scope query_string 'x=1'";
    is $seen{'/a/b'}{raw_path}, '/a/b', 'raw_path without scheme and authority';
    is $r->{body}, 'path=/a/b query=x=1 len=0', 'the app answered from them';

    $raw = raw_exchange($port{default}, "GET http://example.com HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n", timeout => 5)->get;
    ($r) = parse_responses($raw);
    is $r->{body}, 'path=/ query= len=0', 'an authority-only URL is the root path';
};

subtest 'HTTP/1.0 keep-alive only when asked' => sub {
    my $c = open_conn($port{default});
    $c->write("GET /ka1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    my @r = parse_responses($c->read_until(responses_done(1))->get);
    is $r[0]{status}, 200, 'answered';
    is $r[0]{version}, '1.1', 'server speaks HTTP/1.1';
    ok defined $r[0]{header}{'content-length'}, 'known length';
    is $r[0]{header}{connection}, 'keep-alive', 'labelled connection: keep-alive';
    ok $c->stays_open(0.3), 'the socket stays open';
    $c->take;
    $c->write("GET /ka2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    @r = parse_responses($c->read_until(responses_done(1))->get);
    like $r[0]{body}, qr{path=/ka2}, 'a second request is served on the same socket';
    $c->close;

    $c = open_conn($port{default});
    $c->write("GET /ka3 HTTP/1.0\r\n\r\n");
    my $raw = eval { $c->wait_eof(3)->get };
    ok defined $raw, 'without Connection: keep-alive the server closes after the response';
    @r = parse_responses($raw // '');
    like $r[0]{body} // '', qr{path=/ka3}, 'after a complete response';
    isnt $r[0]{header}{connection} // '', 'keep-alive', 'not labelled keep-alive';
    $c->close;
};

subtest 'a streamed HTTP/1.0 response is close-delimited and the connection closes' => sub {
    for my $req ("GET /stream10 HTTP/1.0\r\n\r\n", "GET /stream10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n") {
        my $label = $req =~ /keep-alive/ ? 'client asked for keep-alive' : 'plain HTTP/1.0';
        my $c = open_conn($port{default});
        $c->write($req);
        my $raw = eval { $c->wait_eof(3)->get };
        ok defined $raw, "$label: EOF after the body";
        $raw //= $c->buffer;
        my ($head, $body) = split_head($raw);
        $head //= '';
        unlike $head, qr/\r\ncontent-length:/i, "$label: no content-length";
        unlike $head, qr/\r\ntransfer-encoding:/i, "$label: never chunked on HTTP/1.0";
        is $body, 'part1,part2', "$label: the body is everything up to the close";
        like $head, qr/\r\nconnection: close\r\n/i, "$label: labelled connection: close (PAGI-SPEC 3.1.4)";
        $c->close;
    }
};

stop_server($_) for @servers;
done_testing;
