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
use PAGI::Test::CLI qw(start_cli stop_cli run_cli slurp wait_until stderr_of);
use PAGI::Test::Workers qw(children_of alive get concurrent_gets start_looper stop_looper listening_sockets);
use File::Temp ();
use IO::Select;
use IO::Socket::IP;
use Time::HiRes qw(time sleep);

$SIG{PIPE} = 'IGNORE';
# The waits below are generous, so the bound on the whole file is too.
alarm 600;

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
        $body = ($lifespan{is_worker} // 'undef') . " $lifespan{worker_num} $$";
    }
    elsif ($scope->{path} eq '/slow') {
        await IO::Async::Loop->new->delay_future(after => 1);
        $body = "slow $$";
    }
    elsif ($scope->{path} eq '/block') {
        sleep 60;    # blocks this worker's loop: only the heartbeat can save it
    }
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};
$app;
PERL
    close $fh;
}

# ---- helpers -------------------------------------------------------------

# Deadlines are generous: CI runs this beside the rest of the suite on a
# busy 2-core machine; each wait ends as soon as its condition holds.
sub start_workers {
    my ($args, %opt) = @_;
    my $child = start_cli([ '--no-access-log', @$args, $app ], timeout => 30, %opt);
    ok($child->{ready}, "pagi-server @$args is up") or diag(stderr_of($child));
    return $child;
}

# Waits (up to 30 s) until the master has exactly $n workers, none of them in @gone.
sub wait_workers {
    my ($master, $n, @gone) = @_;
    return PAGI::Test::Workers::wait_children($master, $n, 30, @gone);
}

# $n requests for $path in flight at once → the bodies ('failed' for each
# that got no 200).
sub concurrent_bodies {
    my ($port, $path, $n) = @_;
    my @socks = map { IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 10) } 1 .. $n;
    syswrite $_, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" for grep { $_ } @socks;
    my %buf;
    my $sel = IO::Select->new(grep { $_ } @socks);
    my $deadline = time + 20;
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read(1)) {
            sysread($s, $buf{ fileno $s }, 65536, length($buf{ fileno $s } // '')) or $sel->remove($s);
        }
    }
    return map {
        my ($r) = $_ ? parse_responses($buf{ fileno $_ } // '') : ();
        $r && ($r->{status} // 0) == 200 ? $r->{body} : 'failed';
    } @socks;
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

    # Each answer names its worker's lifespan fields and pid: a single
    # process (no workers at all) would answer "undef none PID".
    my (%num_of_pid, @bad);
    for (1 .. 10) {
        for my $body (concurrent_bodies($port, '/lifespan', 12)) {
            my ($flag, $num, $pid) = $body =~ /\A(\S+) (\S+) (\d+)\z/ or do { push @bad, $body; next };
            push @bad, $body unless $flag eq '1' && $num =~ /\A[123]\z/ && $is_worker{$pid};
            push @bad, "$body (pid $pid also said $num_of_pid{$pid})" if defined $num_of_pid{$pid} && $num_of_pid{$pid} ne $num;
            $num_of_pid{$pid} = $num;
        }
        last if keys %num_of_pid >= 2;
    }
    is_deeply(\@bad, [], 'every lifespan scope had is_worker 1 and worker_num 1..3, one per forked worker');
    my %nums = reverse %num_of_pid;
    cmp_ok(scalar keys %nums, '>=', 2, 'several workers answered, each with its own worker_num: ' . join(', ', map { "$_=$nums{$_}" } sort keys %nums));

    # kill -9 one worker: a new one takes its place, service goes on.
    my $victim = $workers[1];
    kill 'KILL', $victim;
    @workers = wait_workers($master, 3, $victim);
    is(scalar @workers, 3, "worker $victim was replaced (now @workers)");
    my @bodies = grep { $_ ne 'failed' } map { concurrent_gets($port, 4) } 1 .. 3;
    is(scalar @bodies, 12, 'requests keep being served');
    ok(wait_until(sub { stderr_of($child) =~ /worker \d \(pid $victim\) died \(signal 9\)/ }, 20), 'the master logged the death');

    # HUP while a client loops: old workers leave only once new ones serve.
    my $looper = start_looper($port, $dir);
    sleep 0.5;
    kill 'HUP', $master;
    my @old = @workers;
    my @new = wait_workers($master, 3, @old);
    is(scalar @new, 3, "HUP replaced every worker (@old → @new)");
    ok(wait_until(sub { stderr_of($child) =~ /restart complete/ }, 20), 'the master logged the end of the restart');
    sleep 0.5;
    my $r = stop_looper($looper);
    cmp_ok($r->{ok} // 0, '>', 10, "the client kept being served during the restart ($r->{ok} requests)");
    is($r->{fail}, 0, 'without a single failure') or diag("errors: $r->{errors}");
    @workers = @new;

    # TTIN / TTOU, one signal at a time (two sent at once may merge into one).
    kill 'TTIN', $master;
    my @four = wait_workers($master, 4);
    is(scalar @four, 4, 'TTIN: four workers');
    for my $n (3, 2, 1) {
        kill 'TTOU', $master;
        is(scalar(my @kids = wait_workers($master, $n)), $n, "TTOU: $n worker" . ($n == 1 ? '' : 's'));
    }
    kill 'TTOU', $master;
    ok(wait_until(sub { stderr_of($child) =~ /SIGTTOU: keeping the last worker/ }, 20), 'TTOU never goes below one worker: the master says so');
    is(scalar(my @still = children_of($master)), 1, 'and one worker is left');
    my $one = get($port, '/');
    is($one && $one->{status}, 200, 'the last worker serves');

    # TERM: in-flight request finishes, everything exits 0.
    my $slow = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5);
    syswrite $slow, "GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    sleep 0.3;
    my @last = children_of($master);
    my $status = stop_cli($child, 30);
    is($status, 0, 'TERM: the master exits 0');
    ok(!$child->{killed}, 'on its own');
    ok(!grep({ alive($_) } @last), 'and no worker is left');
    my $buf = '';
    my $sel = IO::Select->new($slow);
    while ($sel->can_read(3)) { sysread($slow, $buf, 65536, length $buf) or last }
    my ($sr) = parse_responses($buf);
    like($sr && $sr->{body} // '', qr/\Aslow \d+\z/, 'the request in flight at TERM was answered');
};

subtest '--reuseport: each worker accepts on its own socket' => sub {
    my $child = start_workers([ '--workers', 2, '--reuseport' ]);
    return unless $child->{ready};
    my @workers = wait_workers($child->{pid}, 2);
    my %served;
    for (1 .. 10) {
        $served{$_}++ for concurrent_gets($child->{port}, 10);
        last if keys %served >= 2 && !$served{failed};
    }
    ok(!$served{failed}, 'every request was answered');
    delete $served{failed};
    is(scalar keys %served, 2, 'the kernel spread the connections over both workers');
    is(listening_sockets($child->{port}), 2, "two listening sockets share the port (each worker's own)");
    is(stop_cli($child, 30), 0, 'exit 0');
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
    is(scalar(my @kids = wait_workers($child->{pid}, 2)), 2, 'two workers remain');
    like(stderr_of($child), qr/recycling worker/, 'the workers said why they left');
    is(stop_cli($child, 30), 0, 'exit 0');
};

subtest 'lifespan startup failure: exit 2, no respawn loop' => sub {
    my $r;
    for my $attempt (1 .. 3) {
        $r = run_cli([ '--no-access-log', '--workers', 3, '--port', PAGI::Test::CLI::free_port(), $app ],
            env => { WORKERS_TEST_FAIL => 'all' }, timeout => 40);
        # Another process may take the free port first: try another one.
        last unless $r->{stderr} =~ /Cannot listen/;
    }
    ok(!$r->{timed_out}, 'the master exited by itself');
    is($r->{exit}, 2, 'with exit code 2') or diag($r->{stderr});
    my @failed = $r->{stderr} =~ /failed to start/g;
    is(scalar @failed, 3, 'each worker failed once: no respawn loop');
    like($r->{stderr}, qr/told to fail/, "the app's message is logged");
    like($r->{stderr}, qr/no worker could start/, 'and why the master exits');

    my $child = start_workers([ '--workers', 2 ], env => { WORKERS_TEST_FAIL => 2 });
    return unless $child->{ready};
    ok(wait_until(sub { stderr_of($child) =~ /worker 2 \(pid \d+\) failed to start/ }, 20), 'worker 2 failed to start');
    sleep 0.5;
    is(scalar(my @kids = children_of($child->{pid})), 1, 'it is not replaced; worker 1 goes on');
    my $res = get($child->{port}, '/lifespan');
    like($res && $res->{body}, qr/\A1 1 \d+\z/, 'and serves');
    is(stop_cli($child, 30), 0, 'exit 0');
};

subtest 'USR2: a new master takes over, a looping client sees no failure' => sub {
    my $pid_file = "$dir/master.pid";
    my $child = start_workers([ '--workers', 2, '--pid', $pid_file ]);
    return unless $child->{ready};
    my ($old, $port) = ($child->{pid}, $child->{port});
    ok(wait_until(sub { slurp($pid_file) =~ /\A$old\n\z/ }, 20), 'the pid file names the master');
    my @old_workers = wait_workers($old, 2);
    my $looper = start_looper($port, $dir);
    sleep 0.5;
    kill 'USR2', $old;
    my $gone = wait_until(sub { PAGI::Test::CLI::_exited($child) }, 40);
    ok($gone, 'the old master exited') or do { stop_cli($child, 1); stop_looper($looper); return };
    is($child->{status}, 0, 'with status 0');
    my ($new) = slurp($pid_file) =~ /\A(\d+)/;
    ok($new && $new != $old, "the pid file names the new master ($new)");
    sleep 0.5;
    my $r = stop_looper($looper);
    cmp_ok($r->{ok} // 0, '>', 10, "the client was served throughout ($r->{ok} requests)");
    is($r->{fail}, 0, 'without a single failure') or diag("errors: $r->{errors}");
    my @new_workers = $new ? wait_workers($new, 2) : ();
    is(scalar @new_workers, 2, 'the new master has two workers');
    my $res = get($port, '/');
    ok($res && grep({ $_ == $res->{body} } @new_workers), 'which answer on the same port');
    ok(!grep({ alive($_) } @old_workers), 'the old workers are gone');
    like(stderr_of($child), qr/took over from master $old/, 'the new master logged the take-over');
    if ($new) {
        kill 'TERM', $new;
        ok(wait_until(sub { !alive($new) }, 30), 'the new master stops on TERM');
        ok(!-e $pid_file, 'and removes the pid file');
        kill 'KILL', $new if alive($new);
    }
};

subtest 'heartbeat: a worker whose loop is blocked is killed and replaced' => sub {
    # 3 s, not less: a healthy worker on a loaded machine must not miss it.
    my $child = start_workers([ '--workers', 2, '--heartbeat-timeout', 3 ]);
    return unless $child->{ready};
    my @before = wait_workers($child->{pid}, 2);
    is(scalar @before, 2, 'two workers') or return;
    my $blocker = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $child->{port}, Timeout => 10);
    syswrite $blocker, "GET /block HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    my $t0 = time;
    # The app blocks for 60 s: only the heartbeat ends it sooner.
    ok(wait_until(sub { stderr_of($child) =~ /sent no heartbeat/ }, 40), 'the master noticed the silent worker')
        or diag(stderr_of($child));
    cmp_ok(time - $t0, '<', 40, sprintf('long before the blocking call would have returned (%.1fs)', time - $t0));
    my ($killed) = stderr_of($child) =~ /worker \d \(pid (\d+)\) sent no heartbeat/;
    ok($killed && grep({ $_ == $killed } @before), 'it was one of the workers');
    my @after = wait_workers($child->{pid}, 2, $killed // ());
    is(scalar @after, 2, 'a new worker took its place');
    is(scalar(grep { my $p = $_; !grep { $_ == $p } @after } @before), 1, 'exactly one worker was replaced');
    unlike(stderr_of($child), qr/sent no heartbeat.*sent no heartbeat/s, 'the healthy worker was left alone');
    my $res = get($child->{port}, '/');
    is($res && $res->{status}, 200, 'service goes on');
    is(stop_cli($child, 30), 0, 'exit 0');
};

done_testing;
