use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use PAGI::Test::Server qw(loop start_server stop_server parse_responses);
use Future::AsyncAwait;
use IO::Async::Timer::Periodic;
use IO::Select;
use IO::Socket::IP;
use Digest::MD5;
use POSIX ();
use Time::HiRes ();

# Flow control in both directions: a client that does not read must stall
# the app's $send (instead of the server buffering the whole response), and
# an app that does not call $receive must stall the upload (instead of the
# server reading the whole body into memory).

my $CHUNK = 64 * 1024;
my $MiB   = 1024 * 1024;

# Chunk $i is the 32-bit big-endian counter $i repeated: any lost, duplicated
# or reordered chunk changes the digest.
sub pattern_chunk { my ($i, $len) = @_; substr(pack('N', $i) x (($len // $CHUNK) / 4 + 1), 0, $len // $CHUNK) }

sub expected_digest {
    my ($count, $len) = @_;
    my $md5 = Digest::MD5->new;
    $md5->add(pattern_chunk($_, $len)) for 0 .. $count - 1;
    return $md5->hexdigest;
}

# Largest value of $field seen over every live request of $server's engine.
sub sample_max {
    my ($server, $field, $max) = @_;
    my $engine = $server->engine or return $max;
    my $total = $engine->stats->{requests_total};
    for my $id (1 .. $total) {
        my $s = $engine->stats($id) or next;
        $max = $s->{$field} if !defined $max || $s->{$field} > $max;
    }
    return $max;
}

sub connect_raw {
    my ($port) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Type => Socket::SOCK_STREAM())
        or die "connect to $port: $@";
    return $sock;
}

# Decodes a chunked body from offset $pos of $raw into an MD5 digest and a
# length without copying the whole body.
sub dechunk_digest {
    my ($raw, $pos) = @_;
    my $md5 = Digest::MD5->new;
    my ($len, $complete) = (0, 0);
    while (1) {
        my $eol = index($$raw, "\r\n", $pos);
        last if $eol < 0;
        my $size_line = substr($$raw, $pos, $eol - $pos);
        last unless $size_line =~ /\A([0-9a-fA-F]+)/;
        my $n = hex $1;
        $pos = $eol + 2;
        if ($n == 0) { $complete = substr($$raw, $pos, 2) eq "\r\n"; last }
        last if $pos + $n + 2 > length $$raw;
        $md5->add(substr($$raw, $pos, $n));
        $len += $n;
        last unless substr($$raw, $pos + $n, 2) eq "\r\n";
        $pos += $n + 2;
    }
    return ($md5->hexdigest, $len, $complete);
}

my $loop = loop();
my @children;
END {
    for my $pid (@children) {
        kill 'KILL', $pid;
        waitpid $pid, 0;
    }
}

subtest 'a client that stops reading makes $send wait; the stream resumes intact' => sub {
    my $chunks = 800;    # 50 MiB in 64 KiB chunks
    my (@send_ready, $finished, $server);
    my $max_buffered;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        await $send->({ type => 'http.response.start', status => 200,
                        headers => [ [ 'content-type', 'application/octet-stream' ] ] });
        for my $i (0 .. $chunks - 1) {
            my $f = $send->({ type => 'http.response.body', body => pattern_chunk($i), more => 1 });
            push @send_ready, $f->is_ready ? 1 : 0;
            $max_buffered = sample_max($server, 'buffered', $max_buffered);
            await $f;
        }
        await $send->({ type => 'http.response.body', body => '', more => 0 });
        $finished = 1;
    };
    ($server) = start_server(app => $app);
    my $port = $server->port;
    my ($high) = $server->engine->write_watermarks;
    is($high, 65536, 'default high watermark reaches the engine');

    my $sampler = IO::Async::Timer::Periodic->new(
        interval => 0.005,
        on_tick  => sub { $max_buffered = sample_max($server, 'buffered', $max_buffered) },
    );
    $loop->add($sampler);
    $sampler->start;

    my $sock = connect_raw($port);
    syswrite($sock, "GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n") or die "write: $!";
    $sock->blocking(0);

    # The client reads nothing for two seconds while the app keeps sending.
    $loop->delay_future(after => 2)->get;

    my $pending = grep { !$_ } @send_ready;
    ok(@send_ready > 0, 'the app started streaming') or diag('no $send recorded');
    cmp_ok($pending, '>=', 1, 'at least one $send returned a pending Future while the client did not read');
    ok(!$finished, 'the app has not finished while the client does not read');
    cmp_ok(scalar(@send_ready), '<', $chunks, 'the app is stalled before its last chunk');
    ok(defined $max_buffered, 'the buffered size of the live request was sampled');
    cmp_ok($max_buffered // 0, '<=', $high + $MiB, 'response bytes buffered by the engine stay near the high watermark');
    diag(sprintf 'sent %d chunks (%d pending) before the client read; max buffered %d',
        scalar @send_ready, $pending, $max_buffered // -1);

    # Now read everything.
    my $raw = '';
    my $eof = 0;
    my $deadline = Time::HiRes::time() + 60;
    while (!$eof && Time::HiRes::time() < $deadline) {
        $loop->loop_once(0.01);
        while (1) {
            my $n = sysread($sock, my $buf, 256 * 1024);
            if (!defined $n) { last if $!{EAGAIN} || $!{EWOULDBLOCK} || $!{EINTR}; $eof = 1; diag("read error: $!"); last }
            if ($n == 0) { $eof = 1; last }
            $raw .= $buf;
        }
    }
    ok($eof, 'the server closed the connection after the response (within 60 s)');
    ok(wait_finished(\$finished, 10), 'the app finished once the client read');
    $sampler->stop;
    $loop->remove($sampler);
    close $sock;

    my $head_end = index($raw, "\r\n\r\n");
    ok($head_end > 0, 'got a response head') or return;
    my ($res) = parse_responses(substr($raw, 0, $head_end + 4));
    is($res->{status}, 200, 'status 200');
    like($res->{header}{'transfer-encoding'} // '', qr/chunked/, 'streamed with chunked framing');
    my ($digest, $len, $complete) = dechunk_digest(\$raw, $head_end + 4);
    is($len, $chunks * $CHUNK, 'body is exactly 50 MiB');
    is($digest, expected_digest($chunks), 'body content is intact and in order');
    ok($complete, 'the chunked body ends with the terminating chunk');
    is(scalar(@send_ready), $chunks, 'every chunk went through $send');
    stop_server($server);
};

sub wait_finished {
    my ($flag, $timeout) = @_;
    return PAGI::Test::Server::wait_for(sub { $$flag }, $timeout);
}

subtest 'an app that does not call $receive stalls the upload; the body arrives whole later' => sub {
    my $body_len = 50 * $MiB;
    my ($receiving, $received, $server);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        await $loop->delay_future(after => 3);
        $receiving = 1;
        my ($n, $events, $md5) = (0, 0, Digest::MD5->new);
        while (1) {
            my $ev = await $receive->();
            last unless $ev->{type} eq 'http.request';
            $events++;
            $n += length $ev->{body};
            $md5->add($ev->{body});
            last unless $ev->{more};
        }
        $received = { bytes => $n, events => $events, md5 => $md5->hexdigest };
        my $text = "received $n";
        await $send->({ type => 'http.response.start', status => 200,
                        headers => [ [ 'content-type', 'text/plain' ], [ 'content-length', length $text ] ] });
        await $send->({ type => 'http.response.body', body => $text });
    };
    ($server) = start_server(app => $app, max_body_size => 60_000_000);
    my $port = $server->port;

    # The parent owns the socket and reads the response; a forked child writes
    # the request (head and 50 MiB body) on the same socket with blocking writes.
    my $sock = connect_raw($port);
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        alarm 90;
        local $SIG{PIPE} = 'DEFAULT';
        my $ok = defined syswrite($sock, "POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: $body_len\r\n"
            . "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n");
        my $i = 0;
        while ($ok && $i * $CHUNK < $body_len) {
            my $chunk = pattern_chunk($i++);
            my $off = 0;
            while ($off < length $chunk) {
                my $w = syswrite($sock, $chunk, length($chunk) - $off, $off);
                if (!defined $w) { next if $!{EINTR}; $ok = 0; last }
                $off += $w;
            }
        }
        POSIX::_exit($ok ? 0 : 1);
    }
    push @children, $pid;

    my ($max_read, $samples) = (undef, 0);
    my $sampler = IO::Async::Timer::Periodic->new(
        interval => 0.01,
        on_tick  => sub {
            return if $receiving;
            my $m = sample_max($server, 'bytes_read', undef);
            return unless defined $m;
            $samples++;
            $max_read = $m if !defined $max_read || $m > $max_read;
        },
    );
    $loop->add($sampler);
    $sampler->start;

    ok(PAGI::Test::Server::wait_for(sub { $receiving }, 10), 'the app starts reading after its 3 s pause');
    $sampler->stop;
    $loop->remove($sampler);
    cmp_ok($samples, '>', 50, 'bytes read was sampled while the app was not reading');
    cmp_ok($max_read // 0, '>', 0, 'the engine read the request head');
    cmp_ok($max_read // 0, '<=', 64 * 1024 + 8192,
        'the engine read at most 64 KiB (plus the head) ahead while the app did not ask for the body');
    diag('max bytes_read before $receive: ' . ($max_read // 'none'));

    # Read the response with select + blocking sysread (the writer child shares
    # the socket's file status flags, so it stays blocking).
    my $raw = '';
    my $sel = IO::Select->new($sock);
    my $deadline = Time::HiRes::time() + 60;
    while (Time::HiRes::time() < $deadline) {
        $loop->loop_once(0.01);
        next unless $sel->can_read(0);
        my $n = sysread($sock, my $buf, 65536);
        last unless $n;
        $raw .= $buf;
    }
    close $sock;
    my ($res) = parse_responses($raw);
    ok($res, 'got a response within 60 s') or return;
    is($res->{status}, 200, 'status 200');
    is($res->{body}, "received $body_len", 'the app counted the whole 50 MiB body');
    ok($received, 'the app read the body to the end') or return;
    is($received->{bytes}, $body_len, 'body length seen by the app');
    is($received->{md5}, expected_digest($body_len / $CHUNK), 'body content seen by the app is intact');
    cmp_ok($received->{events}, '>', 1, 'the body arrived in several http.request events');

    my $reaped = 0;
    PAGI::Test::Server::wait_for(sub { $reaped ||= waitpid($pid, POSIX::WNOHANG()) == $pid; $reaped }, 10);
    ok($reaped, 'the writer child exited');
    is($? >> 8, 0, 'the writer child wrote the whole request') if $reaped;
    @children = grep { $_ != $pid } @children if $reaped;
    stop_server($server);
};

subtest 'Net::Async::HTTP downloads a 5 MiB streamed response intact' => sub {
    unless (eval { require Net::Async::HTTP; 1 }) {
        return fail('CI=true and Net::Async::HTTP is not installed: ./setup.sh installs it') if ($ENV{CI} // '') eq 'true';
        plan skip_all => 'Net::Async::HTTP not installed';
    }
    my $chunks = 80;    # 5 MiB
    my $finished;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        await $send->({ type => 'http.response.start', status => 200,
                        headers => [ [ 'content-type', 'application/octet-stream' ] ] });
        for my $i (0 .. $chunks - 1) {
            await $send->({ type => 'http.response.body', body => pattern_chunk($i), more => 1 });
        }
        await $send->({ type => 'http.response.body', body => '', more => 0 });
        $finished = 1;
    };
    my ($server, $port) = start_server(app => $app);
    my $http = Net::Async::HTTP->new(timeout => 30, max_connections_per_host => 1);
    $loop->add($http);
    my $res = $http->GET("http://127.0.0.1:$port/five")->get;
    is($res->code, 200, 'status 200');
    is(length($res->content), $chunks * $CHUNK, 'content is 5 MiB');
    is(Digest::MD5::md5_hex($res->content), expected_digest($chunks), 'content is intact');
    ok($finished, 'the app finished');
    $loop->remove($http);
    stop_server($server);
};

done_testing;
