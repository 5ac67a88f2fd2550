# The access log (PAGI-SPEC 5.4 and 8): one line per finished request, in
# each preset format, custom atoms and json, with bytes and duration; where
# it goes by default (STDERR, nowhere when quiet or in production) and how
# the command line turns it on and off.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use PAGI::Test::Server qw(loop start_server stop_server parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn);
use PAGI::Test::CLI qw(start_cli stop_cli http_raw slurp stderr_of);
use Future::AsyncAwait;
use File::Temp ();
use JSON::PP ();
use Time::Local ();
use PAGI::Server;

my $loop = loop();
my $dir = File::Temp->newdir;
my $MON = qr/(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)/;
my $TIME = qr{\d{2}/$MON/\d{4}:\d{2}:\d{2}:\d{2} \+0000};
my %MONTH = do { my $i = 0; map { $_ => $i++ } qw(Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec) };

# Epoch seconds of a `%t` time.
sub log_time_epoch {
    my ($t) = @_;
    my ($d, $mon, $y, $h, $m, $s) = $t =~ m{^(\d{2})/(\w{3})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) \+0000$} or return;
    return Time::Local::timegm($s, $m, $h, $d, $MONTH{$mon}, $y);
}

# The test app: /bytes/N answers N bytes, /stream/N streams N bytes in three
# parts, /empty answers an empty body, /slow/MS sleeps first, /wait starts a
# response, sends 'started' and then waits 1.5 s; anything else answers 'hello'.
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
    my $path = $scope->{path};
    my $status = $path =~ m{/status/(\d{3})} ? $1 : 200;
    my $body = 'hello';
    if ($path =~ m{^/slow/(\d+)}) { await $loop->delay_future(after => $1 / 1000) }
    if ($path =~ m{^/bytes/(\d+)}) { $body = 'b' x $1 }
    if ($path eq '/empty') { $body = '' }
    if ($path =~ m{^/stream/(\d+)}) {
        my $n = $1;
        await $send->({ type => 'http.response.start', status => $status, headers => [ [ 'content-type', 'text/plain' ] ] });
        my $third = int($n / 3);
        for my $len ($third, $third, $n - 2 * $third) {
            await $send->({ type => 'http.response.body', body => 's' x $len, more => 1 });
        }
        await $send->({ type => 'http.response.body', body => '' });
        return;
    }
    if ($path =~ m{^/wait}) {
        await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
        await $send->({ type => 'http.response.body', body => 'started', more => 1 });
        await $loop->delay_future(after => 1.5);
        await $send->({ type => 'http.response.body', body => 'late' });
        return;
    }
    if ($path =~ m{^/gone-early}) {
        await $loop->delay_future(after => 1.5);
    }
    await $send->({ type => 'http.response.start', status => $status,
                    headers => [ [ 'content-type', 'text/plain' ], [ 'content-length', length $body ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};

my $file_n = 0;
# A server logging to a fresh temp file: ($server, $port, $path).
sub log_server {
    my (%opt) = @_;
    my $path = "$dir/access-" . ++$file_n . '.log';
    open my $fh, '>>', $path or die "open $path: $!";
    $fh->autoflush(1);
    my ($server, $port) = start_server(app => $app, access_log => $fh, %opt);
    return ($server, $port, $path);
}

sub log_lines { my $text = slurp($_[0]); return grep { length } split /\n/, $text }

# Sends one request (extra header lines in @headers) and waits for the reply.
sub request {
    my ($port, $target, @headers) = @_;
    my $conn = open_conn($port);
    $conn->write("GET $target HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        . join('', map {"$_\r\n"} @headers) . "\r\n");
    my $raw = $conn->wait_eof(5)->get;
    return (parse_responses($raw))[0];
}

# Waits until the log has $n lines; returns them.
sub wait_lines {
    my ($path, $n) = @_;
    wait_for(sub { log_lines($path) >= $n }, 5);
    return log_lines($path);
}

subtest 'clf (default): one line per request once it completes' => sub {
    my ($server, $port, $path) = log_server();
    is(scalar log_lines($path), 0, 'nothing is logged before a request');
    my $before = time;
    my $res = request($port, '/caf%C3%A9/a%20b?x=1&y=two');
    is($res->{status}, 200, 'request answered');
    my @lines = wait_lines($path, 1);
    is(scalar @lines, 1, 'one line for one request');
    like($lines[0], qr{\A127\.0\.0\.1 - - \[($TIME)\] "GET /caf%C3%A9/a%20b\?x=1&y=two" 200 \d+\.\d{3}s\z},
        'client ip, time, method, raw path with query, status, duration with 3 decimals and "s"');
    my ($t) = $lines[0] =~ /\[([^\]]+)\]/;
    my $epoch = log_time_epoch($t);
    ok(defined $epoch && $epoch >= $before - 1 && $epoch <= time + 1, "the time is now, in UTC ($t)");

    request($port, '/second');
    request($port, '/slow/300');
    @lines = wait_lines($path, 3);
    is(scalar @lines, 3, 'three requests, three lines');
    like($lines[1], qr{"GET /second" 200 }, 'a path without a query has no "?"');
    my ($d) = $lines[2] =~ / (\d+\.\d{3})s\z/;
    ok(defined $d && $d >= 0.29 && $d < 5, "the duration covers the app's 300 ms (${\($d // 'none')}s)");

    # A keep-alive connection: a line per request, each once it is complete.
    my $conn = open_conn($port);
    $conn->write("GET /ka1 HTTP/1.1\r\nHost: x\r\n\r\nGET /ka2 HTTP/1.1\r\nHost: x\r\n\r\n");
    @lines = wait_lines($path, 5);
    is(scalar @lines, 5, 'two keep-alive requests, two more lines');
    like($lines[3], qr{"GET /ka1" 200}, 'the first keep-alive request');
    like($lines[4], qr{"GET /ka2" 200}, 'the second');
    $conn->close;
    stop_server($server);
};

subtest 'common and combined' => sub {
    my ($server, $port, $path) = log_server(access_log_format => 'common');
    request($port, '/bytes/42?q=1');
    request($port, '/status/404');
    my @lines = wait_lines($path, 2);
    like($lines[0], qr{\A127\.0\.0\.1 - - \[$TIME\] "GET /bytes/42\?q=1 HTTP/1\.1" 200 42\z}, 'common: request line, status, bytes');
    like($lines[1], qr{\A127\.0\.0\.1 - - \[$TIME\] "GET /status/404 HTTP/1\.1" 404 5\z}, 'common: a 404');
    stop_server($server);

    ($server, $port, $path) = log_server(access_log_format => 'combined');
    request($port, '/c?a=b', 'Referer: http://example.test/from', 'User-Agent: TestAgent/1.0 (x)');
    request($port, '/bare');
    @lines = wait_lines($path, 2);
    like($lines[0], qr{\A127\.0\.0\.1 - - \[$TIME\] "GET /c\?a=b HTTP/1\.1" 200 5 "http://example\.test/from" "TestAgent/1\.0 \(x\)"\z},
        'combined: Referer and User-Agent from the request');
    like($lines[1], qr{\A127\.0\.0\.1 - - \[$TIME\] "GET /bare HTTP/1\.1" 200 5 "-" "-"\z}, 'combined: "-" when they are missing');
    stop_server($server);
};

subtest 'behind a trusted proxy the forwarded client is logged' => sub {
    my ($server, $port, $path) = log_server(access_log_format => 'common', proxy_headers => 1,
        forwarded_allow_ips => '127.0.0.1');
    request($port, '/via-proxy', 'X-Forwarded-For: 203.0.113.7');
    request($port, '/direct');
    my @lines = wait_lines($path, 2);
    like($lines[0], qr{\A203\.0\.113\.7 - - \[$TIME\] "GET /via-proxy HTTP/1\.1" 200}, 'the X-Forwarded-For client');
    like($lines[1], qr{\A127\.0\.0\.1 - - }, 'the peer when no header says otherwise');
    stop_server($server);

    ($server, $port, $path) = log_server(access_log_format => 'common', proxy_headers => 1,
        forwarded_allow_ips => '10.0.0.1');
    request($port, '/untrusted', 'X-Forwarded-For: 203.0.113.7');
    @lines = wait_lines($path, 1);
    like($lines[0], qr{\A127\.0\.0\.1 - - }, 'an untrusted peer cannot choose what is logged');
    stop_server($server);
};

subtest 'tiny' => sub {
    my ($server, $port, $path) = log_server(access_log_format => 'tiny');
    request($port, '/t?z=9');
    request($port, '/slow/200');
    my @lines = wait_lines($path, 2);
    like($lines[0], qr{\AGET /t\?z=9 200 \d+ms\z}, 'method, path with query, status, microseconds then "ms"');
    my ($us) = $lines[1] =~ / (\d+)ms\z/;
    ok(defined $us && $us >= 190_000 && $us < 5_000_000, "the number is microseconds (${\($us // 'none')} for a 200 ms request)");
    stop_server($server);
};

subtest 'custom format with every atom' => sub {
    my $format = '%h|%l|%u|%t|%r|%m|%U|%q|%H|%s|%b|%B|%d|%D|%T|%{X-Custom}i|%{x-absent}i|%%|100%%';
    my ($server, $port, $path) = log_server(access_log_format => $format);
    request($port, '/slow/250/status/203?k=v&n=1', 'X-Custom: custom value');
    request($port, '/plain');
    my @lines = wait_lines($path, 2);
    my @f = split /\|/, $lines[0], -1;
    is(scalar @f, 19, 'nineteen fields') or diag($lines[0]);
    is($f[0], '127.0.0.1', '%h client ip');
    is($f[1], '-', '%l is -');
    is($f[2], '-', '%u is -');
    like($f[3], qr/\A$TIME\z/, '%t time');
    is($f[4], 'GET /slow/250/status/203?k=v&n=1 HTTP/1.1', '%r request line');
    is($f[5], 'GET', '%m method');
    is($f[6], '/slow/250/status/203', '%U path');
    is($f[7], '?k=v&n=1', '%q query with "?"');
    is($f[8], 'HTTP/1.1', '%H protocol');
    is($f[9], '203', '%s status');
    is($f[10], '5', '%b bytes');
    is($f[11], '5', '%B bytes');
    like($f[12], qr/\A\d+\.\d{3}\z/, '%d seconds with 3 decimals');
    like($f[13], qr/\A\d+\z/, '%D whole microseconds');
    is($f[14], '0', '%T whole seconds');
    cmp_ok($f[12], '>=', 0.24, '%d covers the 250 ms the app slept');
    cmp_ok($f[13], '>=', 240_000, '%D covers it in microseconds');
    cmp_ok(abs($f[13] / 1e6 - $f[12]), '<=', 0.0011, '%d and %D agree');
    is($f[15], 'custom value', '%{X-Custom}i request header, any case');
    is($f[16], '-', '%{...}i of a missing header is -');
    is($f[17], '%', '%% is a percent sign');
    is($f[18], '100%', 'literal text around atoms is kept');
    my @g = split /\|/, $lines[1], -1;
    is($g[7], '', '%q is empty without a query');
    stop_server($server);
};

subtest 'json: one object per line' => sub {
    my ($server, $port, $path) = log_server(access_log_format => 'json');
    request($port, '/j/x%2Fy?a=1', 'Referer: r.example', 'User-Agent: ua/2');
    request($port, '/empty');
    my @lines = wait_lines($path, 2);
    is(scalar @lines, 2, 'two lines');
    my @obj = map { my $l = $_; eval { JSON::PP->new->decode($l) } } @lines;
    is(ref $obj[0], 'HASH', 'the first line is a JSON object') or diag($lines[0]);
    is(ref $obj[1], 'HASH', 'the second line is a JSON object') or diag($lines[1]);
    my $o = $obj[0] // {};
    like($o->{time} // '', qr/\A$TIME\z/, 'time');
    is($o->{client}, '127.0.0.1', 'client');
    is($o->{method}, 'GET', 'method');
    is($o->{path}, '/j/x%2Fy', 'path (raw)');
    is($o->{query}, 'a=1', 'query');
    is($o->{protocol}, 'HTTP/1.1', 'protocol');
    is($o->{status}, 200, 'status');
    is($o->{bytes}, 5, 'bytes');
    ok(defined $o->{duration} && $o->{duration} =~ /\A\d+(?:\.\d+)?(?:e-?\d+)?\z/i && $o->{duration} < 5, 'duration in seconds');
    ok(!ref $o->{status} && $lines[0] =~ /"status":200\b/, 'status is a JSON number');
    ok($lines[0] =~ /"bytes":5\b/, 'bytes is a JSON number');
    is(($obj[1] // {})->{bytes}, 0, 'an empty body logs bytes 0');
    is(($obj[1] // {})->{query}, '', 'no query gives an empty query');
    stop_server($server);
};

subtest 'bytes sent: %b and %B' => sub {
    my ($server, $port, $path) = log_server(access_log_format => '%U %s %b %B');
    request($port, '/bytes/1234');
    request($port, '/stream/1234');
    request($port, '/empty');
    request($port, '/bytes/70000');
    my @lines = wait_lines($path, 4);
    is($lines[0], '/bytes/1234 200 1234 1234', 'a 1234-byte body logs 1234 with %b and %B');
    is($lines[1], '/stream/1234 200 1234 1234', 'a streamed (chunked) body counts body bytes, not framing');
    is($lines[2], '/empty 200 - 0', 'an empty body logs - with %b and 0 with %B');
    is($lines[3], '/bytes/70000 200 70000 70000', 'a body above the write watermark');
    stop_server($server);
};

subtest 'a client that disconnects mid-request is logged too' => sub {
    my ($server, $port, $path) = log_server(access_log_format => '%U %s %B');
    my $conn = open_conn($port);
    $conn->write("GET /wait HTTP/1.1\r\nHost: x\r\n\r\n");
    $conn->read_until(qr/started/, 5)->get;
    $conn->close;
    my @lines = wait_lines($path, 1);
    is(scalar @lines, 1, 'one line for the abandoned request');
    is($lines[0], '/wait 200 7', 'with the status and the bytes sent before the client left');

    my $conn2 = open_conn($port);
    $conn2->write("GET /gone-early HTTP/1.1\r\nHost: x\r\n\r\n");
    PAGI::Test::Server::loop()->delay_future(after => 0.2)->get;
    $conn2->close;
    @lines = wait_lines($path, 2);
    is(scalar @lines, 2, 'a request left before any response is logged too');
    is($lines[1], '/gone-early - 0', 'with status - (no response was started) and no bytes');
    PAGI::Test::Server::loop()->delay_future(after => 1.6)->get;
    is(scalar log_lines($path), 2, 'no second line when the apps finish later');
    stop_server($server);
};

subtest 'an invalid format croaks at new, naming the atom' => sub {
    my $server = eval { PAGI::Server->new(app => $app, port => 0, quiet => 1, access_log_format => '%h %Z %s') };
    ok(!$server, 'new refuses the format');
    like($@, qr/access_log_format/, 'the message names the option');
    like($@, qr/%Z/, 'and the unknown atom %Z');
};

# Runs $code with fd 2 going to a temp file; returns what was written there.
sub capture_stderr {
    my ($code) = @_;
    my $tmp = File::Temp->new;
    open my $saved, '>&', \*STDERR or die "dup STDERR: $!";
    open STDERR, '>', $tmp->filename or die "reopen STDERR: $!";
    STDERR->autoflush(1);
    my $ok = eval { $code->(); 1 };
    my $error = $@;
    open STDERR, '>&', $saved or die "restore STDERR: $!";
    die $error unless $ok;
    return slurp($tmp->filename);
}

subtest 'where the log goes by default: STDERR; nowhere with access_log => undef or quiet' => sub {
    my $stderr = capture_stderr(sub {
        my ($server, $port) = start_server(app => $app, quiet => 0);
        request($port, '/to-stderr?v=1');
        wait_for(sub { 0 }, 0.3);
        stop_server($server);
    });
    like($stderr, qr{^127\.0\.0\.1 - - \[$TIME\] "GET /to-stderr\?v=1" 200 \d+\.\d{3}s$}m, 'without access_log, lines go to STDERR');

    $stderr = capture_stderr(sub {
        my ($server, $port) = start_server(app => $app, quiet => 0, access_log => undef);
        request($port, '/undef-log');
        wait_for(sub { 0 }, 0.3);
        stop_server($server);
    });
    unlike($stderr, qr{/undef-log}, 'access_log => undef writes no line');

    $stderr = capture_stderr(sub {
        my ($server, $port) = start_server(app => $app, quiet => 1);
        request($port, '/quiet');
        request($port, '/quiet2');
        wait_for(sub { 0 }, 0.3);
        stop_server($server);
    });
    is($stderr, '', 'quiet => 1 without access_log writes nothing at all to STDERR');

    my ($server, $port, $path) = log_server(quiet => 1);
    request($port, '/quiet-but-explicit');
    my @lines = wait_lines($path, 1);
    like($lines[0] // '', qr{"GET /quiet-but-explicit" 200}, 'quiet => 1 keeps an explicit access_log');
    stop_server($server);
};

# ---------------------------------------------------------------------------
# pagi-server

my $cli_app = "$dir/cli-app.pl";
{
    open my $fh, '>', $cli_app or die "write $cli_app: $!";
    print {$fh} <<'PERL';
use strict; use warnings; use Future::AsyncAwait;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'http';
    await $send->({ type => 'http.response.start', status => 200,
                    headers => [ [ 'content-type', 'text/plain' ], [ 'content-length', 3 ] ] });
    await $send->({ type => 'http.response.body', body => 'cli' });
};
$app;
PERL
    close $fh;
}

# Runs pagi-server with @args, makes the requests, stops it; returns the child (stderr in {stderr}).
sub cli_run {
    my ($args, @targets) = @_;
    my $child = start_cli([ '--app', $cli_app, @$args ]);
    ok($child->{ready}, "pagi-server @$args is up") or do { stop_cli($child); diag($child->{stderr}); return $child };
    for my $t (@targets) {
        my $raw = http_raw($child->{port}, "GET $t HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        like($raw, qr{\AHTTP/1\.1 200 }, "GET $t answered");
    }
    my $status = stop_cli($child);
    is($status, 0, 'exit status 0 after SIGTERM');
    return $child;
}

subtest 'CLI: --access-log FILE, --no-access-log, --access-log-format json' => sub {
    my $file = "$dir/cli.log";
    my $child = cli_run([ '--access-log', $file ], '/one?x=1', '/two');
    my @lines = log_lines($file);
    is(scalar @lines, 2, '--access-log FILE: two lines for two requests');
    like($lines[0] // '', qr{\A127\.0\.0\.1 - - \[$TIME\] "GET /one\?x=1" 200 \d+\.\d{3}s\z}, 'in clf');
    like($lines[1] // '', qr{"GET /two" 200 }, 'the second request');
    unlike($child->{stderr}, qr{"GET /}, 'and nothing on stderr');

    $child = cli_run([ '-E', 'development', '--no-access-log' ], '/silent');
    unlike($child->{stderr}, qr{/silent}, '--no-access-log: no line on stderr, even in development mode');

    my $json_file = "$dir/cli.json.log";
    cli_run([ '--access-log', $json_file, '--access-log-format', 'json' ], '/j?k=v');
    @lines = log_lines($json_file);
    is(scalar @lines, 1, '--access-log-format json: one line');
    my $o = eval { JSON::PP->new->decode($lines[0] // '') };
    is(ref $o, 'HASH', 'a JSON object') or diag($lines[0]);
    is_deeply([ @{ $o // {} }{qw(method path query status bytes client)} ], [ 'GET', '/j', 'k=v', 200, 3, '127.0.0.1' ],
        'with method, path, query, status, bytes and client');
};

subtest 'CLI: -E production logs nothing by default, -E development logs to stderr' => sub {
    my $child = cli_run([ '-E', 'production' ], '/prod');
    unlike($child->{stderr}, qr{/prod}, '-E production: no access log');
    $child = cli_run([ '-E', 'development' ], '/dev?d=1');
    like($child->{stderr}, qr{^127\.0\.0\.1 - - \[$TIME\] "GET /dev\?d=1" 200 \d+\.\d{3}s$}m, '-E development: a clf line on stderr');
    $child = cli_run([], '/no-env');
    unlike($child->{stderr}, qr{/no-env}, 'without -E or PAGI_ENV and no terminal (production): no access log');
};

done_testing;
