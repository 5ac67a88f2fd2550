# Engine hardening (issue 9 items 3, 4 and 7), driven through the engine
# API with blocking clients: bytes before a request head are bounded,
# everything read before the app sees a request runs under one deadline,
# and the smaller rules on what goes on the wire.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server;    # its import sets the alarm bounding this file
use PAGI::Test::Engine qw(started_engine pump_until take count_kind client read_until read_response get_request);
use PAGI::Server::Native qw(:events);
use IO::Select;
use Time::HiRes qw(time sleep);
use POSIX ();

$SIG{PIPE} = 'IGNORE';

# The engine's own RSS in kB (it runs in this process).
sub rss_kb {
    open my $fh, '<', "/proc/$$/status" or return 0;
    while (<$fh>) { return $1 if /^VmRSS:\s+(\d+)/ }
    return 0;
}

# Answers every pending request with "ok", so other clients are served.
sub answer_all {
    my ($s) = @_;
    for my $ev (take($s, EV_REQUEST)) {
        $s->{engine}->respond_full($ev->[1], 200, [], 'ok');
    }
    $s->{engine}->flush;
}

subtest 'item 3: empty lines before the request line are bounded' => sub {
    my $s = started_engine();
    my $c = client($s->{port});
    print {$c} "\r\n" x 3, get_request('/few');
    ok(pump_until($s, sub { count_kind($_[0], EV_REQUEST) }), 'a few leading empty lines are tolerated');
    answer_all($s);
    like(read_until($c, sub { $_[0] =~ /ok\z/ }), qr{\AHTTP/1\.1 200}, 'and the request is served');

    my $flood = client($s->{port});
    print {$flood} "\r\n" x 50;
    my ($got, $closed) = read_until($flood, sub { 0 }, 5);
    like($got, qr{\AHTTP/1\.1 400}, 'fifty empty lines: 400');
    ok($closed, 'and the connection is closed');
};

subtest 'item 3: a client streaming CRLF for seconds grows no memory and slows nobody' => sub {
    my $s = started_engine();
    my $rss_before = rss_kb();
    my $flood = client($s->{port});
    $flood->blocking(0);
    my $t_end = time + 3;
    my ($sent, @latency) = (0);
    my $chunk = "\r\n" x 4096;
    while (time < $t_end) {
        my $n = syswrite($flood, $chunk);
        $sent += $n if $n;
        last if !defined $n && !$!{EAGAIN};
        # Meanwhile a clean client is served.
        if (@latency < 20) {
            my $t0 = time;
            my $c = client($s->{port});
            print {$c} get_request('/clean', 'Connection: close');
            pump_until($s, sub { count_kind($_[0], EV_REQUEST) }, 5);
            answer_all($s);
            read_until($c, sub { $_[0] =~ /ok\z/ }, 5);
            push @latency, time - $t0;
        }
    }
    my $growth = rss_kb() - $rss_before;
    cmp_ok($growth, '<', 5_000, "RSS grew by $growth kB after $sent bytes of CRLF");
    my ($got, $closed) = read_until($flood, sub { 0 }, 5);
    ok($closed, 'the flooding connection was closed');
    cmp_ok($sent, '<', 4 * 1024 * 1024, "after it sent $sent bytes, not an unbounded stream");
    is(scalar(grep { $_ < 3 } @latency), scalar @latency, sprintf 'each of %d clean requests answered within seconds', scalar @latency);
    cmp_ok(scalar @latency, '>', 0, 'some were made');
};

subtest 'item 3: an over-long request line is 414 before the buffer grows past the limits' => sub {
    my $s = started_engine(max_request_line_size => 1024);
    my $c = client($s->{port});
    print {$c} 'GET /' . ('a' x 3000);
    my ($got) = read_until($c, sub { $_[0] =~ /\r\n\r\n/ }, 5);
    like($got, qr{\AHTTP/1\.1 414}, '414 without waiting for the end of the line');
};

subtest 'item 4: the head has one deadline from its first byte' => sub {
    my $s = started_engine(header_timeout => 1.5);
    my $c = client($s->{port});
    my $t0 = time;
    my $closed_at;
    # One byte every 0.3 s: every single read is quick, the head never ends.
    for my $byte (split //, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1234567890") {
        last unless syswrite($c, $byte);
        sleep 0.3;
        if (IO::Select->new($c)->can_read(0)) { $closed_at = time - $t0; last }
    }
    $closed_at //= time - $t0;
    cmp_ok($closed_at, '<', 4, sprintf 'closed %.1f s after the first byte', $closed_at);
    is(count_kind($s->{events}, EV_REQUEST), 0, 'no request reached the app');
};

subtest 'item 4: the small-body pre-read has one deadline, not a fresh timeout per read' => sub {
    my $s = started_engine(header_timeout => 1.5);
    my $c = client($s->{port});
    print {$c} "POST /drip HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n";
    my $t0 = time;
    my $closed;
    for (1 .. 20) {
        last unless syswrite($c, 'x');
        sleep 0.3;
        if (IO::Select->new($c)->can_read(0)) { $closed = time - $t0; last }
    }
    $closed //= 99;
    cmp_ok($closed, '<', 4, sprintf 'a dripping body is dropped after the deadline (%.1f s)', $closed);
    pump_until($s, sub { 0 }, 0.2);
    is(count_kind($s->{events}, EV_REQUEST), 0, 'before the app ever saw the request');
};

subtest 'item 4: skipping an unread body after the response has a deadline' => sub {
    my $s = started_engine(header_timeout => 1.5);
    my $c = client($s->{port});
    # 200 KiB announced (above the pre-read size, under the skip limit): the
    # app answers without reading it; the client drips the rest.
    print {$c} "POST /skip HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 204800\r\n\r\n" . ('x' x 70000);
    ok(pump_until($s, sub { count_kind($_[0], EV_REQUEST) }), 'the request reached the app');
    answer_all($s);
    my $t0 = time;
    my ($closed, $got) = (undef, '');
    for (1 .. 30) {
        syswrite($c, 'y') or last;
        sleep 0.3;
        if (IO::Select->new($c)->can_read(0)) {
            my $n = sysread($c, $got, 65536, length $got);
            if (defined $n && $n == 0) { $closed = time - $t0; last }
        }
    }
    like($got, qr{\AHTTP/1\.1 200}, 'the response went out');
    ok(defined $closed && $closed < 5, sprintf 'the connection closed within the deadline (%s)', $closed // 'never');
};

subtest 'item 7: HTTP/1.0 with Transfer-Encoding is refused and closed' => sub {
    my $s = started_engine();
    my $c = client($s->{port});
    print {$c} "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    my ($got, $closed) = read_until($c, sub { 0 }, 5);
    like($got, qr{\AHTTP/1\.1 400}, 'answered 400');
    ok($closed, 'closed');
    is(count_kind($s->{events}, EV_REQUEST), 0, 'the app never saw it');
};

subtest 'item 7: many tiny chunks reach the app in few body events' => sub {
    my $s = started_engine();
    my $c = client($s->{port});
    my $chunks = join '', map { "1\r\n" . chr(97 + $_ % 26) . "\r\n" } 0 .. 19_999;
    print {$c} "POST /tiny HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n";
    ok(pump_until($s, sub { count_kind($_[0], EV_REQUEST) }), 'request');
    my ($req) = take($s, EV_REQUEST);
    my $id = $req->[1];
    $s->{engine}->want_body($id);
    $s->{engine}->flush;
    read_until($c, sub { $_[0] =~ /100 Continue\r\n\r\n/ }, 5);
    print {$c} $chunks, "0\r\n\r\n";
    my ($body, $events, $more) = ('', 0, 1);
    while ($more) {
        last unless pump_until($s, sub { count_kind($_[0], EV_BODY) }, 5);
        for my $ev (take($s, EV_BODY, $id)) {
            $events++;
            $body .= $ev->[2];
            $more = $ev->[3];
        }
        if ($more) { $s->{engine}->want_body($id); $s->{engine}->flush }
    }
    is(length $body, 20_000, 'the whole body');
    is($body, join('', map { chr(97 + $_ % 26) } 0 .. 19_999), 'in order');
    cmp_ok($events, '<=', 20, "in $events events, not one per wire chunk");
};

subtest 'item 7: final 1xx statuses and several Content-Length values are refused naming the field' => sub {
    my $s = started_engine();
    my $c = client($s->{port});
    print {$c} get_request('/');
    ok(pump_until($s, sub { count_kind($_[0], EV_REQUEST) }), 'request');
    my ($req) = take($s, EV_REQUEST);
    my $e = $s->{engine};
    for my $status (100, 101, 199) {
        ok(!eval { $e->http_start($req->[1], $status, [], 0); 1 }, "status $status refused");
        like($@, qr/'status' must be a final status/, 'naming the field');
        ok(!eval { $e->respond_full($req->[1], $status, [], ''); 1 }, "respond_full $status refused");
    }
    ok(!eval { $e->http_start($req->[1], 200, [['content-length', '5'], ['content-length', '5']], 0); 1 },
        'two content-length headers refused');
    like($@, qr/more than one content-length/, 'saying so');
    ok(!eval { $e->http_start($req->[1], 200, [['content-length', '99999999999999999999999']], 0); 1 },
        'an unparsable content-length refused');
    like($@, qr/content-length must be digits/, 'naming it');
    $e->respond_full($req->[1], 200, [['content-length', '2']], 'ok');
    $e->flush;
    my $r = read_response($c);
    is($r && $r->{body}, 'ok', 'the request is still answered after the refusals');
    is(scalar(grep { $_->[0] eq 'content-length' } @{ $r->{headers} }), 1, 'with one content-length');
};

subtest 'item 7: declared trailers still go out with an empty body' => sub {
    my $s = started_engine();
    my $c = client($s->{port});
    print {$c} get_request('/', 'TE: trailers');
    ok(pump_until($s, sub { count_kind($_[0], EV_REQUEST) }), 'request');
    my ($req) = take($s, EV_REQUEST);
    $s->{engine}->http_start($req->[1], 200, [], 1);
    $s->{engine}->http_trailers($req->[1], [['x-checksum', 'abc']]);
    $s->{engine}->flush;
    my $r = read_response($c);
    ok($r && $r->{chunked}, 'chunked framing');
    is($r && $r->{body}, '', 'an empty body');
    is_deeply($r && $r->{trailers}, [['x-checksum', 'abc']], 'and the trailer');
};

subtest "item 7: the scope's pagi hash cannot be changed for other requests" => sub {
    my $s = started_engine();
    my @scopes;
    for my $n (1, 2) {
        my $c = client($s->{port});
        print {$c} get_request("/$n", 'Connection: close');
        ok(pump_until($s, sub { count_kind($_[0], EV_REQUEST) }), "request $n");
        my ($req) = take($s, EV_REQUEST);
        my $scope = $req->[2];
        push @scopes, $scope;
        if ($n == 1) {
            ok(!eval { $scope->{pagi}{version} = 'changed'; 1 }, 'its values are read-only');
            like($@, qr/read-only/, 'saying so');
            $scope->{pagi}{extra} = 1;
        }
        $s->{engine}->respond_full($req->[1], 200, [], 'ok');
        $s->{engine}->flush;
        read_response($c);
    }
    is($scopes[1]{pagi}{version}, '0.3', 'the next request sees the real version');
    ok(!exists $scopes[1]{pagi}{extra}, 'and not the key the first app added');
};

subtest 'item 7: the cached pid still refuses an engine used after fork' => sub {
    my $s = started_engine();
    pipe(my $r, my $w) or die $!;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $r;
        my $ok = eval { $s->{engine}->stats; 1 };
        print {$w} $ok ? "ok\n" : "refused: $@";
        close $w;
        POSIX::_exit(0);
    }
    close $w;
    my $said = do { local $/; <$r> };
    waitpid $pid, 0;
    like($said, qr/^refused: .*after fork/, 'the child is refused');
    ok(eval { $s->{engine}->stats; 1 }, 'the parent still works');
};

done_testing;
