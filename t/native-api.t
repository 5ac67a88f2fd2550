# The engine API of PAGI::Server::Native driven directly, as its SYNOPSIS
# does: Perl binds, the engine serves on its own thread, this file plays both
# the Perl side (drain_events / commands) and blocking TCP clients.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server;    # its import sets the alarm bounding this file
use PAGI::Test::Engine qw(new_listener started_engine pump_until take count_kind client
                          read_until read_response get_request);
use PAGI::Server::Native qw(:events);
use IO::Socket::IP;
use POSIX ();
use Time::HiRes qw(time sleep);

my @children;
my $parent_pid = $$;
END {
    # Never leave a forked child behind, whatever happened above.
    if ($$ == $parent_pid) {
        for my $pid (@children) {
            kill 'KILL', $pid;
            waitpid $pid, 0;
        }
    }
}

# The body of a parsed response, or a marker when none arrived.
sub body_of { $_[0] ? $_[0]{body} : '(no complete response)' }

subtest 'new accepts known options and croaks on unknown or invalid ones' => sub {
    my $engine = PAGI::Server::Native->new(timeout => 5, max_body_size => 1024, server_header => 'x');
    isa_ok($engine, 'PAGI::Server::Native');

    ok(!eval { PAGI::Server::Native->new(no_such_option => 1); 1 }, 'unknown option croaks');
    like($@, qr/no_such_option/, 'the error names the unknown option');

    ok(!eval { PAGI::Server::Native->new(timeout => 'soon'); 1 }, 'non-numeric timeout croaks');
    like($@, qr/timeout/, 'the error names the option with the bad value');

    ok(!eval { PAGI::Server::Native->new(max_header_count => 0); 1 }, 'max_header_count below its minimum croaks');
    like($@, qr/max_header_count/, 'the error names max_header_count');

    ok(!eval { PAGI::Server::Native->new(timeout => undef); 1 }, 'undefined option value croaks');
    like($@, qr/timeout/, 'the error names the option');
};

subtest 'listen_fd accepts only listening sockets' => sub {
    my $engine = PAGI::Server::Native->new;

    open my $file, '<', __FILE__ or die $!;
    ok(!eval { $engine->listen_fd($file); 1 }, 'a plain file croaks');
    like($@, qr/listen_fd: .*not a listening socket/, 'error says it is not a listening socket');

    my $bound = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Proto => 'tcp')
        or die "bind: $@";
    ok(!eval { $engine->listen_fd($bound); 1 }, 'a bound but not listening socket croaks');
    like($@, qr/not a listening socket/, 'same message for it');

    ok(!eval { $engine->listen_fd('not-an-fd'); 1 }, 'a non-numeric argument croaks');
    like($@, qr/listen_fd/, 'error names listen_fd');

    my $listener = new_listener();
    ok(eval { $engine->listen_fd($listener); 1 }, 'a listening socket is adopted') or diag $@;
};

subtest 'start makes a notifier fd; stats of an idle engine are zero' => sub {
    my $s = started_engine();
    my $fd = $s->{engine}->fd;
    like($fd, qr/\A\d+\z/, 'fd is a number');
    cmp_ok($fd, '>', 2, 'fd is not a standard handle');

    my $stats = $s->{engine}->stats;
    is(ref $stats, 'HASH', 'stats is a hashref');
    is($stats->{$_}, 0, "$_ is 0 before any connection")
        for qw(connections_active connections_total requests_total);

    ok(!eval { $s->{engine}->start; 1 }, 'a second start croaks');
    ok(!eval { $s->{engine}->listen_fd(new_listener()); 1 }, 'listen_fd after start croaks');

    $s->{engine}->shutdown(0.5);
    ok(pump_until($s, sub { count_kind($_[0], EV_STOPPED) }), 'stopped');
};

subtest 'commands on an unknown id are no-ops' => sub {
    my $s = started_engine();
    my $e = $s->{engine};
    my $id = 987_654;
    my $r;
    ok(eval { $r = $e->respond_full($id, 200, [ [ 'x', 'y' ] ], 'body'); 1 }, 'respond_full does not croak') or diag $@;
    is($r, 0, 'respond_full returns 0');
    ok(eval { $r = $e->http_body($id, 'chunk', 1); 1 }, 'http_body does not croak') or diag $@;
    is($r, -1, 'http_body returns -1');
    ok(eval { $r = $e->want_body($id); 1 }, 'want_body does not croak') or diag $@;
    is($r, 0, 'want_body returns 0');
    ok(eval { $r = $e->abort($id); 1 }, 'abort does not croak') or diag $@;
    is($r, 0, 'abort returns 0');
    ok(eval { $e->flush; 1 }, 'flushing them does not croak') or diag $@;
    is($e->stats($id), undef, 'stats of an unknown id is undef');

    $e->shutdown(0.5);
    ok(pump_until($s, sub { count_kind($_[0], EV_STOPPED) }), 'stopped');
    is(count_kind($s->{events}, EV_DONE) + count_kind($s->{events}, EV_DISCONNECT), 0,
        'no events were made up for the unknown id');
};

subtest 'a request: scope, stats, header injection refused, then a valid response' => sub {
    my $s = started_engine();
    my $e = $s->{engine};
    my $sock = client($s->{port});
    my $request = get_request('/some%20where?x=1&y=2', 'X-Test: yes', 'X-Test: again');
    print {$sock} $request;

    ok(pump_until($s, sub { count_kind($_[0], EV_REQUEST) }), 'EV_REQUEST arrives');
    my ($ev) = take($s, EV_REQUEST);
    my (undef, $id, $scope, $body) = @$ev;
    like($id, qr/\A[1-9]\d*\z/, 'request id is a positive integer');
    is($scope->{type}, 'http', 'scope type');
    is($scope->{method}, 'GET', 'scope method');
    is($scope->{path}, '/some where', 'path is percent-decoded');
    is($scope->{raw_path}, '/some%20where', 'raw_path is as sent');
    is($scope->{query_string}, 'x=1&y=2', 'query_string');
    is($scope->{http_version}, '1.1', 'http_version');
    is_deeply($scope->{headers},
        [ [ host => '127.0.0.1' ], [ 'x-test' => 'yes' ], [ 'x-test' => 'again' ] ],
        'headers lower-cased, in wire order, duplicates kept');
    is_deeply($scope->{client}, [ '127.0.0.1', $sock->sockport ], 'client is the peer address');
    is_deeply($scope->{server}, [ '127.0.0.1', $s->{port} ], 'server is the listening address');
    is($body, '', 'a request without a body comes with an empty pre-read body');

    my $rs = $e->stats($id);
    is(ref $rs, 'HASH', 'stats($id) of a live request is a hashref');
    is($rs->{bytes_read}, length $request, 'bytes_read counts the request head');
    is($rs->{buffered}, 0, 'nothing buffered yet');

    my $stats = $e->stats;
    is($stats->{connections_active}, 1, 'one active connection');
    is($stats->{connections_total}, 1, 'one connection in total');
    is($stats->{requests_total}, 1, 'one request in total');

    ok(!eval { $e->respond_full($id, 200, [ [ 'x-bad', "v\r\nx-injected: 1" ] ], 'evil'); 1 },
        'a header value with CRLF croaks');
    like($@, qr/respond_full: .*'x-bad'/, 'the error names respond_full and the header');
    $e->flush;
    is(read_until($sock, sub { length $_[0] }, 0.3), '', 'nothing reached the client');
    ok(!eval { $e->respond_full($id, 200, [ [ "x-bad\nname", 'v' ] ], 'evil'); 1 },
        'a header name with LF croaks too');

    is($e->respond_full($id, 201, [ [ 'content-type', 'text/plain' ], [ 'x-ok', 'yes' ] ], 'created'), 1,
        'a valid respond_full is queued');
    $e->flush;
    my $res = read_response($sock);
    ok($res, 'the client got a complete response') or return;
    is($res->{status}, 201, 'status');
    is($res->{header}{'x-ok'}, 'yes', 'app header');
    is($res->{header}{'content-length'}, 7, 'content-length framing');
    ok(!exists $res->{header}{'x-injected'}, 'no injected header');
    is($res->{body}, 'created', 'body');

    ok(pump_until($s, sub { count_kind($_[0], EV_DONE) }), 'EV_DONE arrives');
    is_deeply([ map { $_->[1] } take($s, EV_DONE) ], [$id], 'EV_DONE is for the request');
    is($e->stats($id), undef, 'stats($id) is undef once the request ended');
    is($e->respond_full($id, 200, [], 'late'), 0, 'respond_full after the end is a no-op');

    close $sock;
    ok(pump_until($s, sub { $e->stats->{connections_active} == 0 }), 'connections_active drops to 0 after close');
    $e->shutdown(0.5);
    ok(pump_until($s, sub { count_kind($_[0], EV_STOPPED) }), 'stopped');
};

subtest 'ids are unique across keep-alive requests; one EV_DONE or EV_DISCONNECT each' => sub {
    my $s = started_engine();
    my $e = $s->{engine};
    my (@ids, %finished);
    my $sock = client($s->{port});
    for my $n (1 .. 3) {
        print {$sock} get_request("/ka/$n");
        ok(pump_until($s, sub { count_kind($_[0], EV_REQUEST) }), "request $n arrives");
        my ($ev) = take($s, EV_REQUEST);
        is($ev->[2]{path}, "/ka/$n", "request $n has its path");
        push @ids, $ev->[1];
        $e->respond_full($ev->[1], 200, [], "r$n");
        $e->flush;
        is(body_of(read_response($sock)), "r$n", "response $n on the same connection");
    }
    # A second connection that goes away before being answered.
    my $gone = client($s->{port});
    print {$gone} get_request('/gone');
    ok(pump_until($s, sub { count_kind($_[0], EV_REQUEST) }), 'request on the second connection arrives');
    my ($gone_ev) = take($s, EV_REQUEST);
    push @ids, $gone_ev->[1];
    close $gone;

    ok(pump_until($s, sub {
        my %seen = map { $_->[1] => 1 } grep { $_->[0] == EV_DONE || $_->[0] == EV_DISCONNECT } @{ $_[0] };
        @ids == grep { $seen{$_} } @ids;
    }), 'every request finished');
    sleep 0.2;    # give duplicates a chance to show up
    pump_until($s, sub { 0 }, 0.1);

    is(scalar(keys %{ { map { $_ => 1 } @ids } }), scalar @ids, 'no id was reused');
    is_deeply([ sort { $a <=> $b } @ids ], \@ids, 'ids increase');
    for my $ev (@{ $s->{events} }) {
        push @{ $finished{ $ev->[1] } }, $ev->[0] if $ev->[0] == EV_DONE || $ev->[0] == EV_DISCONNECT;
    }
    is_deeply($finished{ $ids[$_] }, [EV_DONE], "keep-alive request " . ($_ + 1) . " got exactly one EV_DONE") for 0 .. 2;
    is_deeply($finished{ $ids[3] }, [EV_DISCONNECT], 'the abandoned request got exactly one EV_DISCONNECT');
    my ($disc) = grep { $_->[0] == EV_DISCONNECT } @{ $s->{events} };
    ok(defined $disc->[2] && length $disc->[2], "the disconnect has a reason ($disc->[2])");
    is($e->stats->{requests_total}, 4, 'requests_total counts all four');
    is($e->stats->{connections_total}, 2, 'connections_total counts both connections');

    close $sock;
    $e->shutdown(0.5);
    ok(pump_until($s, sub { count_kind($_[0], EV_STOPPED) }), 'stopped');
};

subtest 'abort closes the connection' => sub {
    my $s = started_engine();
    my $e = $s->{engine};
    my $sock = client($s->{port});
    print {$sock} get_request('/abort-me');
    ok(pump_until($s, sub { count_kind($_[0], EV_REQUEST) }), 'request arrives');
    my ($ev) = take($s, EV_REQUEST);
    is($e->abort($ev->[1]), 1, 'abort on a live id returns 1');
    $e->flush;
    my $t0 = time;
    is(read_until($sock, sub { 0 }, 3), '', 'the client sees the connection closed without a response');
    cmp_ok(time - $t0, '<', 2.5, 'closed promptly (not by a timeout)');
    ok(pump_until($s, sub { grep { $_->[1] == $ev->[1] && ($_->[0] == EV_DISCONNECT || $_->[0] == EV_DONE) } @{ $_[0] } }),
        'the aborted request gets its final event');
    $e->shutdown(0.5);
    ok(pump_until($s, sub { count_kind($_[0], EV_STOPPED) }), 'stopped');
};

subtest 'after fork the child cannot use the engine, and its destruction is harmless' => sub {
    my $s = started_engine();
    my $e = $s->{engine};
    # A keep-alive connection open across the fork, to check it survives.
    my $kept = client($s->{port});
    print {$kept} get_request('/before-fork');
    ok(pump_until($s, sub { count_kind($_[0], EV_REQUEST) }), 'request before fork');
    my ($before) = take($s, EV_REQUEST);
    $e->respond_full($before->[1], 200, [], 'before');
    $e->flush;
    is(body_of(read_response($kept)), 'before', 'answered before fork');

    pipe my $r, my $w or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $r;
        my @report;
        for my $call ([ stats => sub { $e->stats } ], [ drain_events => sub { $e->drain_events } ],
                      [ respond_full => sub { $e->respond_full(1, 200, [], 'x') } ], [ flush => sub { $e->flush } ]) {
            my $ok = eval { $call->[1]->(); 1 };
            (my $err = $@ // '') =~ s/\n/ /g;
            push @report, "$call->[0]\t" . ($ok ? 'OK' : "CROAK $err");
        }
        print {$w} "$_\n" for @report;
        close $w;
        undef $e;           # DESTROY in the child
        %$s = ();
        exit 0;             # normal exit: global destruction runs too
    }
    push @children, $pid;
    close $w;
    my %report = map { chomp; split /\t/, $_, 2 } <$r>;
    close $r;
    my $status;
    for (1 .. 100) {
        last if waitpid($pid, POSIX::WNOHANG()) == $pid && defined($status = $?);
        sleep 0.05;
    }
    @children = grep { $_ != $pid } @children;
    is($status, 0, 'the child exited normally with status 0');
    for my $method (qw(stats drain_events respond_full flush)) {
        like($report{$method} // '', qr/\ACROAK .*$method: .*(?:fork|process)/, "$method croaks in the child naming fork/process");
    }

    # The parent still serves: on the old keep-alive connection and a new one.
    print {$kept} get_request('/after-fork-kept');
    my $fresh = client($s->{port});
    print {$fresh} get_request('/after-fork-new');
    ok(pump_until($s, sub { count_kind($_[0], EV_REQUEST) >= 2 }), 'both requests arrive after the child exited');
    for my $ev (take($s, EV_REQUEST)) {
        $e->respond_full($ev->[1], 200, [], "served $ev->[2]{path}");
    }
    $e->flush;
    is(body_of(read_response($kept)), 'served /after-fork-kept', 'kept connection still works');
    is(body_of(read_response($fresh)), 'served /after-fork-new', 'new connection works');
    ok(eval { $e->stats->{requests_total} == 3 }, 'parent stats still work and count 3 requests');
    close $kept;
    close $fresh;
    $e->shutdown(0.5);
    ok(pump_until($s, sub { count_kind($_[0], EV_STOPPED) }), 'stopped');
};

subtest 'an unstarted engine may be used after fork' => sub {
    # new() starts nothing, so a child of a pre-fork engine owns its copy.
    my $e = PAGI::Server::Native->new;
    pipe my $r, my $w or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $r;
        my $ok = eval { $e->stats; 1 };
        print {$w} $ok ? "OK\n" : "CROAK $@";
        close $w;
        exit 0;
    }
    push @children, $pid;
    close $w;
    my $line = <$r>;
    waitpid $pid, 0;
    @children = grep { $_ != $pid } @children;
    is($line, "OK\n", 'stats works in the child of an unstarted engine');
    is($?, 0, 'child exited cleanly');
};

subtest 'shutdown ends with EV_STOPPED and closes idle connections' => sub {
    my $s = started_engine();
    my $e = $s->{engine};
    my $idle = client($s->{port});
    ok(pump_until($s, sub { $e->stats->{connections_active} == 1 }), 'idle connection accepted');
    my $t0 = time;
    $e->shutdown(0.5);
    ok(pump_until($s, sub { count_kind($_[0], EV_STOPPED) }, 5), 'EV_STOPPED arrives');
    my ($stopped) = take($s, EV_STOPPED);
    is($stopped->[1], 0, 'EV_STOPPED is engine-wide (id 0)');
    cmp_ok(time - $t0, '<', 3, 'within the grace period plus a margin');
    is(read_until($idle, sub { 0 }, 2), '', 'the idle connection was closed');
};

subtest 'CLONE_SKIP returns 1' => sub {
    is(PAGI::Server::Native->CLONE_SKIP, 1, 'threads never clone the engine');
};

done_testing;
