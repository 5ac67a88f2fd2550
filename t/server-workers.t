# Prefork workers (issue 6, PAGI-SPEC 7.2 multi-worker model, 8.4 signals):
# bin/pagi-server --workers N as a child process; the app answers with the
# pid of the worker that served it. Spread, respawn, rolling restart (HUP),
# scaling (TTIN/TTOU), max_requests, startup failure, graceful TERM, hot
# restart (USR2) and the heartbeat.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(start_cli stop_cli run_cli http_raw slurp wait_until stderr_of);
use File::Temp ();
use IO::Select;
use IO::Socket::IP;
use POSIX ();
use Time::HiRes qw(time sleep);

$SIG{PIPE} = 'IGNORE';

my $dir = File::Temp->newdir;
my $app = "$dir/app.pl";
{
    open my $fh, '>', $app or die "write $app: $!";
    print {$fh} <<'PERL';
use strict; use warnings;
use Future::AsyncAwait;
use IO::Async::Loop;
my %lifespan;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'lifespan') {
        while (1) {
            my $ev = await $receive->();
            if ($ev->{type} eq 'lifespan.startup') {
                %lifespan = (is_worker => $scope->{pagi}{is_worker}, worker_num => $scope->{pagi}{worker_num} // 'none');
                my $fail = $ENV{WORKERS_TEST_FAIL} // '';
                if ($fail eq 'all' || $fail eq ($scope->{pagi}{worker_num} // '')) {
                    await $send->({ type => 'lifespan.startup.failed', message => 'told to fail' });
                    return;
                }
                await $send->({ type => 'lifespan.startup.complete' });
            }
            else {
                await $send->({ type => 'lifespan.shutdown.complete' });
                return;
            }
        }
    }
    my $body = "$$";
    if ($scope->{path} eq '/lifespan') {
        $body = "$lifespan{is_worker} $lifespan{worker_num}";
    }
    elsif ($scope->{path} eq '/slow') {
        await IO::Async::Loop->new->delay_future(after => 1);
        $body = "slow $$";
    }
    elsif ($scope->{path} eq '/block') {
        sleep 30;    # blocks this worker's loop: only the heartbeat can save it
    }
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};
$app;
PERL
    close $fh;
}

# ---- helpers -------------------------------------------------------------

# Live (non-zombie) children of $ppid, from /proc.
sub children_of {
    my ($ppid) = @_;
    my @kids;
    opendir my $dh, '/proc' or return ();
    for my $pid (grep { /\A\d+\z/ } readdir $dh) {
        open my $fh, '<', "/proc/$pid/stat" or next;
        my $stat = <$fh> // next;
        my ($state, $parent) = substr($stat, rindex($stat, ')') + 2) =~ /\A(\S) (\d+)/ or next;
        push @kids, $pid if $parent == $ppid && $state ne 'Z';
    }
    return sort { $a <=> $b } @kids;
}

sub alive {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/stat" or return 0;
    my $stat = <$fh> // return 0;
    return substr($stat, rindex($stat, ')') + 2, 1) ne 'Z';
}

# One GET on a fresh connection → the parsed response or undef.
sub get {
    my ($port, $path, $timeout) = @_;
    my ($r) = parse_responses(http_raw($port, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", $timeout // 5));
    return $r && defined $r->{status} ? $r : undef;
}

# $n requests in flight at once (so several workers take part) → bodies.
sub concurrent_gets {
    my ($port, $n) = @_;
    my @socks = grep { $_ } map {
        IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5)
    } 1 .. $n;
    syswrite $_, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" for @socks;
    my %buf;
    my $sel = IO::Select->new(@socks);
    my $deadline = time + 10;
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read(1)) {
            my $n = sysread $s, $buf{ fileno $s }, 65536, length($buf{ fileno $s } // '');
            $sel->remove($s) unless $n;
        }
    }
    return map { my ($r) = parse_responses($buf{ fileno $_ } // ''); $r && ($r->{status} // 0) == 200 ? $r->{body} : 'failed' } @socks;
}

# A process that sends requests back to back until stopped; it counts
# successes, failures and the pids that answered.
my %LOOPERS;
END { for my $pid (keys %LOOPERS) { kill 'KILL', $pid; waitpid $pid, 0 } }

sub start_looper {
    my ($port) = @_;
    my $file = "$dir/looper." . (keys(%LOOPERS) + 1) . '.' . int(rand 1e6);
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my $stop = 0;
        $SIG{TERM} = sub { $stop = 1 };
        my ($ok, $fail, %pids, @errors) = (0, 0);
        until ($stop) {
            my $r = get($port, '/');
            # The TERM that stops this loop interrupts the request in flight.
            last if $stop && !($r && $r->{status} == 200);
            if ($r && $r->{status} == 200) { $ok++; $pids{ $r->{body} }++ }
            else { $fail++; push @errors, $r ? "status $r->{status}" : 'no response' }
        }
        open my $fh, '>', $file or POSIX::_exit(1);
        print {$fh} "ok=$ok fail=$fail pids=" . join(',', sort keys %pids) . " errors=" . join(';', map { s/ /_/gr } @errors[0 .. ($#errors < 4 ? $#errors : 4)]) . "\n";
        close $fh;
        POSIX::_exit(0);
    }
    $LOOPERS{$pid} = 1;
    return { pid => $pid, file => $file };
}

sub stop_looper {
    my ($looper) = @_;
    kill 'TERM', $looper->{pid};
    waitpid $looper->{pid}, 0;
    delete $LOOPERS{ $looper->{pid} };
    my $line = slurp($looper->{file});
    my %r = $line =~ /(\w+)=(\S*)/g;
    $r{pids} = [ split /,/, $r{pids} // '' ];
    return \%r;
}

sub start_workers {
    my ($args, %opt) = @_;
    my $child = start_cli([ '--no-access-log', @$args, $app ], %opt);
    ok($child->{ready}, "pagi-server @$args is up") or diag(stderr_of($child));
    return $child;
}

# Waits until the master has exactly $n workers, none of them in @$gone.
sub wait_workers {
    my ($master, $n, $timeout, @gone) = @_;
    my %gone = map { $_ => 1 } @gone;
    my @kids;
    my $ok = wait_until(sub {
        @kids = children_of($master);
        @kids == $n && !grep { $gone{$_} } @kids;
    }, $timeout // 10);
    return $ok ? @kids : ();
}

# ---- one master for spread, respawn, HUP, TTIN/TTOU -----------------------

subtest 'three workers: spread, lifespan fields, kill -9, HUP with a client looping, TTIN/TTOU' => sub {
    my $child = start_workers([ '--workers', 3 ]);
    return unless $child->{ready};
    my ($master, $port) = ($child->{pid}, $child->{port});
    my @workers = wait_workers($master, 3);
    is(scalar @workers, 3, 'the master forked three workers') or return;

    my %served;
    for (1 .. 5) {
        $served{$_}++ for concurrent_gets($port, 12);
        last if keys %served >= 2;
    }
    ok(!$served{failed}, 'every request was answered');
    delete $served{failed};
    cmp_ok(scalar keys %served, '>=', 2, 'requests were served by more than one worker: ' . join(', ', sort keys %served));
    my %is_worker = map { $_ => 1 } @workers;
    ok(!grep({ !$is_worker{$_} } keys %served), 'only by the forked workers, never by the master');

    my %nums;
    for (1 .. 30) {
        my $r = get($port, '/lifespan') or next;
        $nums{ $r->{body} }++;
        last if keys %nums == 3;
    }
    ok(!grep({ !/\A1 [123]\z/ } keys %nums), 'lifespan scopes had is_worker 1 and worker_num 1..3: ' . join(', ', sort keys %nums));

    # kill -9 one worker: a new one takes its place, service goes on.
    my $victim = $workers[1];
    kill 'KILL', $victim;
    @workers = wait_workers($master, 3, 10, $victim);
    is(scalar @workers, 3, "worker $victim was replaced (now @workers)");
    my @bodies = grep { $_ ne 'failed' } map { concurrent_gets($port, 4) } 1 .. 3;
    is(scalar @bodies, 12, 'requests keep being served');
    ok(wait_until(sub { stderr_of($child) =~ /worker \d \(pid $victim\) died \(signal 9\)/ }, 2), 'the master logged the death');

    # HUP while a client loops: old workers leave only once new ones serve.
    my $looper = start_looper($port);
    sleep 0.5;
    kill 'HUP', $master;
    my @old = @workers;
    my @new = wait_workers($master, 3, 20, @old);
    is(scalar @new, 3, "HUP replaced every worker (@old → @new)");
    sleep 0.5;
    my $r = stop_looper($looper);
    cmp_ok($r->{ok} // 0, '>', 10, "the client kept being served during the restart ($r->{ok} requests)");
    is($r->{fail}, 0, 'without a single failure') or diag("errors: $r->{errors}");
    like(stderr_of($child), qr/restart complete/, 'the master logged the end of the restart');
    @workers = @new;

    # TTIN / TTOU.
    kill 'TTIN', $master;
    my @four = wait_workers($master, 4, 10);
    is(scalar @four, 4, 'TTIN: four workers');
    kill 'TTOU', $master;
    sleep 0.2;
    kill 'TTOU', $master;
    is(scalar(my @two = wait_workers($master, 2, 10)), 2, 'TTOU twice: two workers');
    kill 'TTOU', $master;
    is(scalar(my @one = wait_workers($master, 1, 10)), 1, 'TTOU: one worker');
    kill 'TTOU', $master;
    sleep 1;
    is(scalar(my @still = children_of($master)), 1, 'TTOU never goes below one worker');
    my $one = get($port, '/');
    is($one && $one->{status}, 200, 'the last worker serves');

    # TERM: in-flight request finishes, everything exits 0.
    my $slow = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5);
    syswrite $slow, "GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    sleep 0.3;
    my @last = children_of($master);
    my $status = stop_cli($child, 15);
    is($status, 0, 'TERM: the master exits 0');
    ok(!$child->{killed}, 'on its own');
    ok(!grep({ alive($_) } @last), 'and no worker is left');
    my $buf = '';
    my $sel = IO::Select->new($slow);
    while ($sel->can_read(3)) { sysread($slow, $buf, 65536, length $buf) or last }
    my ($sr) = parse_responses($buf);
    like($sr && $sr->{body} // '', qr/\Aslow \d+\z/, 'the request in flight at TERM was answered');
};

subtest '--reuseport: each worker binds its own socket' => sub {
    my $child = start_workers([ '--workers', 2, '--reuseport' ]);
    return unless $child->{ready};
    my @workers = wait_workers($child->{pid}, 2);
    my %served;
    for (1 .. 5) {
        $served{$_}++ for concurrent_gets($child->{port}, 10);
        last if keys %served >= 2 && !$served{failed};
    }
    ok(!$served{failed}, 'every request was answered');
    delete $served{failed};
    is(scalar keys %served, 2, 'the kernel spread the connections over both workers');
    # Each worker's own listening socket: count this port's listeners in /proc/net/tcp.
    my $hex = sprintf '%04X', $child->{port};
    my $listening = () = grep { (split ' ')[1] =~ /:$hex\z/ && (split ' ')[3] eq '0A' } split /\n/, slurp('/proc/net/tcp');
    is($listening, 2, 'two listening sockets share the port');
    is(stop_cli($child), 0, 'exit 0');
};

subtest 'max_requests recycles workers' => sub {
    my $child = start_workers([ '--workers', 2, '--max-requests', 5 ]);
    return unless $child->{ready};
    my (%pids, $failed);
    for (1 .. 40) {
        my $r = get($child->{port}, '/');
        if ($r && $r->{status} == 200) { $pids{ $r->{body} }++ } else { $failed++ }
    }
    ok(!$failed, 'all 40 requests were answered') or diag("$failed failed");
    cmp_ok(scalar keys %pids, '>=', 4, 'by at least four different workers: ' . scalar(keys %pids));
    # 5 plus up to 10% jitter; a stopping engine still serves connections
    # the kernel had queued, so one more may slip in.
    ok(!grep({ $_ > 7 } values %pids), 'none served much more than max_requests plus jitter')
        or diag(join ', ', map { "$_: $pids{$_}" } sort keys %pids);
    is(scalar(my @kids = wait_workers($child->{pid}, 2, 5)), 2, 'two workers remain');
    like(stderr_of($child), qr/recycling worker/, 'the workers said why they left');
    is(stop_cli($child), 0, 'exit 0');
};

subtest 'lifespan startup failure: exit 2, no respawn loop' => sub {
    my $r = run_cli([ '--no-access-log', '--workers', 3, '--port', PAGI::Test::CLI::free_port(), $app ],
        env => { WORKERS_TEST_FAIL => 'all' }, timeout => 15);
    ok(!$r->{timed_out}, 'the master exited by itself');
    is($r->{exit}, 2, 'with exit code 2');
    my @failed = $r->{stderr} =~ /failed to start/g;
    is(scalar @failed, 3, 'each worker failed once: no respawn loop');
    like($r->{stderr}, qr/told to fail/, "the app's message is logged");
    like($r->{stderr}, qr/no worker could start/, 'and why the master exits');

    my $child = start_workers([ '--workers', 2 ], env => { WORKERS_TEST_FAIL => 2 });
    return unless $child->{ready};
    ok(wait_until(sub { stderr_of($child) =~ /worker 2 \(pid \d+\) failed to start/ }, 5), 'worker 2 failed to start');
    sleep 0.5;
    is(scalar(my @kids = children_of($child->{pid})), 1, 'it is not replaced; worker 1 goes on');
    my $res = get($child->{port}, '/lifespan');
    is($res && $res->{body}, '1 1', 'and serves');
    is(stop_cli($child), 0, 'exit 0');
};

subtest 'USR2: a new master takes over, a looping client sees no failure' => sub {
    my $pid_file = "$dir/master.pid";
    my $child = start_workers([ '--workers', 2, '--pid', $pid_file ]);
    return unless $child->{ready};
    my ($old, $port) = ($child->{pid}, $child->{port});
    ok(wait_until(sub { slurp($pid_file) =~ /\A$old\n\z/ }, 3), 'the pid file names the master');
    my @old_workers = wait_workers($old, 2);
    my $looper = start_looper($port);
    sleep 0.5;
    kill 'USR2', $old;
    my $gone = wait_until(sub { PAGI::Test::CLI::_exited($child) }, 25);
    ok($gone, 'the old master exited') or do { stop_cli($child, 1); stop_looper($looper); return };
    is($child->{status}, 0, 'with status 0');
    my ($new) = slurp($pid_file) =~ /\A(\d+)/;
    ok($new && $new != $old, "the pid file names the new master ($new)");
    sleep 0.5;
    my $r = stop_looper($looper);
    cmp_ok($r->{ok} // 0, '>', 10, "the client was served throughout ($r->{ok} requests)");
    is($r->{fail}, 0, 'without a single failure') or diag("errors: $r->{errors}");
    my @new_workers = $new ? children_of($new) : ();
    is(scalar @new_workers, 2, 'the new master has two workers');
    my $res = get($port, '/');
    ok($res && grep({ $_ == $res->{body} } @new_workers), 'which answer on the same port');
    ok(!grep({ alive($_) } @old_workers), 'the old workers are gone');
    like(stderr_of($child), qr/took over from master $old/, 'the new master logged the take-over');
    if ($new) {
        kill 'TERM', $new;
        ok(wait_until(sub { !alive($new) }, 15), 'the new master stops on TERM');
        ok(!-e $pid_file, 'and removes the pid file');
        kill 'KILL', $new if alive($new);
    }
};

subtest 'heartbeat: a worker whose loop is blocked is killed and replaced' => sub {
    my $child = start_workers([ '--workers', 2, '--heartbeat-timeout', 1 ]);
    return unless $child->{ready};
    my @before = wait_workers($child->{pid}, 2);
    my $blocker = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $child->{port}, Timeout => 5);
    syswrite $blocker, "GET /block HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    my $t0 = time;
    ok(wait_until(sub { stderr_of($child) =~ /sent no heartbeat/ }, 8), 'the master noticed the silent worker')
        or diag(stderr_of($child));
    cmp_ok(time - $t0, '<', 4, sprintf('within a few seconds (%.1fs)', time - $t0));
    my @after = wait_workers($child->{pid}, 2, 5, grep { !alive($_) } @before);
    is(scalar @after, 2, 'a new worker took its place');
    is(scalar(grep { my $p = $_; !grep { $_ == $p } @after } @before), 1, 'exactly one worker was replaced');
    my $res = get($child->{port}, '/');
    is($res && $res->{status}, 200, 'service goes on');
    is(stop_cli($child), 0, 'exit 0');
};

done_testing;
