use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn responses_done split_head start);
use Future::AsyncAwait;
use Digest::MD5 qw(md5_hex);
use File::Temp qw(tempdir);
use POSIX ();
use Symbol ();
use IO::Socket::IP;
use Socket qw(SOL_SOCKET SO_RCVBUF);
use Errno qw(EAGAIN EWOULDBLOCK EINTR);

# Issue 9 item 16: file bodies accept every handle the reference accepts.
# Handles that are not regular files (in-memory scalars, tied handles, a
# FIFO named by `file`) are read in Perl and streamed in chunks with
# backpressure, honouring offset and length; regular files keep the
# engine's sendfile path.

my $handler;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    await $handler->($scope, $receive, $send);
};
my ($server, $port) = start_server(app => $app);

# 5 MB of random bytes, not a multiple of the 64 KiB chunk.
my $SIZE = 5 * 1024 * 1024 + 4321;
my $content = pack 'N*', map { int rand 4294967296 } 1 .. int($SIZE / 4) + 1;
substr($content, $SIZE) = '';

sub fetch {
    my ($path) = @_;
    my $raw = raw_exchange($port, "GET $path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 30)->get;
    return parse_responses($raw);
}

sub slice {
    my ($data, $offset, $length) = @_;
    return '' if $offset >= length $data;
    my $avail = length($data) - $offset;
    return substr($data, $offset, defined $length && $length < $avail ? $length : $avail);
}

# A minimal tied handle over a string, without SEEK, so offsets must be
# reached by reading.
{
    package Tied::StringReader;
    sub TIEHANDLE { my ($class, $data) = @_; return bless { data => $data, pos => 0, reads => 0 }, $class }
    sub READ {
        my ($self, undef, $len, $off) = @_;
        $self->{reads}++;
        $_[1] = '' unless defined $_[1];
        my $chunk = substr($self->{data}, $self->{pos}, $len);
        $self->{pos} += length $chunk;
        substr($_[1], $off // 0) = $chunk;
        return length $chunk;
    }
    sub EOF { $_[0]{pos} >= length $_[0]{data} }
    sub CLOSE { 1 }
}

my @ranges = ([ 0, undef ], [ 0, 100 ], [ 12345, 3 * 65536 + 7 ], [ 65536, undef ], [ $SIZE - 10, 1000 ], [ $SIZE + 5, undef ], [ 500, 0 ]);

subtest 'in-memory handle: offset and length, bytes exact' => sub {
    for my $range (@ranges) {
        my ($offset, $length) = @$range;
        my ($closed_after, $send_error);
        $handler = async sub {
            my ($scope, $receive, $send) = @_;
            open my $fh, '<', \$content or die "in-memory open: $!";
            await $send->(start(200, [ 'content-type', 'application/octet-stream' ]));
            my $f = $send->({ type => 'http.response.body', fh => $fh, offset => $offset,
                              (defined $length ? (length => $length) : ()) });
            await $f->followed_by(sub { Future->done });
            $send_error = $f->failure;
            $closed_after = close $fh;
        };
        my $label = "offset $offset, length " . ($length // 'to EOF');
        my ($r) = fetch('/memory');
        my $want = slice($content, $offset, $length);
        is $r->{status}, 200, "$label: 200";
        ok !$r->{incomplete}, "$label: complete by its framing";
        is length($r->{body}), length($want), "$label: byte count";
        is md5_hex($r->{body}), md5_hex($want), "$label: bytes exact (MD5)";
        ok !$send_error, "$label: the \$send Future succeeded" or diag $send_error;
        ok $closed_after, "$label: the app closed its handle after \$send";
    }
};

subtest 'tied handle without SEEK: offset reached by reading, length honoured' => sub {
    for my $range ([ 0, undef ], [ 70000, 200000 ], [ 3, 5 ], [ $SIZE - 1, undef ]) {
        my ($offset, $length) = @$range;
        my $obj;
        $handler = async sub {
            my ($scope, $receive, $send) = @_;
            my $fh = Symbol::gensym();
            $obj = tie *$fh, 'Tied::StringReader', $content;
            await $send->(start(200));
            await $send->({ type => 'http.response.body', fh => $fh, offset => $offset,
                            (defined $length ? (length => $length) : ()) });
        };
        my $label = "tied, offset $offset, length " . ($length // 'to EOF');
        my ($r) = fetch('/tied');
        my $want = slice($content, $offset, $length);
        is $r->{status}, 200, "$label: 200";
        ok !$r->{incomplete}, "$label: complete";
        is length($r->{body}), length($want), "$label: byte count";
        is md5_hex($r->{body}), md5_hex($want), "$label: bytes exact (MD5)";
        ok $obj && $obj->{reads} > 1, "$label: read through the tie (READ called $obj->{reads} times)";
    }
};

subtest 'a slow reader: the in-memory handle is streamed, not slurped' => sub {
    my ($send_f, $transport, @buffered);
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        $transport = $scope->{'pagi.transport'};
        open my $fh, '<', \$content or die "in-memory open: $!";
        await $send->(start(200, [ 'content-length', $SIZE ]));
        $send_f = $send->({ type => 'http.response.body', fh => $fh });
        await $send_f;
        close $fh;
    };
    # A small receive buffer, and nothing read for a while: the server's
    # writes block and its buffer fills.
    my $sock = IO::Socket::IP->new(
        PeerHost => '127.0.0.1', PeerPort => $port,
        Sockopts => [ [ SOL_SOCKET, SO_RCVBUF, 16 * 1024 ] ],
    ) or die "connect: $@";
    print {$sock} "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    $sock->blocking(0);
    ok wait_for(sub { $transport && $transport->buffered_amount >= $server->{high_watermark} }, 20),
        'the write buffer filled up to the high watermark';
    # Give it time to go wrong: a slurped body would all be queued by now.
    for (1 .. 10) {
        loop()->delay_future(after => 0.1)->get;
        push @buffered, $transport->buffered_amount;
    }
    ok $send_f && !$send_f->is_ready, 'the $send for the body is still waiting for the client';
    my $max = (sort { $b <=> $a } @buffered)[0];
    cmp_ok $max, '<', 1024 * 1024, "at most about a watermark and a chunk is buffered (max $max bytes of $SIZE)";
    my ($raw, $eof) = ('', 0);
    my $deadline = time + 90;
    while (!$eof && time < $deadline) {
        loop()->loop_once(0.002);
        my $n = sysread($sock, my $chunk, 64 * 1024);
        if (!defined $n) {
            next if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
            fail("read error: $!");
            last;
        }
        $eof = 1 unless $n;
        $raw .= $chunk;
    }
    ok $eof, 'the server finished and closed';
    my ($r) = parse_responses($raw);
    is length($r->{body}), $SIZE, 'then every byte arrives';
    is md5_hex($r->{body}), md5_hex($content), 'bytes exact (MD5)';
    ok wait_for(sub { $send_f->is_ready }, 10) && $send_f->is_done, 'and the $send Future is done';
    close $sock;
};

subtest 'file naming a FIFO is read and streamed too' => sub {
    my $dir = tempdir(CLEANUP => 1);
    my $fifo = "$dir/pipe";
    POSIX::mkfifo($fifo, 0600) or die "mkfifo: $!";
    my $payload = substr($content, 0, 300_000);
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open my $w, '>:raw', $fifo or POSIX::_exit(1);
        print {$w} $payload;
        close $w;
        POSIX::_exit(0);
    }
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $send->(start(200));
        await $send->({ type => 'http.response.body', file => $fifo, offset => 10, length => 200_000 });
    };
    my ($r) = fetch('/fifo');
    waitpid $pid, 0;
    is $r->{status}, 200, 'status 200';
    is md5_hex($r->{body}), md5_hex(substr($payload, 10, 200_000)), 'offset and length over a FIFO, bytes exact';
};

subtest 'a handle that fails to read fails $send and cuts the connection' => sub {
    {
        package Tied::Broken;
        sub TIEHANDLE { my $n = 0; bless \$n, shift }
        sub READ { my $self = shift; die "disk on fire\n" if $$self++ >= 2; $_[0] = 'x' x $_[1]; return $_[1] }
    }
    my $error;
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        my $broken = Symbol::gensym();
        tie *$broken, 'Tied::Broken';
        await $send->(start(200, [ 'content-length', 1_000_000 ]));
        my $f = $send->({ type => 'http.response.body', fh => $broken });
        await $f->followed_by(sub { Future->done });
        $error = $f->failure;
    };
    my ($r) = fetch('/broken');
    like $error // '', qr/\Ahttp\.response\.body: cannot read fh: disk on fire/, 'the $send Future fails naming the read error';
    ok $r->{incomplete}, 'the client sees a short body: the connection was cut';
};

subtest 'a handle whose first read fails: only $send fails, the app can still answer' => sub {
    {
        package Tied::DeadOnArrival;
        sub TIEHANDLE { bless {}, shift }
        sub READ { die "no medium\n" }
    }
    my $error;
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        my $dead = Symbol::gensym();
        tie *$dead, 'Tied::DeadOnArrival';
        await $send->(start(200, [ 'content-type', 'text/plain' ]));
        my $f = $send->({ type => 'http.response.body', fh => $dead });
        await $f->followed_by(sub { Future->done });
        $error = $f->failure;
        await $send->({ type => 'http.response.body', body => "fallback\n" });
    };
    my ($r) = fetch('/dead');
    like $error // '', qr/cannot read fh: no medium/, 'the $send Future fails naming the error';
    is $r->{body}, "fallback\n", 'nothing of the handle was written; the fallback body was';
    ok !$r->{incomplete}, 'a complete response';
};

subtest 'regular files still go to the engine (sendfile), other handles do not' => sub {
    my $dir = tempdir(CLEANUP => 1);
    my $path = "$dir/data.bin";
    open my $out, '>:raw', $path or die "write: $!";
    print {$out} $content;
    close $out;
    # Count the handles read in Perl.
    my $streamed = 0;
    no warnings 'redefine';
    my $orig = \&PAGI::Server::HTTP::_stream_handle;
    local *PAGI::Server::HTTP::_stream_handle = sub { $streamed++; goto &$orig };
    my $kind;
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        my $fh;
        if ($kind eq 'file') { open $fh, '<:raw', $path or die "open: $!" }
        else                 { open $fh, '<', \$content or die "open: $!" }
        await $send->(start(200));
        await $send->({ type => 'http.response.body', fh => $fh, offset => 7, length => 1_000_000 });
        close $fh;
    };
    for my $case ([ file => 0 ], [ memory => 1 ]) {
        ($kind, my $want) = @$case;
        $streamed = 0;
        my ($r) = fetch("/$kind");
        is md5_hex($r->{body}), md5_hex(substr($content, 7, 1_000_000)), "$kind: bytes exact";
        is $streamed, $want, $want ? "$kind: read in Perl" : "$kind: handed to the engine, not read in Perl";
    }
};

stop_server($server);
done_testing;
