use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server wait_for);
use PAGI::Test::WebSocket qw(ws_connect);
use PAGI::Test::HTTP qw(open_conn);
use Future::AsyncAwait;
use Socket ();

# Slow group members (issue 13): a WebSocket member and an SSE member that
# never read while three others read and 32 MiB are published to the group. The
# readers get every message; the slow one is dropped (group_overflow drop,
# `dropped` 1, websocket.disconnect 1008) or skipped (skip, `skipped` > 0,
# still connected), and what the server holds for it stays bounded by
# group_max_buffered (plus one message) instead of growing with the stream.

my $loop = loop();
my $MSG   = 64 * 1024;
my $COUNT = 512;            # 32 MiB per member
my $MAX   = 1024 * 1024;    # group_max_buffered

sub rss_kb {
    open my $fh, '<', "/proc/$$/status" or return undef;
    while (<$fh>) { return $1 if /^VmRSS:\s+(\d+)/ }
    return undef;
}

my %ended;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'sse') {
        await $receive->();
        await $send->({ type => 'sse.start' });
        await $send->({ type => 'groups.join', group => 'fan' });
        await $send->({ type => 'sse.comment', comment => 'joined' });
        while (1) {
            my $ev = await $receive->();
            next unless $ev->{type} eq 'sse.disconnect';
            $ended{sse} = $ev;
            return;
        }
    }
    return unless $scope->{type} eq 'websocket';
    await $receive->();
    await $send->({ type => 'websocket.accept' });
    await $send->({ type => 'groups.join', group => 'fan' });
    while (1) {
        my $ev = await $receive->();
        next unless $ev->{type} eq 'websocket.disconnect';
        $ended{ $scope->{path} } = $ev;
        return;
    }
};

# A member that reads and counts, keeping no payloads.
sub reader {
    my ($port, $path) = @_;
    my ($c) = ws_connect($port, path => $path)->get;
    my $r = { client => $c, n => 0, bytes => 0, bad => 0 };
    $c->on_frame(sub {
        my ($f) = @_;
        if ($f->{opcode} == 2) {
            $r->{n}++;
            $r->{bytes} += $f->{length};
            $r->{bad}++ unless $f->{length} == $MSG && substr($f->{payload}, 0, 8) eq sprintf('%08d', $r->{n} - 1);
        }
        delete $f->{payload};    # frees it: an emptied string would keep its buffer
    });
    return $r;
}

sub run_case {
    my ($policy) = @_;
    %ended = ();
    my ($server, $port) = start_server(app => $app, group_overflow => $policy, group_max_buffered => $MAX);
    my $hub = $server->groups;
    my @fast = map { reader($port, "/fast$_") } 1 .. 3;
    my ($slow) = ws_connect($port, path => '/slow')->get;
    # A small receive buffer: the kernel holds little for the client that stops reading.
    setsockopt($slow->{sock}, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), 64 * 1024);
    $slow->pause;
    my $sse = open_conn($port);
    setsockopt($sse->{sock}, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), 64 * 1024);
    $sse->write("GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n");
    $sse->read_until(qr/:joined\n\n/, 10)->get;
    $sse->{stream}->want_readready(0);
    ok(wait_for(sub { $hub->count('fan') == 5 }, 10), "$policy: five members joined");
    my ($slow_id) = grep { ($server->{requests}{$_}{scope}{path} // '') eq '/slow' } keys %{ $server->{requests} };
    my ($sse_id) = grep { ($server->{requests}{$_}{scope}{type} // '') eq 'sse' } keys %{ $server->{requests} };

    my $rss0 = rss_kb();
    my ($max_buffered, $queued) = (0, 0);
    my $t0 = $loop->time;
    my $kept_up = 1;
    for my $i (0 .. $COUNT - 1) {
        # The readers stay within 8 messages (512 KiB) of the publisher, so
        # only the members that do not read at all can be too slow; the
        # publisher itself never waits for them.
        $kept_up &&= wait_for(sub { !grep { $_->{n} < $i - 8 } @fast }, 20);
        my $payload = sprintf('%08d', $i) . ('x' x ($MSG - 8));
        $queued += $hub->publish('fan', { bytes => $payload })->get;
        for my $id ($slow_id, $sse_id) {
            my $st = $server->{requests}{$id} && $server->engine->stats($id);
            $max_buffered = $st->{buffered} if $st && $st->{buffered} > $max_buffered;
        }
    }
    ok($kept_up, "$policy: the readers kept up while the slow members did not read");
    ok(wait_for(sub { !grep { $_->{n} < $COUNT } @fast }, 60), "$policy: the readers got all $COUNT messages")
        or diag("readers got: " . join(', ', map { $_->{n} } @fast));
    my $took = $loop->time - $t0;
    for my $i (0 .. 2) {
        is($fast[$i]{n}, $COUNT, "$policy: reader $i: $COUNT messages, none twice");
        is($fast[$i]{bad}, 0, "$policy: reader $i: in order, each whole");
    }
    note(sprintf '%s: %d MiB to each reader in %.1f s; slow members buffered at most %d bytes; RSS %+d KiB',
        $policy, $COUNT * $MSG / 2**20, $took, $max_buffered, (rss_kb() // 0) - ($rss0 // 0));
    cmp_ok($max_buffered, '<=', $MAX + $MSG + 16, "$policy: the slow members never held more than group_max_buffered plus one message");
    if (defined $rss0) {
        cmp_ok(rss_kb() - $rss0, '<', 24 * 1024, "$policy: RSS grew by less than 24 MiB while 160 MiB were fanned out");
    }
    my $stats = $hub->stats;
    if ($policy eq 'drop') {
        is($stats->{dropped}, 2, 'drop: dropped 2 (the websocket and the sse member)');
        is($stats->{skipped}, 0, 'drop: skipped 0');
        ok(wait_for(sub { $ended{'/slow'} }, 10), 'drop: the app saw the slow member go');
        is($ended{'/slow'}{code}, 1008, 'drop: websocket.disconnect code 1008');
        is($ended{'/slow'}{reason}, 'too slow for group messages', 'drop: and the reason');
        ok(wait_for(sub { $ended{sse} }, 10), 'drop: the sse app saw its stream go');
        is($ended{sse}{reason}, 'queue_overflow', 'drop: sse.disconnect queue_overflow');
        is($hub->count('fan'), 3, 'drop: the dropped members left the group');
        cmp_ok($queued, '<', 5 * $COUNT, 'drop: publishes stopped counting them');
        $sse->{stream}->want_readready(1);
        ok($sse->wait_eof(10)->get, 'drop: the sse client sees its connection closed');
        $slow->resume;
        ok($slow->wait_eof(10)->get, 'drop: the slow client sees its connection closed');
    }
    else {
        cmp_ok($stats->{skipped}, '>', 0, "skip: skipped $stats->{skipped}");
        is($stats->{dropped}, 0, 'skip: dropped 0');
        is($stats->{delivered}, $queued, 'skip: delivered matches what the publishes reported');
        is($hub->count('fan'), 5, 'skip: the slow members are still in the group');
        ok(!$ended{'/slow'} && !$ended{sse}, 'skip: and still connected');
        # Once it reads again it gets what was queued for it: every message but the skipped ones.
        $slow->resume;
        ok(wait_for(sub { $server->engine->stats($slow_id)->{buffered} == 0 }, 20), 'skip: it caught up');
        my $binary = sub { scalar grep { $_->{opcode} == 2 } @{ $slow->frames } };
        ok(wait_for(sub { $binary->() >= $COUNT - $stats->{skipped} }, 10), 'skip: what was queued for it arrives');
        $loop->delay_future(after => 0.3)->get;
        # The skips were shared by the two slow members; the sse one has not read its share yet.
        my $ws_got = $binary->();
        cmp_ok($ws_got, '<', $COUNT, "skip: it missed some ($ws_got of $COUNT)");
        $sse->{stream}->want_readready(1);
        my $events = sub { my $n = () = $sse->buffer =~ /\ndata: \d{8}x/g; $n };
        ok(wait_for(sub { $server->engine->stats($sse_id)->{buffered} == 0 && $events->() + $ws_got >= 2 * $COUNT - $stats->{skipped} }, 20), 'skip: the sse member catches up too');
        is($events->() + $ws_got, 2 * $COUNT - $stats->{skipped}, "skip: the two got every message but the $stats->{skipped} skipped");
        $hub->publish('fan', { bytes => 'late' })->get;
        ok($slow->wait_until(sub { grep { $_->{payload} eq 'late' } @{ $_[0]->frames } }, 10, 'the late message')->get, 'skip: a caught-up member gets new messages');
    }
    $_->{client}->close for @fast;
    $slow->close;
    $sse->close;
    stop_server($server);
}

subtest 'group_overflow drop' => sub { run_case('drop') };
subtest 'group_overflow skip' => sub { run_case('skip') };

done_testing;
