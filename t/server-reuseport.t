# Draining with reuseport (issue 9, item 5). Each worker listens on its own
# SO_REUSEPORT socket, so a socket still open in a draining worker keeps
# being given connections by the kernel, and they are reset when it
# finally closes. A draining worker closes its own socket at once, and a
# replacement listens before the old worker stops accepting. A client in a
# child process sends requests back to back, each on a new connection,
# through a HUP restart and through max_requests recycles: not one may fail.
# Draining workers stay alive a while, so a socket left open would be seen:
# slow requests are in flight at the HUP (the old workers wait for them),
# and the app's lifespan shutdown takes a second, as one closing a
# database pool might.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server ();    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(start_cli stop_cli wait_until stderr_of);
use PAGI::Test::Workers qw(children_of alive start_looper stop_looper listening_sockets wait_children);
use File::Temp ();
use IO::Select;
use IO::Socket::IP;
use Time::HiRes qw(time sleep);
use PAGI::Test::Server qw(parse_responses);

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
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'lifespan') {
        while (1) {
            my $ev = await $receive->();
            if ($ev->{type} eq 'lifespan.startup') {
                await $send->({ type => 'lifespan.startup.complete' });
                next;
            }
            await IO::Async::Loop->new->delay_future(after => 1);
            await $send->({ type => 'lifespan.shutdown.complete' });
            return;
        }
    }
    await IO::Async::Loop->new->delay_future(after => 3) if $scope->{path} eq '/slow';
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => "$$" });
};
$app;
PERL
    close $fh;
}

sub start_workers {
    my (@args) = @_;
    my $child = start_cli([ '--no-access-log', '--reuseport', '--workers', 2, @args, $app ], timeout => 30);
    ok($child->{ready}, "pagi-server --reuseport --workers 2 @args is up") or diag(stderr_of($child));
    return $child;
}

subtest 'HUP restart with reuseport loses no request' => sub {
    my $child = start_workers();
    return unless $child->{ready};
    my ($master, $port) = ($child->{pid}, $child->{port});
    my @old = wait_children($master, 2, 30);
    is(scalar @old, 2, 'two workers') or return;
    ok(wait_until(sub { listening_sockets($port) == 2 }, 30), 'each listening on its own socket');

    my $looper = start_looper($port, $dir);
    # Eight slow requests: both old workers almost surely hold some while
    # they drain (one that does is enough to show a socket left open).
    my @slow = map { IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 10) } 1 .. 8;
    is(scalar(grep { $_ } @slow), 8, 'eight slow requests sent');
    syswrite $_, "GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" for grep { $_ } @slow;
    sleep 0.5;
    kill 'HUP', $master;
    ok(wait_until(sub { stderr_of($child) =~ /restart complete/ }, 30), 'the restart completed');
    my @new = wait_children($master, 2, 30, @old);
    is(scalar @new, 2, "both workers were replaced (@old → @new)");
    ok(wait_until(sub { !grep { alive($_) } @old }, 30), 'the old workers are gone');
    sleep 0.5;
    my $r = stop_looper($looper);
    cmp_ok($r->{ok}, '>', 20, "the client was served throughout ($r->{ok} requests)");
    is($r->{fail}, 0, 'without a single failure') or diag("errors: $r->{errors}");
    is(listening_sockets($port), 2, 'two listening sockets again, no stale one');
    my %old = map { $_ => 1 } @old;
    my @answers = map {
        my ($sock, $buf) = ($_, '');
        my $sel = IO::Select->new($sock);
        while ($sel->can_read(10)) { sysread($sock, $buf, 65536, length $buf) or last }
        my ($resp) = parse_responses($buf);
        $resp && ($resp->{status} // 0) == 200 ? $resp->{body} : 'failed';
    } grep { $_ } @slow;
    ok(!grep({ !$old{$_} } @answers), 'the old workers answered the slow requests before leaving: ' . join(' ', @answers));
    is(stop_cli($child, 30), 0, 'exit 0');
};

subtest 'max_requests recycles with reuseport lose no request' => sub {
    my $child = start_workers('--max-requests', 40);
    return unless $child->{ready};
    my ($master, $port) = ($child->{pid}, $child->{port});
    is(scalar(my @first = wait_children($master, 2, 30)), 2, 'two workers') or return;

    my $looper = start_looper($port, $dir);
    # Three recycles done (their old workers gone) while the client loops.
    my $done = wait_until(sub { (() = stderr_of($child) =~ /worker \d \(pid \d+\) stopped/g) >= 3 }, 90);
    ok($done, 'three workers were recycled');
    sleep 0.5;
    my $r = stop_looper($looper);
    cmp_ok(scalar @{ $r->{pids} }, '>=', 4, 'the client was served by at least four workers: ' . scalar @{ $r->{pids} });
    is($r->{fail}, 0, "without a single failure in $r->{ok} requests") or diag("errors: $r->{errors}");
    like(stderr_of($child), qr/served max_requests; starting its replacement/,
        'the master started each replacement before stopping the old worker');
    is(scalar(my @kids = wait_children($master, 2, 30)), 2, 'two workers remain');
    is(stop_cli($child, 30), 0, 'exit 0');
};

done_testing;
