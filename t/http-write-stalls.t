# The one write path (issue 9 items 1 and 2): a client that stops reading
# can no longer park a connection out of reach. Shutdown completes within
# the grace, a write with no progress for `timeout` closes the connection
# and frees its slot, `request_timeout` is a stall timer (a slow but steady
# download completes), and TLS output is flushed after every batch.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use PAGI::Test::Server qw(loop start_server stop_server wait_for in_child);
use PAGI::Test::CLI qw(start_cli stop_cli stderr_of wait_until);
use PAGI::Test::PKI;
use PAGI::Server;
use Future::AsyncAwait;
use File::Temp ();
use IO::Socket::IP;
use IO::Select;
use Socket qw(SOL_SOCKET SO_RCVBUF);
use Time::HiRes qw(time sleep);
use POSIX ();
no warnings 'once';

$SIG{PIPE} = 'IGNORE';
my $dir = File::Temp->newdir;

# An app file for pagi-server: /big streams 64 MiB in 256 KiB chunks (each
# send awaited, so it waits on backpressure), /sse sends an event every
# 50 ms, anything else answers "ok".
my $app_file = "$dir/app.pl";
{
    open my $fh, '>', $app_file or die $!;
    print {$fh} <<'APP';
use strict; use warnings; use Future::AsyncAwait; use IO::Async::Loop;
my $chunk = 'x' x (256 * 1024);
sub {
    my ($scope, $receive, $send) = @_;
    return (async sub {
        if ($scope->{type} eq 'lifespan') {
            while (1) {
                my $e = await $receive->();
                if ($e->{type} eq 'lifespan.startup') { await $send->({ type => 'lifespan.startup.complete' }) }
                else { await $send->({ type => 'lifespan.shutdown.complete' }); return }
            }
        }
        if ($scope->{type} eq 'sse') {
            await $send->({ type => 'sse.start', status => 200 });
            my $loop = IO::Async::Loop->new;
            for my $n (1 .. 100000) {
                await $send->({ type => 'sse.send', data => ('y' x 4000) . " $n" });
                await $loop->delay_future(after => 0.05) if $n % 50 == 0;
            }
            return;
        }
        if ($scope->{path} eq '/big') {
            await $send->({ type => 'http.response.start', status => 200, headers => [] });
            for my $i (1 .. 256) { await $send->({ type => 'http.response.body', body => $chunk, more => 1 }) }
            await $send->({ type => 'http.response.body', body => '' });
            return;
        }
        await $send->({ type => 'http.response.start', status => 200, headers => [['content-type', 'text/plain']] });
        await $send->({ type => 'http.response.body', body => 'ok' });
    })->();
};
APP
}

# A client with a small receive buffer that sends one request and never reads.
sub stalled_client {
    my ($port, $request, $rcvbuf) = @_;
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Type => Socket::SOCK_STREAM())
        or die "connect: $@";
    # A tiny receive buffer fills at once (never used by readers: windows
    # below the loopback MSS make the kernel delay window updates).
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, 8192) unless defined $rcvbuf && !$rcvbuf;
    $s->autoflush(1);
    print {$s} $request;
    return $s;
}

sub get { "GET $_[0] HTTP/1.1\r\nHost: 127.0.0.1\r\n" . ($_[1] // '') . "\r\n" }

# Reads a response head; returns the bytes read so far.
sub read_some_bytes {
    my ($s, $want, $timeout) = @_;
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + $timeout;
    while (length $buf < $want && (my $left = $deadline - time) > 0) {
        last unless $sel->can_read($left);
        sysread($s, $buf, 65536, length $buf) or last;
    }
    return $buf;
}

subtest 'SIGTERM with clients that stopped reading: exit within shutdown_timeout plus a little' => sub {
    my $child = start_cli([$app_file, '--shutdown-timeout', 2, '--timeout', 60]);
    ok($child->{ready}, 'pagi-server is up') or return diag stderr_of($child);
    my @stalled = map { stalled_client($child->{port}, get('/big')) } 1 .. 3;
    push @stalled, stalled_client($child->{port}, get('/events', "Accept: text/event-stream\r\n"));
    # Give the server time to fill the socket buffers (it waits on backpressure then).
    ok(wait_until(sub { length(read_some_bytes($stalled[0], 1, 0.05)) }, 10), 'the big responses started');
    sleep 1;
    my $t0 = time;
    kill 'TERM', $child->{pid};
    my $gone = wait_until(sub { PAGI::Test::CLI::_exited($child) }, 15);
    my $took = time - $t0;
    ok($gone, 'the process exited');
    cmp_ok($took, '<', 2 + 4, sprintf 'within the 2 s grace plus a few seconds (took %.1f s)', $took);
    is($child->{status} >> 8, 0, 'exit code 0') if $gone;
    close $_ for @stalled;
    stop_cli($child, 1);
};

subtest 'no write progress for `timeout` seconds closes the connection and frees its slot' => sub {
    my $chunk = 'z' x (256 * 1024);
    my %seen;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        return if $scope->{type} ne 'http';
        await $send->({ type => 'http.response.start', status => 200, headers => [] });
        my $n = 0;
        while (1) {
            await $send->({ type => 'http.response.body', body => $chunk, more => 1 });
            last if ++$n > 400;
        }
        my $ev;
        do { $ev = await $receive->() } until $ev->{type} ne 'http.request';
        $seen{disconnect} = $ev->{type};
    };
    my ($server, $port) = start_server(app => $app, timeout => 2, max_connections => 5);
    my $s = stalled_client($port, get('/'));
    ok(wait_for(sub { $server->engine->stats->{connections_active} == 1 }, 10), 'the connection is open');
    my $t0 = time;
    ok(wait_for(sub { $server->engine->stats->{connections_active} == 0 }, 20), 'the stalled connection was closed');
    my $took = time - $t0;
    cmp_ok($took, '>=', 1.5, sprintf 'not before the stall timer (%.1f s)', $took);
    ok(wait_for(sub { $seen{disconnect} }, 10), 'the app learned of it');
    is($seen{disconnect}, 'http.disconnect', 'as http.disconnect');
    # The slot is free again: a fresh client is served.
    my $c = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port) or die $!;
    close $s;
    stop_server($server);
};

subtest 'request_timeout is a stall timer: a slow but steady download completes' => sub {
    # 40 MB: more than the kernel's socket buffers hold, so the server's
    # writes wait on the client for longer than request_timeout in total.
    my $body = join '', map { sprintf "%07d\n", $_ } 1 .. 5_000_000;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        return if $scope->{type} ne 'http';
        await $send->({ type => 'http.response.start', status => 200, headers => [] });
        await $send->({ type => 'http.response.body', body => $body });
    };
    my ($server, $port) = start_server(app => $app, request_timeout => 1);
    my $t0 = time;
    my $got = in_child(sub {
        my $s = stalled_client($port, get('/', "Connection: close\r\n"), 0);
        my $got = '';
        my $sel = IO::Select->new($s);
        # About 12 MB/s: the whole download takes longer than request_timeout,
        # but bytes move all the time.
        while (time - $t0 < 30) {
            last unless $sel->can_read(5);
            my $n = sysread($s, $got, 65536, length $got);
            last unless $n;
            sleep 0.004;
        }
        return $got;
    }, 40) // '';
    my $took = time - $t0;
    my ($head, $rest) = split /\r\n\r\n/, $got, 2;
    like($head // '', qr{\AHTTP/1\.1 200}, 'a 200');
    is(length($rest // ''), length $body, sprintf 'the whole body arrived (%.1f s, longer than request_timeout)', $took);
    ok(($rest // '') eq $body, 'byte for byte');
    cmp_ok($took, '>', 1, 'the download outlasted request_timeout');
    stop_server($server);
};

# TLS: throw-away certificates (a CA and a server certificate).
my $have_tls = eval { require IO::Socket::SSL; 1 } && grep { -x "$_/openssl" } split /:/, $ENV{PATH} // '';
fail('CI=true and openssl or IO::Socket::SSL is missing: ./setup.sh installs them')
    if !$have_tls && ($ENV{CI} // '') eq 'true';
SKIP: {
    skip 'IO::Socket::SSL or openssl missing', 3 unless $have_tls;
    my $pki = PAGI::Test::PKI->new(dir => "$dir");
    $pki->ca('ca', 'PAGI Stalls CA');
    $pki->leaf('server', '/CN=localhost');

    # A TLS client whose receive buffer (set before connecting) is small
    # enough that the server's socket blocks while the client waits.
    my $tls_client = sub {
        my ($port) = @_;
        socket(my $raw, Socket::PF_INET(), Socket::SOCK_STREAM(), 0) or die "socket: $!";
        setsockopt($raw, SOL_SOCKET, SO_RCVBUF, 256 * 1024) or die "setsockopt: $!";
        connect($raw, Socket::pack_sockaddr_in($port, Socket::inet_aton('127.0.0.1'))) or die "connect: $!";
        IO::Socket::SSL->start_SSL($raw, SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_NONE(), Timeout => 10)
            or die "TLS handshake: " . ($IO::Socket::SSL::SSL_ERROR // '');
        return $raw;
    };

    subtest 'TLS: a slow reader gets an 8 MB keep-alive body completely and promptly' => sub {
        my $body = 'q' x (8 * 1024 * 1024 - 7) . 'the-end';
        my $app = async sub {
            my ($scope, $receive, $send) = @_;
            return if $scope->{type} ne 'http';
            await $send->({ type => 'http.response.start', status => 200, headers => [] });
            await $send->({ type => 'http.response.body', body => $body });
        };
        # A long keep-alive timeout: the tail must not wait for it.
        my ($server, $port) = start_server(app => $app, ssl => { cert_file => "$dir/server.pem", key_file => "$dir/server.key" },
            timeout => 60);
        my $t0 = time;
        my $want;
        my $got = in_child(sub {
            my $s = $tls_client->($port);
            print {$s} get('/');
            sleep 1;    # let the server's socket fill and block
            my $got = '';
            while (time - $t0 < 40) {
                my $n = sysread($s, $got, 16384, length $got);
                last unless $n;
                if (!defined $want && (my $at = index($got, "\r\n\r\n")) >= 0) {
                    my ($len) = $got =~ /content-length: (\d+)/i;
                    $want = $at + 4 + ($len // 0);
                }
                last if defined $want && length $got >= $want;
                sleep 0.002;
            }
            return $got;
        }, 50) // '';
        my $took = time - $t0;
        if ((my $at = index($got, "\r\n\r\n")) >= 0) {
            my ($len) = $got =~ /content-length: (\d+)/i;
            $want = $at + 4 + ($len // 0);
        }
        ok(defined $want && length $got == $want, sprintf 'every byte arrived (%d of %d, %.1f s)', length $got, $want // -1, $took);
        like(substr($got, -7), qr/the-end/, 'including the tail');
        cmp_ok($took, '<', 40, 'well before the 60 s keep-alive timeout');
        stop_server($server);
    };

    subtest 'TLS: SSE events arrive as they are sent, also after the socket was full' => sub {
        my $app = async sub {
            my ($scope, $receive, $send) = @_;
            return if $scope->{type} ne 'sse';
            await $send->({ type => 'sse.start', status => 200 });
            # A burst the client does not read at first fills the socket...
            for my $n (1 .. 600) {
                await $send->({ type => 'sse.send', data => ('b' x 8000) . " $n" });
            }
            # ...then the last event: it must not wait in the TLS layer for a
            # write that never comes.
            await $send->({ type => 'sse.send', data => 'the last event' });
            await loop()->delay_future(after => 30);
        };
        my ($server, $port) = start_server(app => $app, ssl => { cert_file => "$dir/server.pem", key_file => "$dir/server.key" });
        my $t0 = time;
        my $report = in_child(sub {
            my $s = $tls_client->($port);
            print {$s} get('/', "Accept: text/event-stream\r\n");
            sleep 1;
            my $got = '';
            my $sel = IO::Select->new($s);
            while (time - $t0 < 15) {
                $sel->can_read(0.5) or next unless $s->pending;
                my $n = sysread($s, $got, 65536, length $got);
                last if defined $n && $n == 0;
                return sprintf('last=%.2f bursts=%d', time - $t0, scalar(() = $got =~ /^data: b+ \d+$/mg))
                    if $got =~ /data: the last event\n\n/;
            }
            return 'bursts=' . scalar(() = $got =~ /^data: b+ \d+$/mg);
        }, 25) // '';
        like($report, qr/bursts=600/, 'every burst event arrived') or diag $report;
        my ($last) = $report =~ /last=([\d.]+)/;
        ok(defined $last, 'the last event arrived while the stream stays open');
        cmp_ok($last // 99, '<', 10, 'promptly');
        stop_server($server);
    };
    subtest 'TLS: handshakes in progress hold a connection slot; over the cap a TLS client reads its 503' => sub {
        my $app = async sub {
            my ($scope, $receive, $send) = @_;
            return if $scope->{type} ne 'http';
            await $send->({ type => 'http.response.start', status => 200, headers => [] });
            await $send->({ type => 'http.response.body', body => 'served' });
        };
        my ($server, $port) = start_server(app => $app, max_connections => 2, header_timeout => 20,
            ssl => { cert_file => "$dir/server.pem", key_file => "$dir/server.key" });
        # Two clients that connect and never start their handshake. The kernel
        # queues connections in order, so the engine takes these two first.
        my @silent = map { IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port) or die $! } 1 .. 2;
        # One TLS request, read to the close, from a child process.
        my $tls_get = sub {
            in_child(sub {
                my $s = $tls_client->($port);
                print {$s} get('/', "Connection: close\r\n");
                my $got = '';
                while (1) { my $n = sysread($s, $got, 65536, length $got); last unless $n }
                return $got;
            }, 20) // '';
        };
        my $report = $tls_get->();
        like($report, qr{\AHTTP/1\.1 503 }, 'the third client gets a 503, over TLS');
        like($report, qr/retry-after: 5/i, 'with Retry-After');
        close $_ for @silent;
        my $after = $tls_get->();
        like($after, qr{\AHTTP/1\.1 200 .*served\z}s, 'once they left, a client is served');
        stop_server($server);
    };
}

done_testing;
