# `pagi-server app.psgi`: a PSGI file is wrapped in PAGI::App::WrapPSGI.
# AnyEvent timers run on the server's loop; psgi.multiprocess under
# --workers; a 100 MB upload goes through psgi.input without the server's
# memory growing by the body size (spooled to a temp file).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server ();    # the time bound
use PAGI::Test::CLI qw(start_cli stop_cli http_get_cli wait_until);
use File::Temp ();
use Digest::MD5 ();
use IO::Socket::IP;
use IO::Select;
use Time::HiRes qw(time);

BEGIN {
    unless (eval { require AnyEvent; require AnyEvent::Impl::IOAsync; 1 }) {
        die "CI: AnyEvent (libanyevent-perl) is required\n" if $ENV{CI};
        plan skip_all => 'AnyEvent is not installed';
    }
}

my $dir = File::Temp->newdir;
my $file = "$dir/app.psgi";
open my $fh, '>', $file or die $!;
print {$fh} <<'PSGI';
use strict; use warnings;
use AnyEvent;
use Digest::MD5;
my %timers;
sub {
    my ($env) = @_;
    if ($env->{PATH_INFO} eq '/ae') {
        # A psgi.nonblocking app as written for Twiggy.
        return sub {
            my ($responder) = @_;
            my $writer = $responder->([ 200, [ 'Content-Type' => 'text/plain' ] ]);
            $writer->write("tick0\n");
            my $n = 0;
            $timers{$writer} = AnyEvent->timer(after => 0.2, interval => 0.2, cb => sub {
                $writer->write('tick' . ++$n . "\n");
                if ($n == 3) { delete $timers{$writer}; $writer->close }
            });
        };
    }
    if ($env->{PATH_INFO} eq '/upload') {
        my $md5 = Digest::MD5->new;
        my ($total, $in) = (0, $env->{'psgi.input'});
        while (my $n = $in->read(my $buf, 65536)) { $total += $n; $md5->add($buf) }
        return [ 200, [ 'Content-Type' => 'text/plain' ], [ join ' ', $total, $md5->hexdigest, $env->{CONTENT_LENGTH}, ref($in) ] ];
    }
    return [ 200, [ 'Content-Type' => 'text/plain' ],
             [ "psgi mp=$env->{'psgi.multiprocess'} model=" . ($AnyEvent::MODEL // 'none') ] ];
};
PSGI
close $fh;

sub rss_kb {
    my ($pid) = @_;
    open my $st, '<', "/proc/$pid/status" or return undef;
    while (<$st>) { return $1 if /^VmRSS:\s+(\d+)/ }
    return undef;
}

subtest 'pagi-server app.psgi serves the PSGI app' => sub {
    my $child = start_cli([ $file, '-q', '--max-body-size', 200_000_000 ], env => { PAGI_ENV => 'production' });
    ok $child->{ready}, 'server up' or diag PAGI::Test::CLI::stderr_of($child);
    my $r = http_get_cli($child->{port}, '/');
    is $r && $r->{body}, 'psgi mp=0 model=none', 'a PSGI response; one process: psgi.multiprocess 0';

    # AnyEvent timers on the server's loop, each tick a chunk.
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $child->{port}) or die $@;
    syswrite $sock, "GET /ae HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    my ($raw, @seen) = ('');
    my $sel = IO::Select->new($sock);
    my $deadline = time + 15;
    while (time < $deadline && $sel->can_read($deadline - time)) {
        sysread($sock, $raw, 65536, length $raw) or last;
        push @seen, [ time, $raw =~ /(tick\d)\n(?!.*tick)/s ? $1 : '' ];
    }
    like $raw, qr/tick0\n.*tick1\n.*tick2\n.*tick3\n/s, 'AnyEvent->timer fired in the PSGI app';
    my ($t0) = grep { $_->[1] eq 'tick0' } @seen;
    my ($t3) = grep { $_->[1] eq 'tick3' } @seen;
    ok $t0 && $t3 && $t3->[0] - $t0->[0] > 0.3, 'ticks arrived as they were written';
    $r = http_get_cli($child->{port}, '/');
    is $r && $r->{body}, 'psgi mp=0 model=AnyEvent::Impl::IOAsync', 'AnyEvent uses the IO::Async backend';

    # 100 MB upload, written in pieces; the server's RSS stays far below it.
    my $size = 100 * 1024 * 1024;
    my $before = rss_kb($child->{pid});
    $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $child->{port}) or die $@;
    syswrite $sock, "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Type: application/octet-stream\r\nContent-Length: $size\r\nConnection: close\r\n\r\n";
    my $piece = join '', map { chr($_ % 251) } 0 .. 65535;
    my $md5 = Digest::MD5->new;
    my ($sent, $peak) = (0, $before);
    while ($sent < $size) {
        my $n = syswrite($sock, $piece) // die "write: $!";
        $md5->add(substr $piece, 0, $n);
        $sent += $n;
        if (($sent >> 20) % 8 == 0) { my $now = rss_kb($child->{pid}); $peak = $now if $now && $now > $peak }
    }
    $raw = '';
    $sel = IO::Select->new($sock);
    $deadline = time + 60;
    while (time < $deadline && $sel->can_read($deadline - time)) { sysread($sock, $raw, 65536, length $raw) or last }
    my $now = rss_kb($child->{pid});
    $peak = $now if $now && $now > $peak;
    my ($body) = $raw =~ /\r\n\r\n(.*)\z/s;
    is $body, join(' ', $size, $md5->hexdigest, $size, 'GLOB'), 'psgi.input has all 100 MB, byte for byte';
    cmp_ok $peak - $before, '<', 40 * 1024, "server RSS grew by less than 40 MB (before $before kB, peak $peak kB)";
    stop_cli($child);
};

subtest 'psgi.multiprocess under --workers' => sub {
    my $child = start_cli([ $file, '-q', '--workers', 2 ], env => { PAGI_ENV => 'production' });
    ok $child->{ready}, 'server up' or diag PAGI::Test::CLI::stderr_of($child);
    my $r;
    wait_until(sub { $r = http_get_cli($child->{port}, '/'); $r && $r->{status} == 200 }, 20);
    like $r && $r->{body}, qr/\Apsgi mp=1 /, 'psgi.multiprocess 1 in a worker';
    stop_cli($child);
};

subtest 'a .psgi file that does not return an app' => sub {
    my $bad = "$dir/bad.psgi";
    open my $b, '>', $bad or die $!;
    print {$b} "42;\n";
    close $b;
    my $res = PAGI::Test::CLI::run_cli([ $bad, '-q' ]);
    is $res->{exit}, 2, 'exit 2';
    like $res->{stderr}, qr/PSGI file .*bad\.psgi must return a code reference/, 'one line naming the problem';
};

done_testing;
