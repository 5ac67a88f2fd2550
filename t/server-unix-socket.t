# Listeners (issue 6, PAGI-SPEC 7.1/7.2): Unix-domain sockets (scope without
# client, server [path, undef], socket_mode, stale file replaced, file
# removed at shutdown), several listeners mixing TCP and Unix, inherited
# sockets passed with --fd / fd => N, and systemd socket activation
# (LISTEN_FDS/LISTEN_PID) with the test handing fd 3 to pagi-server itself.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses http_get);
use PAGI::Test::CLI qw(ROOT start_cli stop_cli run_cli http_get_cli slurp wait_until stderr_of);
use PAGI::Server;
use Future::AsyncAwait;
use Fcntl qw(F_GETFD F_SETFD FD_CLOEXEC);
use File::Temp ();
use IO::Async::Stream;
use IO::Select;
use IO::Socket::IP;
use IO::Socket::UNIX;
use POSIX ();
use Socket qw(SOCK_STREAM);
use Time::HiRes qw(time sleep);

my $loop = loop();
# Unix socket paths are limited to ~107 bytes: keep the directory short.
my $dir = File::Temp->newdir('pagi-XXXXXX', TMPDIR => 1);

# What the app saw, in one line: client, server, and whether LISTEN_FDS leaked.
my $describe = async sub {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
    my $client = exists $scope->{client} ? "$scope->{client}[0]" : 'none';
    my $server = join ',', map { $_ // 'undef' } @{ $scope->{server} || [] };
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body',
                    body => "client=$client server=$server listen_fds=" . ($ENV{LISTEN_FDS} // 'unset') });
};

# GET over a Unix socket on the shared loop (for in-process servers) → Future of the response.
sub unix_get {
    my ($path, $target) = @_;
    my $sock = IO::Socket::UNIX->new(Peer => $path, Type => SOCK_STREAM) or return Future->fail("connect $path: $!");
    my $done = $loop->new_future;
    my $buf = '';
    my $stream = IO::Async::Stream->new(
        handle      => $sock,
        on_read     => sub { my ($s, $in, $eof) = @_; $buf .= $$in; $$in = ''; $done->done($buf) if $eof && !$done->is_ready; 0 },
        on_read_eof => sub { $done->done($buf) unless $done->is_ready },
    );
    $loop->add($stream);
    $stream->write("GET $target HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    return Future->wait_any($done, $loop->delay_future(after => 5)->then_fail("timeout on $path"))
        ->on_ready(sub { $stream->close_now; $loop->remove($stream) if $stream->loop })
        ->then(sub { Future->done((parse_responses($_[0]))[0]) });
}

# Blocking GET over a Unix socket (for servers in child processes).
sub unix_get_blocking {
    my ($path, $target) = @_;
    my $sock = IO::Socket::UNIX->new(Peer => $path, Type => SOCK_STREAM) or return undef;
    syswrite $sock, "GET $target HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    my ($buf, $sel) = ('', IO::Select->new($sock));
    while ($sel->can_read(5)) { sysread($sock, $buf, 65536, length $buf) or last }
    my ($r) = parse_responses($buf);
    return $r;
}

# pagi-server on a Unix socket only (start_cli waits for a TCP port): ready
# once a request over the socket is answered.
sub start_unix_cli {
    my ($args, $path) = @_;
    my $child = PAGI::Test::CLI::_spawn($args);
    $child->{ready} = wait_until(sub { PAGI::Test::CLI::_exited($child) || (-S $path && unix_get_blocking($path, '/')) }, 10)
        && !defined $child->{status};
    return $child;
}

sub mode_of { (stat $_[0])[2] & 07777 }

sub no_cloexec {
    my ($fh) = @_;
    my $flags = fcntl($fh, F_GETFD, 0);
    fcntl($fh, F_SETFD, $flags & ~FD_CLOEXEC) or die "fcntl: $!";
}

my $app_file = "$dir/app.pl";
{
    open my $fh, '>', $app_file or die $!;
    print {$fh} <<'PERL';
use strict; use warnings; use Future::AsyncAwait;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
    my $client = exists $scope->{client} ? "$scope->{client}[0]" : 'none';
    my $server = join ',', map { $_ // 'undef' } @{ $scope->{server} || [] };
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body',
                    body => "client=$client server=$server listen_fds=" . ($ENV{LISTEN_FDS} // 'unset') });
};
$app;
PERL
    close $fh;
}

subtest 'socket => PATH: serves, scope without client, socket_mode, file removed at shutdown' => sub {
    my $path = "$dir/a.sock";
    my ($server) = start_server(app => $describe, socket => $path, socket_mode => 0660, port => undef, host => undef);
    ok(-S $path, 'the socket file exists');
    is(sprintf('%04o', mode_of($path)), '0660', 'with mode 0660');
    is($server->socket_path, $path, 'socket_path');
    is_deeply($server->listeners, [ { type => 'unix', path => $path } ], 'listeners');
    my $r = unix_get($path, '/x')->get;
    is($r && $r->{status}, 200, 'a request over the Unix socket is served');
    is($r && $r->{body}, "client=none server=$path,undef listen_fds=unset", 'no client in the scope; server is [path, undef]');
    stop_server($server);
    ok(!-e $path, 'the socket file is removed at shutdown');
};

subtest 'a stale socket file is replaced; other files and live sockets are not' => sub {
    my $path = "$dir/stale.sock";
    {
        my $old = IO::Socket::UNIX->new(Local => $path, Type => SOCK_STREAM, Listen => 1) or die "bind: $!";
        close $old;    # the file stays, nobody accepts on it
    }
    ok(-S $path, 'a stale socket file is left behind');
    my ($server) = start_server(app => $describe, socket => $path, port => undef, host => undef);
    my $r = unix_get($path, '/')->get;
    is($r && $r->{status}, 200, 'the server replaced it and serves');

    my $second = PAGI::Server->new(app => $describe, socket => $path, quiet => 1);
    $loop->add($second);
    ok(!eval { $second->listen->get; 1 }, 'a second server on the same live socket fails');
    like($@, qr/Cannot listen on unix:\Q$path\E: another server is listening there/, 'saying so');
    $loop->remove($second);
    $r = unix_get($path, '/')->get;
    is($r && $r->{status}, 200, 'the first server still serves');
    stop_server($server);

    my $file = "$dir/regular";
    open my $fh, '>', $file or die $!;
    close $fh;
    my $third = PAGI::Server->new(app => $describe, socket => $file, quiet => 1);
    $loop->add($third);
    ok(!eval { $third->listen->get; 1 }, 'a regular file is not replaced');
    like($@, qr/exists and is not a socket/, 'saying why');
    ok(-f $file, 'the file is still there');
    $loop->remove($third);
};

subtest 'listen => [TCP, Unix]: both serve' => sub {
    my $path = "$dir/multi.sock";
    my ($server) = start_server(app => $describe, listen => [ { host => '127.0.0.1', port => 0 }, { socket => $path, socket_mode => 0600 } ],
        host => undef, port => undef);
    my $port = $server->port;
    ok($port, "port is the TCP listener's ($port)");
    is($server->socket_path, $path, 'socket_path is the Unix one');
    is_deeply($server->listeners, [ { type => 'tcp', host => '127.0.0.1', port => $port }, { type => 'unix', path => $path } ],
        'listeners lists both, in order');
    is(sprintf('%04o', mode_of($path)), '0600', 'socket_mode applies to the Unix entry');
    my $tcp = http_get($port, '/')->get;
    is($tcp && $tcp->{body}, "client=127.0.0.1 server=127.0.0.1,$port listen_fds=unset", 'TCP: client and server addresses');
    my $unix = unix_get($path, '/')->get;
    is($unix && $unix->{body}, "client=none server=$path,undef listen_fds=unset", 'Unix: no client');
    stop_server($server);
    ok(!-e $path, 'the Unix socket file is removed');

    ok(!eval { PAGI::Server->new(app => $describe, listen => [ { socket => $path } ], port => 5000) }, 'listen with port croaks');
    like($@, qr/'listen' and 'port' are exclusive/, 'naming both');
    ok(!eval { PAGI::Server->new(app => $describe, listen => [ { sock => $path } ]) }, 'a bad listen entry croaks');
    like($@, qr/unexpected key/, 'naming the problem');
};

subtest 'fd => N in process, and --fd N on the command line' => sub {
    my $sock = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 16, ReuseAddr => 1) or die "bind: $@";
    my $port = $sock->sockport;
    my ($server) = start_server(app => $describe, fd => fileno($sock), host => undef, port => undef);
    is($server->port, $port, 'port comes from the inherited socket');
    is_deeply($server->listeners, [ { type => 'tcp', host => '127.0.0.1', port => $port } ], 'listeners');
    my $r = http_get($port, '/')->get;
    is($r && $r->{body}, "client=127.0.0.1 server=127.0.0.1,$port listen_fds=unset", 'served on the inherited socket');
    stop_server($server);

    # Over exec: the test binds, clears close-on-exec, and names the fd.
    my $tcp = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 16, ReuseAddr => 1) or die "bind: $@";
    no_cloexec($tcp);
    my $path = "$dir/fd.sock";
    my $unix = IO::Socket::UNIX->new(Local => $path, Type => SOCK_STREAM, Listen => 16) or die "bind: $!";
    no_cloexec($unix);
    my $child = start_cli([ '--no-access-log', '--fd', fileno($tcp), '--fd', fileno($unix), $app_file ],
        no_port => 1, port => $tcp->sockport);
    ok($child->{ready}, '--fd N --fd M: the server is up') or diag(stderr_of($child));
    my $res = http_get_cli($tcp->sockport, '/');
    is($res && $res->{body}, "client=127.0.0.1 server=127.0.0.1," . $tcp->sockport . ' listen_fds=unset', 'served on the inherited TCP socket');
    $res = unix_get_blocking($path, '/');
    is($res && $res->{body}, "client=none server=$path,undef listen_fds=unset", 'and on the inherited Unix socket');
    is(stop_cli($child), 0, 'exit 0');
    ok(-S $path, 'an inherited Unix socket file is not removed');

    my $bad = run_cli([ '--fd', 0, $app_file ]);
    is($bad->{exit}, 2, '--fd of something that is not a listening socket: exit 2');
    like($bad->{stderr}, qr/\Apagi-server: Cannot listen on fd 0: /, 'one line naming the fd');
    is(scalar(() = $bad->{stderr} =~ /\n/g), 1, 'exactly one line');
};

subtest 'systemd socket activation: LISTEN_FDS/LISTEN_PID, fd 3' => sub {
    my $sock = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 16, ReuseAddr => 1) or die "bind: $@";
    my $port = $sock->sockport;
    my $err = File::Temp->new;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        # As systemd does: the socket on fd 3, LISTEN_PID naming the process that execs.
        POSIX::dup2(fileno($sock), 3) or POSIX::_exit(126);
        $ENV{LISTEN_FDS} = 1;
        $ENV{LISTEN_PID} = $$;
        delete $ENV{PAGI_ENV};
        open STDIN, '<', '/dev/null';
        open STDERR, '>', $err->filename;
        open STDOUT, '>&', \*STDERR;
        chdir ROOT();
        { exec $^X, '-I' . ROOT() . '/lib', '-I' . ROOT() . '/blib/lib', '-I' . ROOT() . '/blib/arch',
            ROOT() . '/bin/pagi-server', '--no-access-log', $app_file }
        POSIX::_exit(127);
    }
    close $sock;    # only the child holds it now
    my $res;
    wait_until(sub { $res = http_get_cli($port, '/') }, 10);
    is($res && $res->{status}, 200, 'pagi-server serves on the socket systemd passed as fd 3') or diag(slurp($err->filename));
    is($res && $res->{body}, "client=127.0.0.1 server=127.0.0.1,$port listen_fds=unset",
        'and removed LISTEN_FDS from its environment');
    like(slurp($err->filename), qr{listening on http://127\.0\.0\.1:$port/}, 'the banner shows the address');
    unlike(slurp($err->filename), qr/:5000/, 'the default address was not bound');
    kill 'TERM', $pid;
    my $gone = wait_until(sub { waitpid($pid, POSIX::WNOHANG()) == $pid }, 10);
    ok($gone, 'it stops on TERM') or do { kill 'KILL', $pid; waitpid $pid, 0 };
    is($?, 0, 'exit 0') if $gone;
};

subtest 'pagi-server --socket, --socket-mode and --listen' => sub {
    my $path = "$dir/cli.sock";
    my $child = start_unix_cli([ '--no-access-log', '--socket', $path, '--socket-mode', '0600', $app_file ], $path);
    ok($child->{ready}, '--socket PATH: the server is up') or diag(stderr_of($child));
    is(sprintf('%04o', mode_of($path)), '0600', '--socket-mode 0600');
    my $res = unix_get_blocking($path, '/');
    is($res && $res->{body}, "client=none server=$path,undef listen_fds=unset", 'served');
    is(stop_cli($child), 0, 'exit 0');
    ok(!-e $path, 'the socket file is removed at exit');

    my $port = PAGI::Test::CLI::free_port();
    $child = start_cli([ '--no-access-log', '--listen', "127.0.0.1:$port", '--listen', $path, $app_file ], no_port => 1, port => $port);
    ok($child->{ready}, '--listen HOST:PORT --listen PATH') or diag(stderr_of($child));
    $res = http_get_cli($port, '/');
    is($res && $res->{body}, "client=127.0.0.1 server=127.0.0.1,$port listen_fds=unset", 'TCP served');
    $res = unix_get_blocking($path, '/');
    is($res && $res->{body}, "client=none server=$path,undef listen_fds=unset", 'Unix served');
    my $err = stderr_of($child);
    is(stop_cli($child), 0, 'exit 0');
    ok(!-e $path, 'socket file removed');

    my $r = run_cli([ '--socket', $path, '--port', 5000, $app_file ]);
    is($r->{exit}, 2, '--socket with --port: exit 2');
    like($r->{stderr}, qr/\Apagi-server: options 'socket' and 'port' are exclusive\n\z/, 'one line saying why');
};

subtest 'a Unix socket served by prefork workers' => sub {
    my $path = "$dir/workers.sock";
    my $child = start_unix_cli([ '--no-access-log', '--workers', 2, '--socket', $path, $app_file ], $path);
    ok($child->{ready}, 'workers serve the Unix socket') or diag(stderr_of($child));
    my @ok = grep { $_ && $_->{status} == 200 } map { unix_get_blocking($path, '/') } 1 .. 3;
    is(scalar @ok, 3, 'every request is answered');
    is(stop_cli($child), 0, 'exit 0');
    ok(!-e $path, 'the master removes the socket file at exit');
};

done_testing;
