# Workers stop gracefully on every IO::Async loop (issue 9, item 9): the
# Epoll loop takes signals through epoll_pwait's mask, Poll and Select from
# a handler, which a blocked signal never reaches. For each loop:
# pagi-server --loop NAME --workers 2 as a child process; TTOU, HUP and TERM
# must each end workers gracefully: lifespan shutdown runs in every worker
# (the app writes a marker file), none is SIGKILLed, the master exits 0.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server ();    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(start_cli stop_cli slurp wait_until stderr_of);
use PAGI::Test::Workers qw(children_of alive get wait_children);
use File::Temp ();

$SIG{PIPE} = 'IGNORE';
alarm 600;

my $dir = File::Temp->newdir;
my $app = "$dir/app.pl";
{
    open my $fh, '>', $app or die "write $app: $!";
    print {$fh} <<'PERL';
use strict; use warnings;
use Future::AsyncAwait;
use IO::Async::Loop;
my $markers = $ENV{WORKERS_TEST_MARKERS} or die "WORKERS_TEST_MARKERS is not set\n";
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'lifespan') {
        while (1) {
            my $ev = await $receive->();
            if ($ev->{type} eq 'lifespan.startup') {
                await $send->({ type => 'lifespan.startup.complete' });
                next;
            }
            open my $fh, '>', "$markers/shutdown.$$" or die "marker: $!";
            close $fh;
            await $send->({ type => 'lifespan.shutdown.complete' });
            return;
        }
    }
    # The loop this worker runs on, as the app sees it.
    my $body = "$$ " . ref(IO::Async::Loop->new);
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};
$app;
PERL
    close $fh;
}

# Graceful means long before the SIGKILL that follows shutdown_timeout + 1.
my $SHUTDOWN_TIMEOUT = 25;
my $GRACEFUL         = 15;

sub shut_down_gracefully {
    my ($markers, $child, $what, @pids) = @_;
    my @missing;
    wait_until(sub { @missing = grep { !-e "$markers/shutdown.$_" } @pids; !@missing }, $GRACEFUL);
    is_deeply(\@missing, [], "$what: lifespan shutdown ran in worker(s) @pids");
    ok(wait_until(sub { !grep { alive($_) } @pids }, $GRACEFUL), "$what: and they exited");
    unlike(stderr_of($child), qr/killing it/, "$what: none was killed");
}

for my $loop (qw(Poll Select)) {
    subtest "--loop $loop" => sub {
        my $markers = File::Temp->newdir(DIR => $dir);
        my $child = start_cli([ '--no-access-log', '--loop', $loop, '--workers', 2,
                                '--shutdown-timeout', $SHUTDOWN_TIMEOUT, $app ],
            env => { WORKERS_TEST_MARKERS => $markers->dirname }, timeout => 30);
        ok($child->{ready}, 'pagi-server is up') or return diag(stderr_of($child));
        my ($master, $port) = ($child->{pid}, $child->{port});
        my @workers = wait_children($master, 2, 30);
        is(scalar @workers, 2, 'two workers') or return;
        my $r = get($port, '/');
        like($r && $r->{body}, qr/\A\d+ IO::Async::Loop::$loop\z/, "a worker serves from an IO::Async::Loop::$loop");

        kill 'TTOU', $master;
        my @one = wait_children($master, 1, 30);
        is(scalar @one, 1, 'TTOU: one worker left');
        my ($removed) = grep { my $w = $_; !grep { $_ == $w } @one } @workers;
        shut_down_gracefully($markers, $child, 'TTOU', $removed // ());

        kill 'HUP', $master;
        my @new = wait_children($master, 1, 30, @one);
        ok(wait_until(sub { stderr_of($child) =~ /restart complete/ }, 30), 'HUP: the restart completed');
        shut_down_gracefully($markers, $child, 'HUP', @one);

        $r = get($port, '/');
        is($r && $r->{status}, 200, 'the new worker serves');
        my $status = stop_cli($child, $SHUTDOWN_TIMEOUT + 10);
        ok(!$child->{killed}, 'TERM: the master exited on its own');
        is($status, 0, 'TERM: with status 0');
        shut_down_gracefully($markers, $child, 'TERM', @new);
    };
}

done_testing;
