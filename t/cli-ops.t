# pagi-server operations flags (issue 6, PAGI-SPEC section 8): uvicorn-style
# aliases, --root-path, --proxy-headers with and without a trusted peer,
# -e, --pid, --daemonize, --user/--group, --reload, TLS flag checks,
# --help documenting every flag, --version, and one-line errors with exit 2.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(free_port start_cli stop_cli run_cli http_raw http_get_cli slurp wait_until stderr_of);
use PAGI::Server;    # its VERSION is in the default server header
use PAGI::Server::Config;
use PAGI::Server::Runner;
use PAGI::Server::ProxyHeaders;
use File::Temp ();
use IO::Select;
use IO::Socket::IP;
use POSIX ();
use Time::HiRes qw(time sleep);

$SIG{PIPE} = 'IGNORE';
my $dir = File::Temp->newdir;

sub write_file {
    my ($name, $content) = @_;
    my $path = "$dir/$name";
    open my $fh, '>', $path or die "write $path: $!";
    print {$fh} $content;
    close $fh;
    return $path;
}

# Answers with what the scope says about where the request came from.
my $scope_app = write_file('scope.pl', <<'PERL');
use strict; use warnings; use Future::AsyncAwait; use IO::Async::Loop;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
    if ($scope->{path} eq '/never') {
        print STDERR "app: in /never\n";
        await IO::Async::Loop->new->delay_future(after => 60);
        return;
    }
    my $body = join ' ',
        'client=' . ($scope->{client} ? join(',', @{ $scope->{client} }) : 'none'),
        "scheme=$scope->{scheme}",
        'server=' . join(',', map { $_ // 'undef' } @{ $scope->{server} }),
        "root_path=$scope->{root_path}",
        "uid=$< euid=$> gid=" . (0 + $() . " pid=$$";
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};
$app;
PERL

sub get {
    my ($port, $path, @headers) = @_;
    my ($r) = parse_responses(http_raw($port, "GET $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nConnection: close\r\n"
        . join('', map { "$_\r\n" } @headers) . "\r\n"));
    return $r && defined $r->{status} ? $r : undef;
}

# get_from(...) → ($response, $client_port): the same GET, also returning the
# local port of the client socket, so an unforwarded scope client can be
# compared with what the client really was.
sub get_from {
    my ($port, $path, @headers) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5)
        or die "connect to 127.0.0.1:$port: $@";
    syswrite $sock, "GET $path HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nConnection: close\r\n"
        . join('', map { "$_\r\n" } @headers) . "\r\n";
    my ($buf, $sel, $deadline) = ('', IO::Select->new($sock), time + 10);
    while ((my $left = $deadline - time) > 0) {
        last unless $sel->can_read($left);
        sysread($sock, $buf, 65536, length $buf) or last;
    }
    my ($r) = parse_responses($buf);
    return ($r && defined $r->{status} ? $r : undef, $sock->sockport);
}

sub field { my ($r, $name) = @_; ($r && $r->{body} // '') =~ /(?:^| )$name=(\S*)/ ? $1 : undef }

sub serve {
    my ($args, %opt) = @_;
    my $child = start_cli([ '--no-access-log', @$args ], %opt);
    ok($child->{ready}, "pagi-server @$args is up") or diag(stderr_of($child));
    return $child;
}

sub one_line_error {
    my ($r, $code, $like, $name) = @_;
    is($r->{exit}, $code, "$name: exit $code");
    like($r->{stderr}, $like, "$name: message");
    is(scalar(() = $r->{stderr} =~ /\n/g), 1, "$name: one line") or diag($r->{stderr});
}

subtest 'aliases set the same options as the canonical flags' => sub {
    my %pairs = (
        'limit-concurrency'         => [ 'max-connections',  'max_connections',   7 ],
        'timeout-keep-alive'        => [ 'timeout',          'timeout',           3 ],
        'timeout-graceful-shutdown' => [ 'shutdown-timeout', 'shutdown_timeout',  4 ],
        'limit-max-requests'        => [ 'max-requests',     'max_requests',      9 ],
        'ws-max-size'               => [ 'max-ws-frame-size', 'max_ws_frame_size', 1024 ],
    );
    for my $alias (sort keys %pairs) {
        my ($flag, $option, $value) = @{ $pairs{$alias} };
        my $a = PAGI::Server::Runner->server_options("--$alias", $value);
        my $c = PAGI::Server::Runner->server_options("--$flag", $value);
        is_deeply($a, { $option => $value }, "--$alias sets $option");
        is_deeply($a, $c, "like --$flag");
    }
    my %flags = map { $_->{long} => $_ } PAGI::Server::Runner->flags;
    is($flags{$_}{alias_of}, $pairs{$_}[0], "--$_ is documented as an alias") for sort keys %pairs;
    is_deeply(PAGI::Server::Runner->server_options('-w', 1), { workers => 0 }, '-w 1 is a single process');
    is_deeply(PAGI::Server::Runner->server_options('--workers', 4), { workers => 4 }, '--workers 4');
    is_deeply(PAGI::Server::Runner->server_options('--socket', '/tmp/x.sock', '--socket-mode', '0660'),
        { socket => '/tmp/x.sock', socket_mode => 0660 }, '--socket-mode is octal');
    is_deeply(PAGI::Server::Runner->server_options(qw(--listen 127.0.0.1:8080 --listen [::1]:8081 --listen ./a.sock --listen unix:/b --socket-mode 0600)),
        { listen => [ { host => '127.0.0.1', port => 8080 }, { host => '::1', port => 8081 },
                      { socket => './a.sock', socket_mode => 0600 }, { socket => '/b', socket_mode => 0600 } ] },
        '--listen specs (socket mode on the Unix ones)');
    is_deeply(PAGI::Server::Runner->server_options(qw(--fd 3)), { fd => 3 }, '--fd N');
    is_deeply(PAGI::Server::Runner->server_options(qw(--fd 3 --fd 4)), { listen => [ { fd => 3 }, { fd => 4 } ] }, '--fd N --fd M');
    is_deeply(PAGI::Server::Runner->server_options(qw(--proxy-headers --forwarded-allow-ips 10.0.0.0/8 --root-path /api)),
        { proxy_headers => 1, forwarded_allow_ips => '10.0.0.0/8', root_path => '/api' }, 'proxy flags');
    is_deeply(PAGI::Server::Runner->server_options(qw(--proxy-headers --forwarded-header --forwarded-host --forwarded-allow-ips), '10.0.0.1, unix:'),
        { proxy_headers => 1, forwarded_header => 1, forwarded_host => 1, forwarded_allow_ips => '10.0.0.1, unix:' },
        '--forwarded-header, --forwarded-host, unix: in --forwarded-allow-ips');
    is_deeply(PAGI::Server::Runner->server_options('--proxy-headers'), { proxy_headers => 1 },
        'without --forwarded-allow-ips the option is left to its default (FORWARDED_ALLOW_IPS, else 127.0.0.1,::1)');
    is_deeply(PAGI::Server::Runner->server_options(qw(--ssl-cert c.pem --ssl-key k.pem --ssl-ca ca.pem --ssl-verify-client require --ssl-min-version TLSv1_3 --ssl-ciphers A:B)),
        { ssl => { cert_file => 'c.pem', key_file => 'k.pem', ca_file => 'ca.pem', verify_client => 'require',
                   min_version => 'TLSv1_3', cipher_list => 'A:B' } }, 'TLS flags');
};

subtest 'aliases at work: --limit-concurrency, --timeout-keep-alive, --timeout-graceful-shutdown' => sub {
    my $child = serve([ '--limit-concurrency', 1, '--timeout-keep-alive', 1, $scope_app ]);
    return unless $child->{ready};
    my $port = $child->{port};
    # The readiness probe's connection may still hold the one slot for a
    # moment: retry until a keep-alive connection is served (it then holds it).
    my ($first, $buf, $sel);
    wait_until(sub {
        $first = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5) or die $@;
        syswrite $first, "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        ($buf, $sel) = ('', IO::Select->new($first));
        sysread($first, $buf, 65536) if $sel->can_read(5);
        $buf =~ m{\AHTTP/1\.1 200};
    }, 15);
    like($buf, qr{\AHTTP/1\.1 200}, 'a keep-alive connection is served');
    my $second = get($port, '/');
    is($second && $second->{status}, 503, '--limit-concurrency 1: a second connection gets 503');
    my $t0 = time;
    my $eof = $sel->can_read(5) && !sysread($first, my $more, 65536);
    my $took = time - $t0;
    ok($eof, '--timeout-keep-alive 1: the idle connection is closed');
    cmp_ok($took, '<', 2.5, sprintf('after about a second (%.2fs)', $took));
    is(stop_cli($child), 0, 'exit 0');

    $child = serve([ '--timeout-graceful-shutdown', 1, $scope_app ]);
    return unless $child->{ready};
    my $never = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $child->{port}, Timeout => 5) or die $@;
    syswrite $never, "GET /never HTTP/1.1\r\nHost: x\r\n\r\n";
    ok(wait_until(sub { stderr_of($child) =~ /app: in \/never/ }, 15), 'the request is in the app');
    $t0 = time;
    is(stop_cli($child, 10), 0, '--timeout-graceful-shutdown 1: exit 0');
    $took = time - $t0;
    cmp_ok($took, '>=', 0.9, sprintf('after waiting for the request in flight (%.2fs)', $took));
    cmp_ok($took, '<', 4, 'but soon after the 1 s grace');
};

subtest '--loop: the app runs on that loop, even one it asked for while loading' => sub {
    # The app sleeps on IO::Async::Loop->new, called while the file loads:
    # it can only answer if that loop is the one pagi-server runs.
    my $app = write_file('loop.pl', <<'PERL');
use strict; use warnings; use Future::AsyncAwait; use IO::Async::Loop;
my $loop = IO::Async::Loop->new;
async sub { my ($s, $r, $send) = @_; die "no\n" unless $s->{type} eq 'http';
  await $loop->delay_future(after => 0.01);
  await $send->({ type => 'http.response.start', status => 200, headers => [] });
  await $send->({ type => 'http.response.body', body => ref($loop) . ' ' . ref(IO::Async::Loop->new) }) };
PERL
    for my $type (qw(Poll Select)) {
        my $child = serve([ '--loop', $type, $app ]);
        next unless $child->{ready};
        my $r = get($child->{port}, '/');
        is($r && $r->{body}, "IO::Async::Loop::$type IO::Async::Loop::$type", "--loop $type: the app's loop is a $type loop, and runs");
        is(stop_cli($child), 0, "--loop $type: exit 0");
    }
    one_line_error(run_cli([ '--loop', 'NoSuchLoop', $app ]), 2,
        qr/\Apagi-server: --loop NoSuchLoop: cannot load that loop class: Can't locate IO\/Async\/Loop\/NoSuchLoop\.pm/, 'an unknown --loop');
};

subtest '--root-path' => sub {
    my $child = serve([ '--root-path', '/api', $scope_app ]);
    return unless $child->{ready};
    is(field(get($child->{port}, '/x'), 'root_path'), '/api', 'scope root_path is /api');
    stop_cli($child);
    my $r = run_cli([ '--root-path', 'api/', $scope_app ]);
    one_line_error($r, 2, qr/\Apagi-server: option 'root_path' must be empty or start with/, 'a bad --root-path');
};

subtest '--proxy-headers with and without a trusted peer' => sub {
    my @xf = ('X-Forwarded-For: 203.0.113.7', 'X-Forwarded-Proto: https', 'X-Forwarded-Host: example.com');
    my $plain = serve([$scope_app]);
    return unless $plain->{ready};
    my ($r, $client_port) = get_from($plain->{port}, '/', @xf);
    is(field($r, 'client'), "127.0.0.1,$client_port", 'without --proxy-headers the headers are ignored');
    is(field($r, 'scheme'), 'http', 'scheme stays http');
    stop_cli($plain);

    my $trusted = serve([ '--proxy-headers', $scope_app ]);
    return unless $trusted->{ready};
    my $port = $trusted->{port};
    $r = get($port, '/', @xf);
    is(field($r, 'client'), '203.0.113.7,0', 'from 127.0.0.1 (trusted by default): client from X-Forwarded-For');
    is(field($r, 'scheme'), 'https', 'scheme from X-Forwarded-Proto');
    like(field($r, 'server') // '', qr/\A127\.0\.0\.1,\d+\z/, 'X-Forwarded-Host is ignored without --forwarded-host');
    $r = get($port, '/', 'Forwarded: for="[2001:db8::1]:4711";proto=https;host="ex.org:8443"', @xf);
    is(field($r, 'client'), '203.0.113.7,0', 'a Forwarded header is ignored without --forwarded-header');
    $r = get($port, '/', 'X-Forwarded-For: 198.51.100.9, 127.0.0.1');
    is(field($r, 'client'), '198.51.100.9,0', 'a trusted hop in the chain is skipped');
    is(field($r, 'scheme'), 'http', 'no proto header: scheme unchanged');
    stop_cli($trusted);

    my $standard = serve([ '--proxy-headers', '--forwarded-header', '--forwarded-host', $scope_app ]);
    return unless $standard->{ready};
    $r = get($standard->{port}, '/', 'Forwarded: for="[2001:db8::1]:4711";proto=https;host="ex.org:8443"', @xf);
    is(field($r, 'client'), '2001:db8::1,4711', '--forwarded-header: IPv6 client with port from Forwarded');
    is(field($r, 'scheme'), 'https', 'its proto');
    is(field($r, 'server'), 'ex.org,8443', '--forwarded-host: its host, with port');
    stop_cli($standard);

    my $untrusted = serve([ '--proxy-headers', '--forwarded-allow-ips', '10.0.0.0/8,192.0.2.1', $scope_app ]);
    return unless $untrusted->{ready};
    ($r, $client_port) = get_from($untrusted->{port}, '/', @xf);
    is(field($r, 'client'), "127.0.0.1,$client_port", 'from a peer not in --forwarded-allow-ips: client unchanged');
    is(field($r, 'scheme'), 'http', 'scheme unchanged');
    is(field($r, 'server'), "127.0.0.1,$untrusted->{port}", 'server unchanged');
    stop_cli($untrusted);

    my $r2 = run_cli([ '--proxy-headers', '--forwarded-allow-ips', 'not-an-ip', $scope_app ]);
    one_line_error($r2, 2, qr/forwarded_allow_ips.*not-an-ip/, 'a bad --forwarded-allow-ips');
    one_line_error(run_cli([ '--forwarded-host', $scope_app ]), 2, qr/option 'forwarded_host' needs 'proxy_headers'/,
        '--forwarded-host without --proxy-headers');
};

subtest 'the proxy-headers wrapper (no sockets)' => sub {
    my $seen;
    my $inner = sub { $seen = $_[0]; Future->done };
    my $wrap = PAGI::Server::ProxyHeaders->wrap($inner, '10.0.0.0/8, ::1');
    my %base = (type => 'http', scheme => 'http', client => [ '10.1.2.3', 5555 ], server => [ '10.9.9.9', 80 ]);
    my $scope = { %base, headers => [ [ 'x-forwarded-for', '1.2.3.4, 10.0.0.2' ], [ 'x-forwarded-proto', 'https' ] ] };
    $wrap->($scope, sub { }, sub { });
    is_deeply($seen->{client}, [ '1.2.3.4', 0 ], 'client from the right-most untrusted hop');
    is($seen->{scheme}, 'https', 'scheme');
    isnt($seen, $scope, 'a copy reaches the app');
    is($scope->{scheme}, 'http', 'the original scope is untouched');
    $wrap->({ %base, client => [ '8.8.8.8', 1 ], headers => [ [ 'x-forwarded-for', '1.2.3.4' ] ] }, sub { }, sub { });
    is_deeply($seen->{client}, [ '8.8.8.8', 1 ], 'an untrusted peer is believed about nothing');
    $wrap->({ %base, type => 'websocket', scheme => 'ws', headers => [ [ 'x-forwarded-proto', 'https' ] ] }, sub { }, sub { });
    is($seen->{scheme}, 'wss', 'websocket scopes get wss');
    my %unix = (type => 'http', scheme => 'http', server => [ '/run/a.sock', undef ], headers => [ [ 'x-forwarded-for', '5.6.7.8' ] ]);
    $wrap->({%unix}, sub { }, sub { });
    ok(!exists $seen->{client}, 'a Unix-socket peer (no client) is not trusted by default');
    PAGI::Server::ProxyHeaders->wrap($inner, 'unix:')->({%unix}, sub { }, sub { });
    is_deeply($seen->{client}, [ '5.6.7.8', 0 ], "... and is with 'unix:'");
    $wrap->({ %base, headers => [ [ 'x-forwarded-for', '10.0.0.7, 10.0.0.8' ] ] }, sub { }, sub { });
    is_deeply($seen->{client}, [ '10.0.0.7', 0 ], 'all hops trusted: the left-most');
    $wrap->({ %base, headers => [ [ 'x-forwarded-proto', 'gopher' ] ] }, sub { }, sub { });
    is($seen->{scheme}, 'http', 'an unknown proto is ignored');
    my $all = PAGI::Server::ProxyHeaders->wrap($inner, '*', forwarded_header => 1);
    $all->({ %base, client => [ '8.8.8.8', 1 ], headers => [ [ 'forwarded', 'for=192.0.2.60;proto=https;by=203.0.113.43' ] ] }, sub { }, sub { });
    is_deeply($seen->{client}, [ '192.0.2.60', 0 ], "'*' trusts any peer");
    $all->({ %base, client => [ '8.8.8.8', 1 ], headers => [ [ 'forwarded', 'for=192.0.2.60, for=unknown;proto=https' ] ] }, sub { }, sub { });
    is_deeply($seen->{client}, [ '8.8.8.8', 1 ], 'the nearest proxy does not know its client: the client is left alone');
    is($seen->{scheme}, 'https', '... and its proto still counts');
    $wrap->({ type => 'lifespan' }, sub { }, sub { });
    is($seen->{type}, 'lifespan', 'lifespan passes through');
    like(PAGI::Server::ProxyHeaders->check_trusted('10.0.0.0/33'), qr/prefix/, 'a bad prefix is refused');
};

subtest '-e CODE (with -M in scope)' => sub {
    my $code = 'async sub { my ($s, $r, $send) = @_; die "no\n" unless $s->{type} eq "http";'
        . ' await $send->({ type => "http.response.start", status => 200, headers => [] });'
        . ' await $send->({ type => "http.response.body", body => "inline $s->{path}" }) }';
    my $child = serve([ '-MFuture::AsyncAwait', '-e', $code ]);
    return unless $child->{ready};
    my $r = get($child->{port}, '/e');
    is($r && $r->{body}, 'inline /e', '-e app served; async came from -M');
    stop_cli($child);
    one_line_error(run_cli([ '-e', '42' ]), 2, qr/\Apagi-server: -e code must return a code reference, got: '42'\n\z/, '-e not returning code');
    one_line_error(run_cli([ '-e', 'sub {' ]), 2, qr/\Apagi-server: -e: .*(?:syntax error|Missing right curly)/, '-e with a syntax error');
};

subtest '--pid FILE: written, then removed at exit' => sub {
    my $pid_file = "$dir/server.pid";
    my $child = serve([ '--pid', $pid_file, $scope_app ]);
    return unless $child->{ready};
    # The listener is bound before the pid file is written (a busy port is
    # reported first), so an accepting port does not yet mean the file exists.
    ok(wait_until(sub { -s $pid_file }, 10), 'the pid file is written');
    is(slurp($pid_file), "$child->{pid}\n", 'the pid file holds the server pid');
    is(stop_cli($child), 0, 'exit 0');
    ok(!-e $pid_file, 'the pid file is gone');
    one_line_error(run_cli([ '--pid', "$dir/no/such/dir/x.pid", '--port', free_port(), $scope_app ]), 2,
        qr/\Apagi-server: cannot write pid file /, 'an unwritable pid file');
};

subtest '--daemonize' => sub {
    my $pid_file = "$dir/daemon.pid";
    my $log = "$dir/daemon.log";
    my $port = free_port();
    my $r = run_cli([ '--daemonize', '--pid', $pid_file, '--access-log', $log, '--port', $port, '--host', '127.0.0.1', $scope_app ]);
    is($r->{exit}, 0, 'the command returns at once, exit 0');
    ok(wait_until(sub { -s $pid_file }, 5), 'the daemon wrote its pid file');
    my ($daemon) = slurp($pid_file) =~ /\A(\d+)/;
    my $res;
    ok(wait_until(sub { $res = get($port, '/') }, 5), 'the daemon serves');
    is(field($res, 'pid'), $daemon, 'the pid file names the serving process');
    ok(wait_until(sub { slurp($log) =~ m{"GET /" 200} }, 3), 'its access log and output go to the --access-log file');
    like(slurp($log), qr/listening on/, 'including the banner');
    kill 'TERM', $daemon if $daemon;
    ok(wait_until(sub { !kill(0, $daemon) || _zombie($daemon) }, 10), 'it stops on TERM');
    ok(wait_until(sub { !-e $pid_file }, 3), 'and removes its pid file');
};

sub _zombie { open my $fh, '<', "/proc/$_[0]/stat" or return 1; my $s = <$fh>; substr($s, rindex($s, ')') + 2, 1) eq 'Z' }

subtest '--user/--group drop privileges after bind' => sub {
    plan skip_all => 'needs root' unless $> == 0;
    my ($uid, $gid) = (getpwnam('nobody'))[ 2, 3 ] or plan skip_all => 'no user nobody';
    my $port = free_port();
    # Port 80-style privilege is not needed to show it: the process runs as
    # nobody once it serves.
    chmod 0755, $dir;
    my $child = serve([ '--user', 'nobody', $scope_app ], port => $port);
    return unless $child->{ready};
    my $r = get($port, '/');
    is(field($r, 'uid'), $uid, 'real uid is nobody');
    is(field($r, 'euid'), $uid, 'effective uid is nobody');
    is(field($r, 'gid'), $gid, "gid is nobody's group");
    stop_cli($child);
    one_line_error(run_cli([ '--user', 'no-such-user-here', '--port', free_port(), $scope_app ]), 2,
        qr/\Apagi-server: --user: unknown user 'no-such-user-here'/, 'an unknown user');
};

subtest '--reload restarts on a change under the app directory' => sub {
    my $app_dir = File::Temp->newdir;
    my $file = "$app_dir/app.pl";
    my $write = sub {
        my ($text) = @_;
        open my $fh, '>', $file or die $!;
        print {$fh} "use Future::AsyncAwait; async sub { my (\$s, \$r, \$send) = \@_; die \"no\\n\" unless \$s->{type} eq 'http';"
            . " await \$send->({ type => 'http.response.start', status => 200, headers => [] });"
            . " await \$send->({ type => 'http.response.body', body => '$text' }) };\n";
        close $fh;
    };
    $write->('version 1');
    my $child = serve([ '--reload', $file ]);
    return unless $child->{ready};
    my $r = get($child->{port}, '/');
    is($r && $r->{body}, 'version 1', 'serves the app');
    $write->('version 2');
    utime time + 2, time + 2, $file;    # a distinct mtime even on coarse file systems
    ok(wait_until(sub { my $x = get($child->{port}, '/'); $x && $x->{body} eq 'version 2' }, 10), 'serves the changed app after the edit')
        or diag(stderr_of($child));
    like(stderr_of($child), qr/app\.pl changed; restarting/, 'and said why it restarted');
    is(stop_cli($child, 10), 0, 'exit 0');
    ok(!get($child->{port}, '/'), 'nothing serves afterwards');
    one_line_error(run_cli([ '--reload', '--workers', 2, $file ]), 2, qr/--reload and --workers are exclusive/, '--reload with --workers');
};

subtest 'TLS flags are checked' => sub {
    one_line_error(run_cli([ '--ssl-cert', "$dir/c.pem", $scope_app ]), 2,
        qr/\Apagi-server: --ssl-cert and --ssl-key must be given together\n\z/, '--ssl-cert alone');
    one_line_error(run_cli([ '--ssl-cert', "$dir/missing-cert.pem", '--ssl-key', "$dir/missing-key.pem", $scope_app ]), 2,
        qr/cert_file '\Q$dir\E\/missing-cert\.pem' not found/, 'a missing certificate file, named');
    my $text = write_file('text.pem', "not really\n");
    one_line_error(run_cli([ '--ssl-cert', $text, '--ssl-key', $text, $scope_app ]), 2,
        qr/cert_file '\Q$text\E' does not contain a PEM certificate/, 'a certificate file that is not PEM');
    # Passes the construction checks (the engine parses the files when it starts).
    my $cert = write_file('cert.pem', "-----BEGIN CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\n");
    one_line_error(run_cli([ '--ssl-cert', $cert, '--ssl-key', $cert, '--ssl-verify-client', 'require', $scope_app ]), 2,
        qr/verify_client 'require' needs ca_file/, '--ssl-verify-client without --ssl-ca');
    one_line_error(run_cli([ '--ssl-cert', $cert, '--ssl-key', $cert, '--ssl-min-version', 'SSLv3', $scope_app ]), 2,
        qr/min_version must be TLSv1_2 or TLSv1_3/, 'a bad --ssl-min-version');
};

# What --help must show: every flag and its default, written out here rather
# than taken from PAGI::Server::Runner's table (which prints the help), so a
# changed default or a flag added, renamed or dropped fails this test until it
# is updated on purpose. undef: no default shown; 'alias of X' for aliases.
my @HELP_DEFAULTS = (
    [ '--app' => 'none: the current directory is served (PAGI::App::Directory)' ], [ '-e' => 'none' ], [ '-M' => 'none' ], [ '--lib' => 'none' ],
    [ '--server' => 'PAGI::Server' ],
    [ '--env' => 'PAGI_ENV, else development when STDIN is a terminal, else production' ],
    [ '--default-middleware' => 'on' ], [ '--future-xs' => 'off' ], [ '--reload' => 'off' ],
    [ '--host' => '127.0.0.1' ], [ '--port' => '5000' ], [ '--socket' => 'none' ],
    [ '--socket-mode' => 'from the umask' ], [ '--listen' => 'none' ], [ '--fd' => 'none' ],
    [ '--reuseport' => 'off' ], [ '--listener-backlog' => '2048' ],
    [ '--ssl-cert' => 'none' ], [ '--ssl-key' => 'none' ], [ '--ssl-ca' => 'none' ],
    [ '--ssl-verify-client' => 'none' ], [ '--ssl-min-version' => 'TLSv1_2' ],
    [ '--ssl-ciphers' => "the engine's defaults" ],
    [ '--workers' => '1 (single process)' ], [ '--max-requests' => '0' ],
    [ '--limit-max-requests' => 'alias of --max-requests' ], [ '--heartbeat-timeout' => '50' ],
    [ '--daemonize' => 'off' ], [ '--pid' => 'none' ], [ '--user' => 'none' ], [ '--group' => "USER's group" ],
    [ '--loop' => "IO::Async's choice" ],
    [ '--max-connections' => '0' ], [ '--limit-concurrency' => 'alias of --max-connections' ],
    [ '--max-body-size' => '10000000' ], [ '--max-header-size' => '8192' ], [ '--max-header-count' => '100' ],
    [ '--max-request-line-size' => '8192' ], [ '--max-ws-frame-size' => '16777216' ],
    [ '--ws-max-size' => 'alias of --max-ws-frame-size' ], [ '--max-receive-queue' => '1000' ],
    [ '--timeout' => '60' ], [ '--timeout-keep-alive' => 'alias of --timeout' ], [ '--header-timeout' => '30' ],
    [ '--body-timeout' => '60' ], [ '--request-timeout' => '0' ], [ '--shutdown-timeout' => '30' ],
    [ '--timeout-graceful-shutdown' => 'alias of --shutdown-timeout' ], [ '--ws-idle-timeout' => '0' ],
    [ '--sse-idle-timeout' => '0' ], [ '--ws-ping-interval' => '20' ], [ '--ws-ping-timeout' => '20' ],
    [ '--write-high-watermark' => '65536' ], [ '--write-low-watermark' => '16384' ],
    [ '--group-overflow' => 'drop' ], [ '--group-max-buffered' => '1048576' ],
    [ '--pubsub' => 'none (per process); $PAGI_PUBSUB when set' ], [ '--pubsub-prefix' => 'pagi:' ],
    [ '--sync-file-threshold' => '65536' ], [ '--lifespan' => 'auto' ], [ '--lifespan-startup-timeout' => '30' ],
    [ '--http2' => 'off' ],
    [ '--proxy-headers' => 'off' ], [ '--forwarded-allow-ips' => 'FORWARDED_ALLOW_IPS, else 127.0.0.1,::1' ],
    [ '--forwarded-header' => 'off' ], [ '--forwarded-host' => 'off' ], [ '--root-path' => 'empty' ],
    [ '--quiet' => 'off' ], [ '--access-log' => 'STDERR in development, off in production' ],
    [ '--no-access-log' => 'off' ], [ '--access-log-format' => 'clf' ], [ '--log-level' => 'info' ],
    [ '--validate-events' => 'on in development, else off' ],
    [ '--server-header' => "PAGI-Server-Native/$PAGI::Server::VERSION" ],
    [ '--version' => undef ], [ '--help' => undef ],
);

# The entries of --help: flag name (the long one when there is one) → the
# entry's text with its wrapping undone.
sub help_entries {
    my ($help) = @_;
    my (%entry, @order, $current);
    for my $line (split /\n/, $help) {
        if ($line =~ /\A(?: {2}-(\w)(?:, --(?:\[no-\])?([\w-]+))?| {6}--(?:\[no-\])?([\w-]+))(.*)\z/) {
            my $long = $2 // $3;
            $current = defined $long ? "--$long" : "-$1";
            push @order, $current;
            $entry{$current} = $4;
        }
        elsif ($current && $line =~ /\A {20,}(\S.*)\z/) { $entry{$current} .= " $1" }
        else { undef $current }
    }
    s/\s+/ /g, s/\A | \z//g for values %entry;
    return (\%entry, \@order);
}

subtest '--help documents every flag with its default' => sub {
    my $r = run_cli(['--help']);
    is($r->{exit}, 0, 'exit 0');
    my $help = $r->{stdout};
    like($help, qr/\AUsage: pagi-server /, 'usage first');
    my ($entry, $order) = help_entries($help);
    is_deeply($order, [ map { $_->[0] } @HELP_DEFAULTS ], 'the flags, in this order');
    for my $want (@HELP_DEFAULTS) {
        my ($flag, $default) = @$want;
        my $text = $entry->{$flag} // '';
        if (!defined $default) {
            unlike($text, qr/\(default:/, "$flag shows no default");
        }
        elsif ($default =~ /\Aalias of /) {
            like($text, qr/\A\S+ \Q$default\E\z/, "$flag: $default");
        }
        else {
            like($text, qr/\(default: \Q$default\E\)\z/, "$flag: default $default");
        }
    }
    # The short names, written out as well.
    my %short = (a => 'app', o => 'host', p => 'port', b => 'listener-backlog', w => 'workers', D => 'daemonize',
                 l => 'loop', q => 'quiet', v => 'version', I => 'lib', s => 'server', E => 'env');
    like($help, qr/^ {2}-\Q$_\E, --\Q$short{$_}\E\b/m, "-$_ is short for --$short{$_}") for sort keys %short;
    # Every server option an operator may set from the command line has a flag.
    my %flag_for = map { ($_->{option} // '') => 1 } PAGI::Server::Runner->flags;
    my %not_cli = map { $_ => 1 } qw(app access_log extensions ssl disable_tls listen fd socket_mode
        h2_max_concurrent_streams h2_initial_window_size h2_max_frame_size h2_enable_push
        h2_enable_connect_protocol h2_max_header_list_size h2_rst_rate_limit);
    my @no_flag = grep { !$flag_for{$_} && !$not_cli{$_} } PAGI::Server::Config->names;
    is("@no_flag", '', 'every other server option has a flag');
};

subtest '--version prints the dist and engine versions' => sub {
    require PAGI::Server;
    require PAGI::Server::Native;
    my $r = run_cli(['--version']);
    is($r->{exit}, 0, 'exit 0');
    like($r->{stdout}, qr/\Apagi-server \(PAGI-Server-Native\) \Q$PAGI::Server::VERSION\E\n/, 'the distribution version');
    like($r->{stdout}, qr/^engine: PAGI::Server::Native \Q$PAGI::Server::Native::VERSION\E\b/m, 'the engine version');
};

subtest 'errors are one line with exit code 2' => sub {
    one_line_error(run_cli([ '--no-such-flag', $scope_app ]), 2, qr/\Apagi-server: Unknown option: no-such-flag \(see pagi-server --help\)\n\z/, 'a bad flag');
    one_line_error(run_cli([ '--port', 'eighty', $scope_app ]), 2, qr/port.*eighty|eighty.*port/, 'a bad port value');
    one_line_error(run_cli(["$dir/nope.pl"]), 2, qr/\Apagi-server: App file not found: \S+nope\.pl\n\z/, 'a missing app file');
    my $busy = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 5) or die $@;
    my $port = $busy->sockport;
    one_line_error(run_cli([ '--host', '127.0.0.1', '--port', $port, $scope_app ]), 2,
        qr/\Apagi-server: Cannot listen on 127\.0\.0\.1:$port: .*in use/i, 'a busy port');
    one_line_error(run_cli([ '--workers', 2, '--host', '127.0.0.1', '--port', $port, $scope_app ]), 2,
        qr/Cannot listen on 127\.0\.0\.1:$port/, 'a busy port with workers');
    one_line_error(run_cli([ '--ws-idle-timeout', 5, $scope_app ]), 2, qr/'ws_idle_timeout' is not supported yet/, 'an option not built yet');
    one_line_error(run_cli([ '--socket-mode', '999', '--socket', "$dir/s", $scope_app ]), 2, qr/--socket-mode must be an octal mode/, 'a bad --socket-mode');
    my $fails = write_file('fails.pl', <<'PERL');
use Future::AsyncAwait;
async sub { my ($s, $r, $send) = @_; die "no\n" unless $s->{type} eq 'lifespan';
  await $r->(); await $send->({ type => 'lifespan.startup.failed', message => 'no database' }) };
PERL
    one_line_error(run_cli([ '--port', free_port(), $fails ]), 2, qr/\Apagi-server: Lifespan startup failed: no database\n\z/, 'lifespan startup failure');
};

done_testing;
