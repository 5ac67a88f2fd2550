use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses http_get wait_for);
use PAGI::Test::CLI qw(http_raw);
use POSIX ();
use Future::AsyncAwait;
use File::Temp ();
use IO::Socket::IP;
use IO::Select;
use Socket ();
use Time::HiRes ();

# Issue 9 item 10: a die inside event dispatch (an app callback on a Future
# that an engine event resolves) is caught for that event and logged with
# its message; the rest of the batch is served and the process keeps
# serving. Single process in this process (log captured through
# $SIG{__WARN__}), then prefork workers through pagi-server.

$SIG{PIPE} = 'IGNORE';

my @warnings;
$SIG{__WARN__} = sub { push @warnings, $_[0] };

my %waiting;    # path => 1 while its app awaits the request body
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    my $path = $scope->{path};
    if ($path =~ m{\A/bad-receive}) {
        # The die runs when the engine delivers the body, inside the drain.
        my $f = $receive->();
        $waiting{$path} = 1;
        $f->on_done(sub { die "receive callback boom\n" });
        await $f;
        await $send->({ type => 'http.response.start', status => 200, headers => [] });
        await $send->({ type => 'http.response.body', body => 'unreachable' });
        return;
    }
    if ($path eq '/bad-send') {
        # Far more than the high watermark buffered: the $send after it
        # waits for the engine's "writable" event, and its callback dies then.
        await $send->({ type => 'http.response.start', status => 200, headers => [] });
        await $send->({ type => 'http.response.body', body => 'x' x (4 * 1024 * 1024), more => 1 });
        my $f = $send->({ type => 'http.response.body', body => 'y' x 1024, more => 1 });
        $waiting{$path} = $f->is_ready ? 'ready' : 'pending';
        $f->on_done(sub { die "send callback boom\n" });
        await $f;
        await $send->({ type => 'http.response.body', body => 'unreachable' });
        return;
    }
    if ($path eq '/bad-after-response') {
        await $receive->();
        await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-length', 4 ] ] });
        await $send->({ type => 'http.response.body', body => 'sent' });
        # Resolved by the end of the request (http.disconnect), in a drain.
        $receive->()->on_done(sub { die "disconnect callback boom\n" });
        return;
    }
    my $got = '';
    if (($scope->{method} // '') eq 'POST') {
        my $f = $receive->();
        $waiting{$path} = 1;
        my $ev = await $f;
        $got = $ev->{body};
    }
    my $body = "ok $path $got";
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-length', length $body ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};

# Reads one whole response from a blocking socket, pumping the loop.
sub read_response {
    my ($sock, $timeout) = @_;
    $sock->blocking(0);
    my $buf = '';
    my $deadline = Time::HiRes::time() + ($timeout // 20);
    while (Time::HiRes::time() < $deadline) {
        loop()->loop_once(0.01);
        my $n = sysread $sock, $buf, 65536, length $buf;
        last if defined $n && $n == 0;
        my ($r) = parse_responses($buf);
        return $r if $r && defined $r->{status} && !$r->{incomplete}
                  && defined $r->{header}{'content-length'} && length $r->{body} == $r->{header}{'content-length'};
    }
    my ($r) = parse_responses($buf);
    return $r;
}

subtest 'single process: one bad callback, the rest of the batch is served' => sub {
    my ($server, $port) = start_server(app => $app);
    my @paths = ('/ok-1', '/bad-receive', '/ok-2', '/ok-3');
    my %sock;
    for my $path (@paths) {
        my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port) or die "connect: $@";
        $s->autoflush(1);
        # Chunked: the body is read only when the app asks, so it arrives
        # as an event of its own.
        print {$s} "POST $path HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        $sock{$path} = $s;
    }
    ok wait_for(sub { keys(%waiting) == @paths }, 20), 'every app is waiting for its body';

    # The bodies are sent while this thread (the server's loop) is held, so
    # the engine queues all four body events and one drain dispatches them.
    print { $sock{$_} } "4\r\nbody\r\n0\r\n\r\n" for @paths;
    my $deadline = Time::HiRes::time() + 20;
    Time::HiRes::sleep(0.01) until $server->engine->stats->{events_pending} >= @paths || Time::HiRes::time() > $deadline;
    cmp_ok $server->engine->stats->{events_pending}, '>=', scalar(@paths), 'the four body events wait in one batch';

    @warnings = ();
    my %r;
    my $ok = eval { $r{$_} = read_response($sock{$_}) for @paths; 1 };
    ok $ok, 'the loop survived the batch' or diag "died: $@";
    for my $path (grep { !/bad/ } @paths) {
        is $r{$path} && $r{$path}{status}, 200, "$path: answered";
        is $r{$path} && $r{$path}{body}, "ok $path body", "$path: with its body";
    }
    is $r{'/bad-receive'} && $r{'/bad-receive'}{status}, 500, '/bad-receive: its request ends as after an app exception (500)';
    my ($logged) = grep { /receive callback boom/ } @warnings;
    ok $logged, 'the error is logged through warn, with its message' or diag explain \@warnings;
    like $logged // '', qr{\A\[pagi-server\] error: PAGI application error in a callback \(POST /bad-receive\): receive callback boom\n\z},
        'prefixed, levelled, naming the request';

    # A callback that dies when the request has ended (http.disconnect).
    @warnings = ();
    my $after = eval { raw_exchange($port, "POST /bad-after-response HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")->get };
    ok $after, 'the loop survived a callback dying at the end of a request' or diag "died: $@";
    my ($r) = parse_responses($after // '');
    is $r && $r->{body}, 'sent', 'that response went out whole';
    ok wait_for(sub { grep { /disconnect callback boom/ } @warnings }, 10), 'and the error was logged';

    # A callback on a $send Future, resolved when the client drains the buffer.
    @warnings = ();
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port,
                                   Sockopts => [ [ Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), 16 * 1024 ] ]) or die "connect: $@";
    print {$sock} "GET /bad-send HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    ok wait_for(sub { $waiting{'/bad-send'} }, 20), 'the app sent its big body';
    is $waiting{'/bad-send'}, 'pending', 'the next $send waits for the client';
    $sock->blocking(0);
    my ($got, $eof) = (0, 0);
    my $until = Time::HiRes::time() + 30;
    my $ok_loop = eval {
        while (!$eof && Time::HiRes::time() < $until) {
            loop()->loop_once(0.005);
            my $n = sysread $sock, my $chunk, 65536;
            if (defined $n) { $eof = 1 unless $n; $got += $n }
        }
        1;
    };
    ok $ok_loop, 'the loop survived a $send callback dying' or diag "died: $@";
    ok $eof, 'the connection of that request was closed';
    ok wait_for(sub { grep { /\[pagi-server\] error: PAGI application error in a callback \(GET \/bad-send\): send callback boom/ } @warnings }, 10),
        'and the error was logged with its message';

    my $later = eval { http_get($port, '/ok-later')->get };
    is $later && $later->{status}, 200, 'the server keeps serving afterwards';
    ok $server->is_running, 'and is still running';
    stop_server($server);
};

# Prefork workers: a script embedding PAGI::Server with `workers`, so that
# workers => 1 is a real prefork (pagi-server maps --workers 1 to a single
# process). The bad callback runs when the request ends (http.disconnect
# resolves the $receive), always inside a drain.
my $dir = File::Temp->newdir;
my $script = "$dir/serve.pl";
{
    open my $fh, '>', $script or die "write $script: $!";
    print {$fh} <<'PERL';
use strict; use warnings;
use Future::AsyncAwait;
use IO::Async::Loop;
use PAGI::Server;
my ($port, $workers) = @ARGV;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "no lifespan here\n" if $scope->{type} eq 'lifespan';
    my $path = $scope->{path};
    await $receive->();    # the (empty) request body
    await IO::Async::Loop->new->delay_future(after => 1.5) if $path eq '/slow';
    my $body = "$$";
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-length', length $body ] ] });
    await $send->({ type => 'http.response.body', body => $body });
    $receive->()->on_done(sub { die "worker callback boom\n" }) if $path eq '/bad';
};
my $server = PAGI::Server->new(app => $app, host => '127.0.0.1', port => $port, workers => $workers,
                               access_log => undef, shutdown_timeout => 5);
exit $server->run;
PERL
}

sub spawn_server {
    my ($workers) = @_;
    my $port = PAGI::Test::CLI::free_port();
    my $err = File::Temp->new;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', $err->filename;
        my $root = PAGI::Test::CLI::ROOT();
        { exec $^X, "-I$root/lib", "-I$root/blib/lib", "-I$root/blib/arch", $script, $port, $workers }
        POSIX::_exit(127);
    }
    return { pid => $pid, port => $port, err => $err };
}

sub stop_server_process {
    my ($child) = @_;
    kill 'TERM', $child->{pid};
    my $ended = PAGI::Test::CLI::wait_until(sub { waitpid($child->{pid}, POSIX::WNOHANG()) == $child->{pid} }, 20);
    my $status = $?;
    unless ($ended) { kill 'KILL', $child->{pid}; waitpid $child->{pid}, 0; $status = -1 }
    return $status;
}

sub get_cli {
    my ($port, $path) = @_;
    my ($r) = parse_responses(http_raw($port, "GET $path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 20));
    return $r;
}

for my $workers (1, 2) {
    subtest "workers => $workers: a bad callback is logged; no worker dies" => sub {
        my $child = spawn_server($workers);
        my $log = sub { PAGI::Test::CLI::slurp($child->{err}->filename) };
        ok PAGI::Test::CLI::wait_until(sub { $log->() =~ /\b$workers workers? ready/ }, 30), "$workers worker(s) ready"
            or return diag $log->();
        my $port = $child->{port};
        my @before = children_of($child->{pid});
        is scalar(@before), $workers, "$workers worker process(es)";

        # A slow request in flight on a worker while the bad callbacks die.
        my $slow = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port) or die "connect: $@";
        $slow->autoflush(1);
        print {$slow} "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        my @bad = map { get_cli($port, '/bad') } 1 .. ($workers * 2);
        is_deeply [ map { $_ ? $_->{status} : 'none' } @bad ], [ (200) x @bad ], 'the bad requests were answered';
        my $slow_r = do {
            my $buf = '';
            my $sel = IO::Select->new($slow);
            my $deadline = Time::HiRes::time() + 20;
            while ((my $left = $deadline - Time::HiRes::time()) > 0) {
                last unless $sel->can_read($left);
                sysread($slow, $buf, 65536, length $buf) or last;
            }
            (parse_responses($buf))[0];
        };
        is $slow_r && $slow_r->{status}, 200, 'the request in flight got its response';
        my @served = map { get_cli($port, '/ok') } 1 .. 4;
        is_deeply [ map { $_ ? $_->{status} : 'none' } @served ], [ (200) x 4 ], 'the workers keep serving';
        my %before = map { $_ => 1 } @before;
        ok !(grep { !$before{ $_->{body} } } grep { $_ } @served), 'from the same processes';
        is_deeply [ children_of($child->{pid}) ], \@before, 'no worker was replaced'
            or diag "before: @before; after: " . join(' ', children_of($child->{pid}));
        ok PAGI::Test::CLI::wait_until(sub { () = $log->() =~ /worker callback boom/g; }, 10), 'errors logged';
        my $status = stop_server_process($child);
        my $stderr = $log->();
        my $n = () = $stderr =~ /\[pagi-server worker \d+\] error: PAGI application error in a callback \(GET \/bad\): worker callback boom\n/g;
        is $n, scalar(@bad), 'each error is logged once, with its message' or diag $stderr;
        unlike $stderr, qr/died|exited|starting a new one/, 'no worker died or was restarted';
        is $status, 0, 'clean exit on TERM';
    };
}

# The pids whose parent is $pid, sorted (from /proc).
sub children_of {
    my ($pid) = @_;
    my @kids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $stat or next;
        my $line = <$fh> // next;
        push @kids, $1 if $line =~ /\A(\d+) \(.*\) \S+ (\d+) / && $2 == $pid;
    }
    return sort { $a <=> $b } @kids;
}

done_testing;
