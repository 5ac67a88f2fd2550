# The reference embedding pattern (issue 9, item 14; PAGI-SPEC 7.2):
#   $loop->add($server); $server->listen->get; $loop->run;
# run as a script in a child process. With workers => 2, listen binds, forks
# and supervises the workers and handles the signals as run does (HUP
# rolling restart with a client looping, TTIN/TTOU); TERM drains
# everything, the script's $loop->run returns and no process is left
# holding the port. A single-process embedded server ignores HUP and drains
# on INT and TERM the same way.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(ROOT slurp wait_until);
use PAGI::Test::Workers qw(children_of alive get concurrent_gets start_looper stop_looper
                           port_free wait_children);
use File::Temp ();
use IO::Select;
use IO::Socket::IP;
use POSIX ();
use Time::HiRes qw(time sleep);

$SIG{PIPE} = 'IGNORE';
alarm 600;

my $dir = File::Temp->newdir;
my $script = "$dir/embed.pl";
{
    open my $fh, '>', $script or die "write $script: $!";
    print {$fh} <<'PERL';
use strict; use warnings;
use Future::AsyncAwait;
use IO::Async::Loop;
use PAGI::Server;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'lifespan') {
        while (1) {
            my $ev = await $receive->();
            if ($ev->{type} eq 'lifespan.startup') { await $send->({ type => 'lifespan.startup.complete' }) }
            else { await $send->({ type => 'lifespan.shutdown.complete' }); return }
        }
    }
    my $body = "$$";
    if ($scope->{path} eq '/slow') {
        await IO::Async::Loop->new->delay_future(after => 1);
        $body = "slow $$";
    }
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};
my $loop = IO::Async::Loop->new;
my $server = PAGI::Server->new(app => $app, host => '127.0.0.1', port => 0,
    workers => $ENV{EMBED_WORKERS}, access_log => undef);
$loop->add($server);
$server->listen->get;
$| = 1;
print "port ", $server->port, "\n";
$loop->run;
print "loop returned\n";
exit 0;
PERL
    close $fh;
}

my %LIVE;
END { for my $pid (keys %LIVE) { kill 'KILL', $pid; waitpid $pid, 0 } }

# The script as the reference's users run it: perl -I... script.
sub start_script {
    my (%env) = @_;
    my $out = "$dir/out." . int(rand 1e9);
    my $err = "$dir/err." . int(rand 1e9);
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        $ENV{$_} = $env{$_} for keys %env;
        delete $ENV{PAGI_ENV};
        open STDIN, '<', '/dev/null' or POSIX::_exit(126);
        open STDOUT, '>', $out or POSIX::_exit(126);
        open STDERR, '>', $err or POSIX::_exit(126);
        { exec $^X, '-I' . ROOT() . '/lib', '-I' . ROOT() . '/blib/arch', '-I' . ROOT() . '/blib/lib', $script }
        POSIX::_exit(127);
    }
    $LIVE{$pid} = 1;
    my $child = { pid => $pid, out => $out, err => $err };
    wait_until(sub { exited($child) || slurp($out) =~ /^port (\d+)$/m }, 30);
    ($child->{port}) = slurp($out) =~ /^port (\d+)$/m;
    return $child;
}

sub exited {
    my ($child) = @_;
    return 1 if defined $child->{status};
    return 0 unless waitpid($child->{pid}, POSIX::WNOHANG()) == $child->{pid};
    $child->{status} = $?;
    delete $LIVE{ $child->{pid} };
    return 1;
}

sub stderr_of { slurp($_[0]{err}) }

# Sends $signal, waits up to 40 s for the script to end by itself.
sub signal_and_wait {
    my ($child, $signal) = @_;
    kill $signal, $child->{pid};
    return 1 if wait_until(sub { exited($child) }, 40);
    kill 'KILL', $child->{pid};
    waitpid $child->{pid}, 0;
    delete $LIVE{ $child->{pid} };
    return 0;
}

subtest 'workers => 2: listen forks and supervises, signals work as under run' => sub {
    my $child = start_script(EMBED_WORKERS => 2);
    ok($child->{port}, "the script listens (port " . ($child->{port} // 'none') . ')') or return diag(stderr_of($child));
    my ($script_pid, $port) = ($child->{pid}, $child->{port});
    my @workers = wait_children($script_pid, 2, 30);
    is(scalar @workers, 2, 'listen forked two workers') or return diag(stderr_of($child));
    my %is_worker = map { $_ => 1 } @workers;

    my %served;
    for (1 .. 10) {
        $served{$_}++ for concurrent_gets($port, 12);
        last if keys %served >= 2 && !$served{failed};
    }
    ok(!$served{failed}, 'every request was answered');
    delete $served{failed};
    cmp_ok(scalar keys %served, '>=', 2, 'by several processes: ' . join(', ', sort keys %served));
    ok(!grep({ !$is_worker{$_} } keys %served), 'all of them workers, never the script itself');

    # HUP: a rolling restart while a client loops; the script lives on.
    my $looper = start_looper($port, $dir);
    sleep 0.5;
    kill 'HUP', $script_pid;
    my @new = wait_children($script_pid, 2, 30, @workers);
    is(scalar @new, 2, "HUP replaced both workers (@workers → @new)");
    ok(wait_until(sub { stderr_of($child) =~ /restart complete/ }, 30), 'the restart completed');
    sleep 0.5;
    my $r = stop_looper($looper);
    cmp_ok($r->{ok}, '>', 10, "the client was served throughout ($r->{ok} requests)");
    is($r->{fail}, 0, 'without a single failure') or diag("errors: $r->{errors}");
    ok(alive($script_pid) && !exited($child), 'the embedding script survived HUP');

    kill 'TTIN', $script_pid;
    is(scalar(my @three = wait_children($script_pid, 3, 30)), 3, 'TTIN: three workers');
    kill 'TTOU', $script_pid;
    is(scalar(my @two = wait_children($script_pid, 2, 30)), 2, 'TTOU: two workers');

    # TERM: an in-flight request finishes, the workers go, $loop->run returns.
    my $slow = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 10)
        or return fail("connect: $@");
    syswrite $slow, "GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    sleep 0.3;
    my @last = children_of($script_pid);
    ok(signal_and_wait($child, 'TERM'), 'TERM: the script ended by itself') or diag(stderr_of($child));
    is($child->{status}, 0, 'with status 0 (not killed by the signal)');
    like(slurp($child->{out}), qr/^loop returned$/m, 'after its $loop->run returned');
    ok(!grep({ alive($_) } @last), 'no worker is left');
    ok(wait_until(sub { port_free($port) }, 10), "nothing holds port $port any more");
    unlike(stderr_of($child), qr/killing it/, 'no worker had to be killed');
    my $buf = '';
    my $sel = IO::Select->new($slow);
    while ($sel->can_read(5)) { sysread($slow, $buf, 65536, length $buf) or last }
    my ($sr) = parse_responses($buf);
    like($sr && $sr->{body} // '', qr/\Aslow \d+\z/, 'the request in flight at TERM was answered');
};

subtest 'single process: HUP is ignored' => sub {
    my $child = start_script(EMBED_WORKERS => 0);
    ok($child->{port}, 'the script listens') or return diag(stderr_of($child));
    my $r = get($child->{port}, '/');
    is($r && $r->{body}, $child->{pid}, 'the script serves itself');
    kill 'HUP', $child->{pid};
    ok(wait_until(sub { stderr_of($child) =~ /SIGHUP ignored/ }, 20), 'HUP is logged as ignored');
    $r = get($child->{port}, '/');
    is($r && $r->{status}, 200, 'and the script still serves');
    ok(signal_and_wait($child, 'TERM'), 'TERM ends it');
};

for my $signal (qw(TERM INT)) {
    subtest "single process: $signal drains and ends \$loop->run" => sub {
        my $child = start_script(EMBED_WORKERS => 0);
        ok($child->{port}, 'the script listens') or return diag(stderr_of($child));
        my $port = $child->{port};
        my $slow = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 10)
            or return fail("connect: $@");
        syswrite $slow, "GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        sleep 0.3;
        ok(signal_and_wait($child, $signal), "$signal: the script ended by itself");
        is($child->{status}, 0, 'with status 0 (not killed by the signal)');
        like(slurp($child->{out}), qr/^loop returned$/m, 'after its $loop->run returned');
        like(stderr_of($child), qr/received SIG$signal, shutting down/, 'the server said why');
        ok(wait_until(sub { port_free($port) }, 10), "nothing holds port $port any more");
        my $buf = '';
        my $sel = IO::Select->new($slow);
        while ($sel->can_read(5)) { sysread($slow, $buf, 65536, length $buf) or last }
        my ($sr) = parse_responses($buf);
        like($sr && $sr->{body} // '', qr/\Aslow \d+\z/, "the request in flight at $signal was answered");
    };
}

done_testing;
