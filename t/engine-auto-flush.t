# Commands reach the IO thread in batches even while the app keeps the Perl
# thread busy: once 512 wait, the engine hands them over without Perl's
# end-of-wake flush. An app that queues 600 chunks and then blocks for 1.5 s
# must have its first chunks on the wire during the block, not after it.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::IP;
use IO::Handle;
use POSIX ();
use Time::HiRes qw(time);
use PAGI::Test::Server qw(loop start_server stop_server wait_for);
use Future::AsyncAwait;

my $CHUNKS = 600;
my $BLOCK  = 1.5;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    return if $scope->{type} ne 'http';
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    # Not awaited on purpose: the chunks stay below the high watermark, and
    # the point is that nothing returns to the event loop before the block.
    $send->({ type => 'http.response.body', body => "chunk $_\n", more => 1 }) for 1 .. $CHUNKS;
    select(undef, undef, undef, $BLOCK);    # the Perl thread is busy
    await $send->({ type => 'http.response.body', body => "end\n" });
};
my ($server, $port) = start_server(app => $app);

# The client runs in a child process: the server's loop is this process's.
pipe(my $from_child, my $to_parent) or die "pipe: $!";
my $pid = fork // die "fork: $!";
if (!$pid) {
    close $from_child;
    my $result = eval {
        my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 10) or die "connect: $!";
        print {$sock} "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        my ($buf, $first) = ('', undef);
        alarm 30;
        while (sysread($sock, $buf, 65536, length $buf)) {
            $first //= time;
        }
        my $last = time;
        my $complete = $buf =~ /end\n\r\n0\r\n\r\n\z/ ? 1 : 0;
        sprintf "%.3f %d %d\n", $last - ($first // $last), $complete, length $buf;
    } // "error $@";
    print {$to_parent} $result;
    close $to_parent;
    POSIX::_exit(0);
}
close $to_parent;
$from_child->blocking(0);
my $line = '';
ok wait_for(sub { my $n = sysread($from_child, $line, 256, length $line); defined $n && $n == 0 || $line =~ /\n/ }, 30),
    'the client finished';
waitpid $pid, 0;
diag "client: $line";
my ($spread, $complete) = $line =~ /^([\d.]+) (\d)/;
ok $complete, 'the response arrived whole, chunked, ending with the last body';
cmp_ok $spread // 0, '>=', $BLOCK / 2, 'its first bytes arrived while the app still held the Perl thread';

stop_server($server);
done_testing;
