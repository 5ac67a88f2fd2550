use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses http_get wait_for);
use PAGI::Test::HTTP qw(open_conn responses_done split_head start);
use Future::AsyncAwait;
use Digest::MD5 qw(md5_hex);
use File::Temp qw(tempdir);
use IO::Socket::IP;
use Socket qw(SOL_SOCKET SO_RCVBUF);
use Errno qw(EAGAIN EWOULDBLOCK EINTR);

# File bodies (PAGI-SPEC 3.1.2, issue 3 "File responses"): `file` and `fh`
# with `offset`/`length`, served by the engine.
#
# sync_file_threshold: accepted (PAGI::Server::Config keeps it so configs
# written for the reference server load) but unneeded here: the engine sends
# file bytes with sendfile(2) on its own I/O thread, so no file read ever
# blocks the Perl loop and there is no synchronous path to tune. The last
# subtest only checks that the option is accepted and changes nothing.

my $handler;
my @client_ports;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    push @client_ports, $scope->{client}[1];
    await $handler->($scope, $receive, $send);
};
my ($server, $port) = start_server(app => $app);

my $dir = tempdir(CLEANUP => 1);

# ~3 MB of random bytes, size deliberately not a multiple of any block size.
my $SIZE = 3 * 1024 * 1024 + 12345;
my $content = pack 'N*', map { int rand 4294967296 } 1 .. int($SIZE / 4) + 1;
substr($content, $SIZE) = '';
my $path = "$dir/random.bin";
{
    open my $out, '>:raw', $path or die "write $path: $!";
    print {$out} $content;
    close $out or die "close $path: $!";
}
is -s $path, $SIZE, 'test file written';


async sub echo_path {
    my ($scope, $send) = @_;
    await $send->(start(200, [ 'content-length', length $scope->{path} ]));
    await $send->({ type => 'http.response.body', body => $scope->{path} });
}

sub values_of {
    my ($r, $name) = @_;
    return map { $_->[1] } grep { $_->[0] eq $name } @{ $r->{headers} };
}

sub fetch {
    my ($path, %o) = @_;
    my $extra = $o{headers} // '';
    my $method = $o{method} // 'GET';
    my $raw = raw_exchange($port, "$method $path HTTP/1.1\r\nHost: x\r\n${extra}Connection: close\r\n\r\n", timeout => 20)->get;
    return ($raw, parse_responses($raw, head => $method eq 'HEAD'));
}

# The bytes expected for a range, PAGI-SPEC style: offset past EOF is empty,
# length past EOF stops at EOF.
sub slice {
    my ($offset, $length) = @_;
    return '' if $offset >= $SIZE;
    my $avail = $SIZE - $offset;
    return substr($content, $offset, defined $length && $length < $avail ? $length : $avail);
}

my @ranges = (
    # [ offset, length ]
    [ 0, 100 ],
    [ 1000, 5000 ],
    [ 65535, 70000 ],
    [ 1, undef ],
    [ $SIZE - 10, undef ],
    [ $SIZE - 50, 1000 ],
    [ 2 * 1024 * 1024, 1024 * 1024 ],
    [ 0, 0 ],
    [ $SIZE, undef ],
    [ $SIZE + 100, undef ],
    [ $SIZE + 100, 10 ],
);

sub range_label { my ($o, $l) = @_; "offset $o, length " . ($l // 'to EOF') }

subtest 'file: the client receives exactly the file' => sub {
    my $result;
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $send->(start(200, [ 'content-type', 'application/octet-stream' ]));
        my $f = $send->({ type => 'http.response.body', file => $path });
        await $f->followed_by(sub { Future->done });
        $result = $f;
    };
    my ($raw, $r) = fetch('/file');
    ok $result && $result->is_done, 'the $send Future completed';
    is $r->{status}, 200, 'status';
    is_deeply [ values_of($r, 'content-length') ], [$SIZE], "content-length $SIZE";
    is_deeply [ values_of($r, 'transfer-encoding') ], [], 'not chunked';
    is length($r->{body}), $SIZE, 'byte count';
    is md5_hex($r->{body}), md5_hex($content), 'identical bytes (MD5)';
    ok !$r->{incomplete}, 'complete';
};

subtest 'file: offset and length are respected' => sub {
    for my $range (@ranges) {
        my ($offset, $length) = @$range;
        my $label = range_label($offset, $length);
        $handler = async sub {
            my ($scope, $receive, $send) = @_;
            await $send->(start(200));
            await $send->({ type => 'http.response.body', file => $path, offset => $offset, (defined $length ? (length => $length) : ()) });
        };
        my ($raw, $r) = fetch('/range');
        my $want = slice($offset, $length);
        is $r->{status}, 200, "$label: status";
        is $r->{header}{'content-length'}, length $want, "$label: content-length " . length $want;
        is length($r->{body}), length $want, "$label: byte count";
        ok $r->{body} eq $want, "$label: the right bytes";
        my (undef, $after) = split_head($raw);
        is length($after), length $want, "$label: nothing after the body";
    }
};

subtest 'fh: an open filehandle, closed by the app afterwards' => sub {
    for my $range ([ 0, undef ], @ranges) {
        my ($offset, $length) = @$range;
        my $label = range_label($offset, $length);
        my ($sent_ok, $closed);
        $handler = async sub {
            my ($scope, $receive, $send) = @_;
            open my $fh, '<:raw', $path or die "open $path: $!";
            await $send->(start(200));
            my %ev = (type => 'http.response.body', fh => $fh);
            $ev{offset} = $offset if $offset;
            $ev{length} = $length if defined $length;
            await $send->(\%ev);
            $sent_ok = 1;
            $closed = close $fh;    # the app owns it
        };
        my ($raw, $r) = fetch('/fh');
        my $want = slice($offset, $length);
        ok $sent_ok && $closed, "$label: send completed, app closed the handle";
        is $r->{header}{'content-length'}, length $want, "$label: content-length";
        is md5_hex($r->{body}), md5_hex($want), "$label: the right bytes (" . length($want) . ')';
    }
};

subtest 'a file that cannot be opened fails $send; nothing is written; the app answers 404' => sub {
    mkdir "$dir/a-directory" or die "mkdir: $!";
    for my $case (
        [ 'missing file', "$dir/no-such-file.bin" ],
        [ 'directory',    "$dir/a-directory" ],
        [ 'unreadable path under a file', "$path/child" ],
    ) {
        my ($label, $bad) = @$case;
        my ($error, $app_done);
        $handler = async sub {
            my ($scope, $receive, $send) = @_;
            await $send->(start(404, [ 'content-type', 'text/plain' ]));
            my $f = $send->({ type => 'http.response.body', file => $bad });
            await $f->followed_by(sub { Future->done });
            $error = $f->is_failed ? ($f->failure)[0] : undef;
            # The head is not on the wire yet; the app finishes with a text body.
            await $send->({ type => 'http.response.body', body => "not found\n" });
            $app_done = 1;
        };
        my ($raw, @r) = fetch('/missing');
        ok defined $error, "$label: the \$send Future failed";
        like $error // '', qr/\Q$bad\E/, "$label: the error names the path";
        ok $app_done, "$label: the app carried on";
        is scalar(@r), 1, "$label: one response";
        is $r[0]{status}, 404, "$label: 404";
        is $r[0]{header}{'content-length'}, 10, "$label: framed for the app body only";
        is $r[0]{body}, "not found\n", "$label: the app body, nothing of a file";
        ok !(grep { $_->{garbage} } @r), "$label: nothing else on the wire";
    }
};

subtest 'a closed or invalid fh fails $send' => sub {
    open my $closed_fh, '<:raw', $path or die "open: $!";
    close $closed_fh;
    for my $case (
        [ 'closed filehandle', $closed_fh ],
        [ 'a plain string',    'not-a-handle' ],
        [ 'a hash reference',  {} ],
    ) {
        my ($label, $fh) = @$case;
        my ($error, $died);
        $handler = async sub {
            my ($scope, $receive, $send) = @_;
            await $send->(start(500, [ 'content-type', 'text/plain' ]));
            # PAGI-SPEC 3.1.2: invalid fh => the $send Future fails (it must not throw).
            my $f = eval { $send->({ type => 'http.response.body', fh => $fh }) };
            $died = $@ unless $f;
            if ($f) {
                await $f->followed_by(sub { Future->done });
                $error = $f->is_failed ? ($f->failure)[0] : undef;
            }
            await $send->({ type => 'http.response.body', body => "fallback\n" });
        };
        my ($raw, @r) = fetch('/badfh');
        ok !$died, "$label: \$send returned a Future rather than dying" or diag "died: $died";
        ok defined $error, "$label: the Future failed";
        like $error // '', qr/fh/, "$label: the error is about fh";
        is scalar(@r), 1, "$label: one response";
        is $r[0]{body}, "fallback\n", "$label: only the app's fallback body";
    }
};

subtest 'HEAD with a file body: headers, no body' => sub {
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        return await echo_path($scope, $send) if $scope->{path} eq '/after';
        await $send->(start(200));
        await $send->({ type => 'http.response.body', file => $path });
    };
    my $c = open_conn($port);
    $c->write("HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n");
    $c->read_until(qr/\r\n\r\n/, 5)->get;
    ok $c->stays_open(0.3), 'kept alive';
    my ($head, $rest) = split_head($c->take);
    like $head, qr{\AHTTP/1\.1 200 }, 'status';
    like $head, qr/\r\ncontent-length: $SIZE\r\n/i, "content-length $SIZE";
    unlike $head, qr/transfer-encoding/i, 'no chunked framing';
    is $rest, '', 'no body bytes';
    $c->write("GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
    my @r = parse_responses($c->read_until(responses_done(1), 5)->get);
    is $r[0]{body}, '/after', 'the connection is in sync for the next request';
    $c->close;
};

subtest 'streamed response: prefix body, then the file, chunked' => sub {
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $send->(start(200));
        await $send->({ type => 'http.response.body', body => 'prefix', more => 1 });
        await $send->({ type => 'http.response.body', file => $path, more => 1 });    # `more` is ignored for files
    };
    my ($raw, $r) = fetch('/prefixed');
    is_deeply [ values_of($r, 'transfer-encoding') ], ['chunked'], 'chunked';
    is_deeply [ values_of($r, 'content-length') ], [], 'no content-length';
    ok !$r->{incomplete}, 'terminated by the last chunk';
    is length($r->{body}), 6 + $SIZE, 'byte count';
    is md5_hex($r->{body}), md5_hex("prefix$content"), 'prefix + file (MD5)';
};

subtest 'trailers after a file body' => sub {
    my $sum = md5_hex($content);
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        await $send->({ type => 'http.response.start', status => 200, trailers => 1, headers => [] });
        await $send->({ type => 'http.response.body', file => $path });
        await $send->({ type => 'http.response.trailers', headers => [ [ 'x-content-md5', $sum ] ] });
    };
    my ($raw, $r) = fetch('/trailers', headers => "TE: trailers\r\n");
    is $r->{header}{'transfer-encoding'}, 'chunked', 'chunked';
    is md5_hex($r->{body}), $sum, 'the file';
    is_deeply $r->{trailers}, [ [ 'x-content-md5', $sum ] ], 'then the trailer';
    like $raw, qr/\r\n0\r\nx-content-md5: $sum\r\n\r\n\z/, 'last chunk, trailer, end of message';
};

subtest 'keep-alive after a file response' => sub {
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        return await echo_path($scope, $send) if $scope->{path} eq '/second';
        await $send->(start(200));
        await $send->({ type => 'http.response.body', file => $path, offset => 10, length => 500_000 });
    };
    my $before = @client_ports;
    my $c = open_conn($port);
    $c->write("GET /first HTTP/1.1\r\nHost: x\r\n\r\n");
    my @r = parse_responses($c->read_until(responses_done(1), 10)->get);
    ok $r[0]{body} eq substr($content, 10, 500_000), 'file range received';
    ok !defined $r[0]{header}{connection}, 'not labelled close';
    $c->take;
    $c->write("GET /second HTTP/1.1\r\nHost: x\r\n\r\n");
    @r = parse_responses($c->read_until(responses_done(1), 5)->get);
    is $r[0]{body}, '/second', 'second request answered';
    is_deeply [ @client_ports[ $before .. $#client_ports ] ], [ $c->sockport, $c->sockport ], 'both on the same connection';
    $c->close;
};

subtest 'a 50 MB file to a client that reads slowly arrives intact' => sub {
    my $big = "$dir/big.bin";
    my $block_size = 1024 * 1024;
    my $blocks = 50;
    my $md5 = Digest::MD5->new;
    {
        open my $out, '>:raw', $big or die "write $big: $!";
        my $block = pack 'N*', map { int rand 4294967296 } 1 .. $block_size / 4;
        for my $i (1 .. $blocks) {
            substr($block, 0, 16) = sprintf '[block %08d]', $i;    # every block differs (16 bytes replaced by 16)
            print {$out} $block;
            $md5->add($block);
        }
        close $out or die "close: $!";
    }
    my $want_md5 = $md5->hexdigest;
    my $total = $block_size * $blocks;
    is -s $big, $total, '50 MB file written';
    $handler = async sub {
        my ($scope, $receive, $send) = @_;
        return await echo_path($scope, $send) if $scope->{path} eq '/other';
        await $send->(start(200));
        await $send->({ type => 'http.response.body', file => $big });
    };

    # A small receive buffer and pauses keep the server's writes blocking.
    my $sock = IO::Socket::IP->new(
        PeerHost => '127.0.0.1', PeerPort => $port,
        Sockopts => [ [ SOL_SOCKET, SO_RCVBUF, 16 * 1024 ] ],
    ) or die "connect: $@";
    print {$sock} "GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    $sock->blocking(0);
    loop()->delay_future(after => 0.5)->get;    # read nothing for a while
    my ($buf, $head, $got, $eof, $other_status) = ('', undef, 0, 0, undef);
    my $body_md5 = Digest::MD5->new;
    my $deadline = time + 90;
    while (!$eof && time < $deadline) {
        loop()->loop_once(0.002);
        my $n = sysread($sock, my $chunk, 32 * 1024);
        if (!defined $n) {
            next if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
            fail("read error: $!");
            last;
        }
        if ($n == 0) { $eof = 1; last }
        if (!defined $head) {
            $buf .= $chunk;
            my ($h, $rest) = split_head($buf) or next;
            $head = $h;
            $chunk = $rest;
            $buf = '';
        }
        $got += length $chunk;
        $body_md5->add($chunk);
        if (!defined $other_status && $got > $total / 2) {
            # Halfway through: another client is served meanwhile.
            $other_status = http_get($port, '/other')->get->{status};
        }
    }
    close $sock;
    ok $eof, 'the server closed after the body (Connection: close)';
    like $head // '', qr/\r\ncontent-length: $total\r\n/i, "content-length $total";
    is $got, $total, 'byte count';
    is $body_md5->hexdigest, $want_md5, 'identical bytes (MD5)';
    is $other_status, 200, 'another client was answered while the slow one was reading';
    unlink $big;
};

subtest 'sync_file_threshold is accepted and changes nothing' => sub {
    for my $threshold (0, 10 * 1024 * 1024) {
        my ($s, $p) = start_server(app => $app, sync_file_threshold => $threshold);
        $handler = async sub {
            my ($scope, $receive, $send) = @_;
            await $send->(start(200));
            await $send->({ type => 'http.response.body', file => $path });
        };
        my $raw = raw_exchange($p, "GET /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 20)->get;
        my ($r) = parse_responses($raw);
        is md5_hex($r->{body}), md5_hex($content), "sync_file_threshold => $threshold: the file arrives intact";
        stop_server($s);
    }
};

stop_server($server);
done_testing;
