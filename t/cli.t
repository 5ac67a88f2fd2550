# bin/pagi-server as users run it: a child process on a free port, driven
# over real sockets, stopped with SIGTERM; plus its error paths and exit codes.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server;    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(free_port start_cli stop_cli run_cli http_get_cli slurp wait_until stderr_of);
use File::Temp ();
use IO::Socket::IP;
use Time::HiRes qw(time);

my $HELLO = 'examples/01-hello-http/app.pl';
my $dir = File::Temp->newdir;

sub write_file {
    my ($name, $content) = @_;
    my $path = "$dir/$name";
    open my $fh, '>', $path or die "write $path: $!";
    print {$fh} $content;
    close $fh;
    return $path;
}

# An app body answering 200 text/plain with the Perl expression $expr.
sub app_code {
    my ($expr) = @_;
    return <<"PERL";
    my (\$scope, \$receive, \$send) = \@_;
    die "Unsupported scope type: \$scope->{type}\\n" if \$scope->{type} ne 'http';
    await \$send->({ type => 'http.response.start', status => 200,
                     headers => [ [ 'content-type', 'text/plain' ] ] });
    await \$send->({ type => 'http.response.body', body => $expr });
PERL
}

my $coderef_app = write_file('coderef.pl', <<"PERL");
use strict; use warnings; use Future::AsyncAwait;
my \$app = async sub {
@{[ app_code('"coderef app on $scope->{server}[0]:$scope->{server}[1]"') ]}};
\$app;
PERL

my $named_app = write_file('named.pl', <<"PERL");
use strict; use warnings; use Future::AsyncAwait;
async sub app {
@{[ app_code('"named app"') ]}}
1;
PERL

# Serves $app (a file) with extra @args; returns (response to GET $path, exit status after TERM, child).
sub serve_once {
    my ($args, $path, %opt) = @_;
    my $child = start_cli($args, %opt);
    ok($child->{ready}, "server is up: pagi-server @{ $child->{args} }") or diag(stderr_of($child));
    my $res = $child->{ready} ? http_get_cli($child->{port}, $path // '/') : undef;
    my $status = stop_cli($child);
    diag("no response; stderr: $child->{stderr}") unless $res;
    return ($res, $status, $child);
}

subtest '--app FILE serves the hello example' => sub {
    my ($res, $status) = serve_once([ '--app', $HELLO ]);
    is($res && $res->{status}, 200, 'status 200');
    is($res && $res->{body}, "Hello, World!\n", 'body');
    is($status, 0, 'exit status 0 after SIGTERM');
};

subtest 'the app file as a positional argument' => sub {
    my ($res, $status) = serve_once([$HELLO]);
    is($res && $res->{body}, "Hello, World!\n", 'served');
    is($status, 0, 'exit status 0');
    my ($res2) = serve_once([ '-q', $HELLO, '--timeout', '5' ]);
    is($res2 && $res2->{body}, "Hello, World!\n", 'positional between options works too');
};

subtest '--host and --port (and -o / -p) choose where it listens' => sub {
    my $port = free_port();
    my $child = start_cli([ '--host', '127.0.0.1', '--port', $port, $coderef_app ], no_port => 1, port => $port);
    ok($child->{ready}, "listening on 127.0.0.1:$port") or diag(stderr_of($child));
    my $res = $child->{ready} && http_get_cli($port, '/');
    is($res && $res->{body}, "coderef app on 127.0.0.1:$port", 'the scope server address is the one asked for');
    is(stop_cli($child), 0, 'exit status 0');

    $port = free_port();
    $child = start_cli([ '-o', '127.0.0.1', '-p', $port, $coderef_app ], no_port => 1, port => $port);
    ok($child->{ready}, 'short options work') or diag(stderr_of($child));
    $res = $child->{ready} && http_get_cli($port, '/');
    is($res && $res->{body}, "coderef app on 127.0.0.1:$port", 'same answer');
    is(stop_cli($child), 0, 'exit status 0');
};

subtest 'an app file returning a coderef, and one defining async sub app' => sub {
    my ($res) = serve_once([$coderef_app]);
    like($res && $res->{body}, qr/\Acoderef app on 127\.0\.0\.1:\d+\z/, 'returned coderef is served');
    ($res) = serve_once([$named_app]);
    is($res && $res->{body}, 'named app', 'main::app is served when the file returns something else');
};

subtest '--quiet prints nothing on stderr' => sub {
    # Development mode logs a banner and an access line to stderr: the control.
    my $loud = start_cli([ '-E', 'development', $HELLO ]);
    ok($loud->{ready}, 'development server up') or diag(stderr_of($loud));
    my $res = http_get_cli($loud->{port}, '/loud');
    is($res && $res->{status}, 200, 'request served');
    ok(wait_until(sub { stderr_of($loud) =~ m{"GET /loud" 200} }, 3), 'without --quiet the access line is on stderr')
        or diag(stderr_of($loud));
    like(stderr_of($loud), qr/listening on/, 'and the banner');
    stop_cli($loud);

    my $quiet = start_cli([ '-E', 'development', '--quiet', $HELLO ]);
    ok($quiet->{ready}, 'quiet server up') or diag(stderr_of($quiet));
    $res = http_get_cli($quiet->{port}, '/quiet');
    is($res && $res->{body}, "Hello, World!\n", 'request served');
    ok(!wait_until(sub { length stderr_of($quiet) }, 0.5), 'nothing on stderr during the request');
    is(stop_cli($quiet), 0, 'exit status 0');
    is($quiet->{stderr}, '', 'nothing on stderr at shutdown either');
    is($quiet->{stdout}, '', 'nor on stdout');
};

subtest '--access-log FILE gets one line per request' => sub {
    my $log = "$dir/access.log";
    my $child = start_cli([ '--access-log', $log, $HELLO ]);
    ok($child->{ready}, 'server up') or diag(stderr_of($child));
    http_get_cli($child->{port}, '/logged/path?x=1');
    ok(wait_until(sub { slurp($log) =~ /\n/ }, 3), 'the log file got a line');
    my @lines = split /\n/, slurp($log);
    is(scalar @lines, 1, 'exactly one line');
    like($lines[0] // '', qr{^127\.0\.0\.1 - - \[[^\]]+\] "GET /logged/path\?x=1" 200 }, 'with client, method, path, query and status');
    stop_cli($child);
    unlike($child->{stderr}, qr/logged/, 'the line did not go to stderr');
};

subtest '--no-access-log turns the development access log off' => sub {
    my $child = start_cli([ '-E', 'development', '--no-access-log', $HELLO ]);
    ok($child->{ready}, 'server up') or diag(stderr_of($child));
    my $res = http_get_cli($child->{port}, '/unlogged');
    is($res && $res->{status}, 200, 'request served');
    ok(wait_until(sub { stderr_of($child) =~ /listening on/ }, 2), 'the banner is still printed');
    stop_cli($child);
    unlike($child->{stderr}, qr/unlogged/, 'but no access line');
};

subtest '-I DIR and -M MODULE' => sub {
    my $libdir = File::Temp->newdir;
    open my $fh, '>', "$libdir/TestCLIGreeting.pm" or die $!;
    print {$fh} "package TestCLIGreeting; use strict; use Exporter 'import'; our \@EXPORT_OK = ('greeting');\n"
        . "our \$LOADED_AT = 'never'; sub greeting { 'hello from TestCLIGreeting' } 1;\n";
    close $fh;

    my $needs_lib = write_file('needs-lib.pl', <<"PERL");
use strict; use warnings; use Future::AsyncAwait;
use TestCLIGreeting;
async sub app {
@{[ app_code('TestCLIGreeting::greeting()') ]}}
\\&app;
PERL
    my ($res) = serve_once([ '-I', "$libdir", $needs_lib ]);
    is($res && $res->{body}, 'hello from TestCLIGreeting', '-I DIR makes the module loadable by the app');
    ($res) = serve_once([ '--lib', "$libdir", $needs_lib ]);
    is($res && $res->{body}, 'hello from TestCLIGreeting', '--lib DIR too');
    my $without = run_cli([ '--port', free_port(), $needs_lib ]);
    is($without->{exit}, 2, 'without -I the app fails to load (exit 2)');
    like($without->{stderr}, qr/Error loading/, 'with "Error loading"');

    # The app only works if the module was loaded (and imported) before it.
    my $needs_preload = write_file('needs-preload.pl', <<"PERL");
use strict; use warnings; use Future::AsyncAwait;
die "TestCLIGreeting was not loaded before the app\\n" unless \$INC{'TestCLIGreeting.pm'};
async sub app {
@{[ app_code('main::greeting() . " (preloaded)"') ]}}
\\&app;
PERL
    ($res) = serve_once([ '-I', "$libdir", '-M', 'TestCLIGreeting=greeting', $needs_preload ]);
    is($res && $res->{body}, 'hello from TestCLIGreeting (preloaded)', '-M MODULE=imports loads and imports before the app');
    my $no_m = run_cli([ '-I', "$libdir", '--port', free_port(), $needs_preload ]);
    is($no_m->{exit}, 2, 'without -M the same app fails');
    like($no_m->{stderr}, qr/was not loaded before the app/, 'for the reason the app gives');
    my $bad_m = run_cli([ '-M', 'No::Such::Module::Here', $HELLO ]);
    is($bad_m->{exit}, 2, '-M of a missing module exits 2');
    like($bad_m->{stderr}, qr/cannot load module No::Such::Module::Here/, 'naming the module');
};

subtest 'SIGTERM: graceful exit with status 0' => sub {
    my $child = start_cli([ '-E', 'development', $HELLO ]);
    ok($child->{ready}, 'server up') or diag(stderr_of($child));
    my $res = http_get_cli($child->{port}, '/');
    is($res && $res->{status}, 200, 'serving');
    my $t0 = time;
    my $status = stop_cli($child, 8);
    is($status, 0, 'exit status 0 (not killed by the signal)');
    ok(!$child->{killed}, 'TERM was enough');
    cmp_ok(time - $t0, '<', 5, 'it exited promptly');
    like($child->{stderr}, qr/SIGTERM/, 'it logged the signal');
    ok(!IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $child->{port}, Timeout => 1),
        'the port is closed afterwards');
};

subtest 'startup errors: exit code and a clear message' => sub {
    my $r = run_cli([ "$dir/does-not-exist.pl" ]);
    is($r->{exit}, 2, 'missing app file: exit 2');
    like($r->{stderr}, qr/not found: .*does-not-exist\.pl/, 'says "not found" with the file name');

    my $hash = write_file('hash.pl', "my \$h = { not => 'code' };\n\$h;\n");
    $r = run_cli([$hash]);
    is($r->{exit}, 2, 'file returning a hashref: exit 2');
    like($r->{stderr}, qr/must return a coderef, got: HASH/, 'says it must return a coderef and what it got');

    my $broken = write_file('broken.pl', "use strict;\nmy \$app = sub { ;\n");
    $r = run_cli([$broken]);
    is($r->{exit}, 2, 'syntax error: exit 2');
    like($r->{stderr}, qr/Error loading .*broken\.pl/, 'says "Error loading" with the file name');
    like($r->{stderr}, qr/syntax error|Missing right curly/, 'and passes on perl\'s reason');

    my $busy = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 5) or die "bind: $@";
    my $port = $busy->sockport;
    $r = run_cli([ '--host', '127.0.0.1', '--port', $port, $HELLO ]);
    is($r->{exit}, 2, 'busy port: exit 2');
    like($r->{stderr}, qr/Cannot listen on 127\.0\.0\.1:$port/, 'says it cannot listen, with the address');
    close $busy;

    $r = run_cli([ '--http2', '--port', free_port(), $HELLO ]);
    is($r->{exit}, 2, '--http2 (not built yet): exit 2');
    like($r->{stderr}, qr/'http2' is not supported yet/, 'says the option is not supported yet');

    $r = run_cli([ '--no-such-option', $HELLO ]);
    is($r->{exit}, 2, 'unknown option: exit 2');
    like($r->{stderr}, qr/no-such-option/, 'names the option');
    like($r->{stderr}, qr/pagi-server --help/, 'and points at --help');

    $r = run_cli([ '--port', 'eighty', $HELLO ]);
    is($r->{exit}, 2, 'non-numeric port: exit 2');

    $r = run_cli(['no-such-app.pl']);
    is($r->{exit}, 2, 'missing app file: exit 2');
    like($r->{stderr}, qr/App file not found: no-such-app\.pl/, 'names the missing file');
};

subtest '--help and --version' => sub {
    my $r = run_cli(['--help']);
    is($r->{exit}, 0, '--help exits 0');
    like($r->{stdout}, qr/\AUsage: pagi-server /, 'prints usage on stdout');
    like($r->{stdout}, qr/--port N/, 'documenting --port');
    like($r->{stdout}, qr/--access-log FILE/, 'and --access-log');
    is($r->{stderr}, '', 'nothing on stderr');

    require PAGI::Server;
    for my $flag ('--version', '-v') {
        $r = run_cli([$flag]);
        is($r->{exit}, 0, "$flag exits 0");
        like($r->{stdout}, qr/\Apagi-server \(PAGI-Server-Native\) \Q$PAGI::Server::VERSION\E\n/, "$flag prints the version");
        like($r->{stdout}, qr/^engine: PAGI::Server::Native /m, "$flag names the engine");
    }
};

done_testing;
